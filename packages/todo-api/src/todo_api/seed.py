"""Demo data: a few tasks and a conversation for one user, loaded by `todo-api db seed`.

Each table is one statement that inserts only what is not there yet (matched by the user and
the title), so seeding again adds nothing. The user id is cast once: asyncpg must deduce
one type for a parameter used both as a value and in a comparison.
"""

from __future__ import annotations

from sqlalchemy import text

from neondb import Database

__all__ = ["seed"]

_TASKS = text("""
INSERT INTO tasks (user_id, title, description, priority, tags, due_date,
                   recurring, recurring_pattern)
SELECT CAST(:user_id AS text), v.title, v.description, v.priority, v.tags, now() + v.due_in,
       v.recurring, v.pattern
FROM (VALUES
    ('Buy milk', 'Semi-skimmed, two litres', 'low', ARRAY['home', 'shopping'],
     interval '1 day', false, NULL),
    ('Write the quarterly report', NULL, 'high', ARRAY['work'],
     interval '3 days', false, NULL),
    ('Water the plants', 'The ones on the balcony', 'medium', ARRAY['home'],
     interval '2 days', true, 'weekly'),
    ('Book the dentist', NULL, 'medium', ARRAY['health'], NULL, false, NULL),
    ('Stand-up notes', NULL, 'low', ARRAY['work'], interval '12 hours', true, 'daily')
) AS v(title, description, priority, tags, due_in, recurring, pattern)
WHERE NOT EXISTS (SELECT 1 FROM tasks t WHERE t.user_id = :user_id AND t.title = v.title)
""")

_CONVERSATION = text("""
WITH conversation AS (
    INSERT INTO conversations (user_id, title)
    SELECT CAST(:user_id AS text), 'Planning the week'
    WHERE NOT EXISTS (
        SELECT 1 FROM conversations WHERE user_id = :user_id AND title = 'Planning the week'
    )
    RETURNING id
), added AS (
    INSERT INTO messages (conversation_id, role, content)
    SELECT c.id, m.role, m.content
    FROM conversation AS c
    CROSS JOIN (VALUES
        (1, 'system', 'You help the user plan their week.'),
        (2, 'user', 'What is due first?'),
        (3, 'assistant', 'Buy milk, tomorrow; then the plants, the day after.')
    ) AS m(n, role, content)
    ORDER BY m.n
    RETURNING id
)
SELECT (SELECT count(*) FROM conversation), (SELECT count(*) FROM added)
""")


async def seed(db: Database, user_id: str = "demo") -> dict[str, int]:
    """Insert the demo rows `user_id` lacks; return how many of each were added."""
    async with db.autocommit() as session:
        tasks = (await session.execute(_TASKS, {"user_id": user_id})).rowcount
        conversations, messages = (await session.execute(_CONVERSATION, {"user_id": user_id})).one()
    return {"tasks": int(tasks), "conversations": int(conversations), "messages": int(messages)}
