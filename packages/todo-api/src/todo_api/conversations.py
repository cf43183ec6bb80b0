"""`/api/conversations`: a user's chat history (conversations and their messages).

One statement per route (one round trip); every statement filters by the authenticated
user, messages through their conversation.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import TypeAdapter
from sqlalchemy import Select, Table, bindparam, delete, func, insert, literal, select, update

from neondb import AutocommitSession, ReadSession
from todo_api.auth import CurrentUser
from todo_api.fair_share import PER_USER
from todo_api.models import (
    CONVERSATIONS,
    MAX_ID,
    MESSAGES,
    ConversationCreate,
    ConversationPage,
    ConversationPublic,
    MessageCreate,
    MessagePage,
    MessagePublic,
)
from todo_api.responses import BAD_BODY, COMMON_RESPONSES, NOT_FOUND, not_found
from todo_api.strict import reject_unknown_query

__all__ = ["conversations_statement", "messages_statement", "router"]

router = APIRouter(
    prefix="/api/conversations",
    tags=["conversations"],
    responses=COMMON_RESPONSES,
    dependencies=[Depends(reject_unknown_query), PER_USER],
)

conversations: Table = CONVERSATIONS
messages: Table = MESSAGES
CONVERSATION = [c for c in conversations.c if c.name != "user_id"]
MESSAGE = list(messages.c)

ConversationId = Annotated[int, Path(ge=1, le=MAX_ID, description="conversation id")]
Limit = Annotated[int, Query(ge=1, le=100)]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]


# Validated here, once: FastAPI passes these models through its response check as they are.
_CONVERSATION_PUBLIC = TypeAdapter(ConversationPublic)
_MESSAGE_PUBLIC = TypeAdapter(MessagePublic)
# Built once; requests pass their values.
GET_ONE = select(*CONVERSATION).where(
    conversations.c.id == bindparam("id"), conversations.c.user_id == bindparam("uid")
)


def _conversation(row: Any) -> ConversationPublic:
    return _CONVERSATION_PUBLIC.validate_python(row._mapping)


def _message(row: Any) -> MessagePublic:
    return _MESSAGE_PUBLIC.validate_python(row._mapping)


def conversations_statement(user_id: str, limit: int, offset: int) -> Select[Any]:
    """One page, most recently updated first, each row carrying the total."""
    return (
        select(*CONVERSATION, func.count().over().label("total"))
        .where(conversations.c.user_id == user_id)
        .order_by(conversations.c.updated_at.desc(), conversations.c.id.desc())
        .limit(limit)
        .offset(offset)
    )


def messages_statement(conversation_id: int, user_id: str, limit: int, offset: int) -> Select[Any]:
    """One page of a conversation's messages, oldest first, with the total. The outer join
    keeps one row (of NULL message columns) for an empty conversation of this user, so no
    row at all means "no such conversation" (unless the offset is past the end)."""
    joined = conversations.outerjoin(messages, messages.c.conversation_id == conversations.c.id)
    return (
        select(*MESSAGE, func.count(messages.c.id).over().label("total"))
        .select_from(joined)
        .where(conversations.c.id == conversation_id, conversations.c.user_id == user_id)
        .order_by(messages.c.created_at, messages.c.id)
        .limit(limit)
        .offset(offset)
    )


@router.post("", status_code=201, responses=BAD_BODY)
async def create_conversation(
    body: ConversationCreate, user: CurrentUser, session: AutocommitSession
) -> ConversationPublic:
    """Start a conversation (optional `title`, up to 200 characters)."""
    stmt = insert(conversations).values(user_id=user.id, title=body.title).returning(*CONVERSATION)
    return _conversation((await session.execute(stmt)).one())


@router.get("")
async def list_conversations(
    user: CurrentUser, session: ReadSession, limit: Limit = 20, offset: Offset = 0
) -> ConversationPage:
    """The caller's conversations, most recently updated first."""
    rows = (await session.execute(conversations_statement(user.id, limit, offset))).all()
    if rows:
        total = rows[0].total
    elif offset > 0:
        count = select(func.count()).where(conversations.c.user_id == user.id)
        total = (await session.execute(count)).scalar_one()
    else:
        total = 0
    return ConversationPage(items=[_conversation(r) for r in rows], total=total)


@router.get("/{conversation_id}", responses=NOT_FOUND)
async def get_conversation(
    conversation_id: ConversationId, user: CurrentUser, session: ReadSession
) -> ConversationPublic:
    row = (await session.execute(GET_ONE, {"id": conversation_id, "uid": user.id})).one_or_none()
    if row is None:
        raise not_found("Conversation")
    return _conversation(row)


@router.delete("/{conversation_id}", status_code=204, response_class=Response, responses=NOT_FOUND)
async def delete_conversation(
    conversation_id: ConversationId, user: CurrentUser, session: AutocommitSession
) -> Response:
    """Delete the conversation and (ON DELETE CASCADE) its messages."""
    stmt = (
        delete(conversations)
        .where(conversations.c.id == conversation_id, conversations.c.user_id == user.id)
        .returning(conversations.c.id)
    )
    if (await session.execute(stmt)).one_or_none() is None:
        raise not_found("Conversation")
    return Response(status_code=204)


@router.post("/{conversation_id}/messages", status_code=201, responses=NOT_FOUND | BAD_BODY)
async def post_message(
    conversation_id: ConversationId,
    body: MessageCreate,
    user: CurrentUser,
    session: AutocommitSession,
) -> MessagePublic:
    """Add a message; the conversation's `updated_at` moves to the message's time, in the
    same statement (which also checks the conversation is the caller's)."""
    # now() is when this statement's transaction started, and the last post to commit wins
    # the row: a post that started earlier but commits later must not move `updated_at`
    # back before a newer message. GREATEST keeps it at the newest message's time (the
    # UPDATE re-reads a row another post changed meanwhile before applying it).
    bumped = (
        update(conversations)
        .where(conversations.c.id == conversation_id, conversations.c.user_id == user.id)
        .values(updated_at=func.greatest(conversations.c.updated_at, func.now()))
        .returning(conversations.c.id)
        .cte("bumped")
    )
    stmt = (
        insert(messages)
        .add_cte(bumped)
        .from_select(
            ["conversation_id", "role", "content"],
            select(bumped.c.id, literal(body.role), literal(body.content)),
        )
        .returning(*MESSAGE)
    )
    row = (await session.execute(stmt)).one_or_none()
    if row is None:
        raise not_found("Conversation")
    return _message(row)


@router.get("/{conversation_id}/messages", responses=NOT_FOUND)
async def list_messages(
    conversation_id: ConversationId,
    user: CurrentUser,
    session: ReadSession,
    limit: Limit = 20,
    offset: Offset = 0,
) -> MessagePage:
    """The conversation's messages, oldest first."""
    stmt = messages_statement(conversation_id, user.id, limit, offset)
    rows = (await session.execute(stmt)).all()
    if rows:
        total = rows[0].total
    elif offset > 0:
        count = select(
            select(func.count())
            .where(messages.c.conversation_id == conversations.c.id)
            .scalar_subquery()
        ).where(conversations.c.id == conversation_id, conversations.c.user_id == user.id)
        total = (await session.execute(count)).scalar_one_or_none()
        if total is None:
            raise not_found("Conversation")
    else:
        raise not_found("Conversation")
    items = [_message(r) for r in rows if r.id is not None]
    return MessagePage(items=items, total=total)
