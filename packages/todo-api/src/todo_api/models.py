"""Tables and API schemas: tasks, conversations, messages.

Per resource, the family of the full-stack FastAPI template: `...Base` (shared fields),
the table (`Task`, `Conversation`, `Message`), `...Create` and `...Update` (request bodies,
unknown fields rejected) and `...Public` (responses).

Text a client sends is checked for what PostgreSQL would refuse (NUL characters, lone
surrogates), so bad input is a 422 and never reaches the database. Enumerations are
VARCHAR + CHECK constraints rather than PostgreSQL ENUM types: simpler migrations, and
schema-per-test friendly. The tables live in their own SQLAlchemy registry, so `MIGRATIONS`
compares exactly these tables, whatever else imports SQLModel in the same process.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, StringConstraints, model_validator
from pydantic import Field as PydanticField
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    MetaData,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel
from sqlmodel._compat import SQLModelConfig

from neondb import Migrations

__all__ = [
    "CONVERSATIONS",
    "MAX_ID",
    "MAX_UNKNOWN_FIELDS",
    "MESSAGES",
    "METADATA",
    "MIGRATIONS",
    "TASKS",
    "Conversation",
    "ConversationCreate",
    "ConversationPage",
    "ConversationPublic",
    "ErrorDetail",
    "Message",
    "MessageCreate",
    "MessagePage",
    "MessagePublic",
    "RequestBody",
    "Task",
    "TaskCompletion",
    "TaskCreate",
    "TaskPage",
    "TaskPublic",
    "TaskUpdate",
]

MAX_ID = 2**63 - 1
"""Ids are BIGINT identities: a path id outside 1..MAX_ID is a 422, never a driver error."""

# Readable, stable names for constraints and indexes (Alembic compares them by name).
METADATA = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class TodoModel(SQLModel, registry=registry(metadata=METADATA)):
    """Base of todo_api's tables: their own registry and metadata."""


# text ------------------------------------------------------------------------------------

# JSON Schema for "no NUL": declared so generated clients (and schemathesis) know the rule.
NO_NUL_PATTERN = "^[^\\x00]*$"


def _storable(value: str) -> str:
    """PostgreSQL text cannot hold NUL, and UTF-8 cannot encode a lone surrogate (which
    `json.loads` lets through from a `\\ud800` escape)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def _utc(value: datetime) -> datetime:
    """Normalise to UTC, refusing instants PostgreSQL arithmetic or Python cannot carry
    (monthly recurrence adds a month; year 10000 would not come back from the driver)."""
    try:
        out = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("date out of range") from None
    if not 1 < out.year < 9999:
        raise ValueError("date out of range (years 2 to 9998)")
    return out


_NO_NUL = PydanticField(json_schema_extra={"pattern": NO_NUL_PATTERN})
_STORABLE = AfterValidator(_storable)
Title = Annotated[str, StringConstraints(min_length=1, max_length=200), _STORABLE, _NO_NUL]
Description = Annotated[str, StringConstraints(max_length=1000), _STORABLE, _NO_NUL]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=50), _STORABLE, _NO_NUL]
ConversationTitle = Annotated[str, StringConstraints(max_length=200), _STORABLE, _NO_NUL]
Content = Annotated[str, StringConstraints(min_length=1, max_length=32_000), _STORABLE, _NO_NUL]
SearchText = Annotated[str, StringConstraints(max_length=200), _STORABLE, _NO_NUL]
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
Priority = Literal["low", "medium", "high"]
RecurringPattern = Literal["daily", "weekly", "monthly"]
Role = Literal["user", "assistant", "system"]
MAX_TAGS = 20


def _dedupe(tags: list[str]) -> list[str]:
    """Tags are a set with an order: the first occurrence wins."""
    return list(dict.fromkeys(tags))


Tags = Annotated[list[Tag], Field(max_length=MAX_TAGS), AfterValidator(_dedupe)]


def _as_utc(value: datetime) -> datetime:
    # psycopg returns timestamptz in the session's time zone; the API speaks UTC.
    return value.astimezone(UTC)


OutDatetime = Annotated[datetime, AfterValidator(_as_utc)]


# A body with 100,000 unknown fields would cost 100,000 validation errors (a third of a
# second of the event loop for a 1 MiB body): past a handful, one error says it all.
MAX_UNKNOWN_FIELDS = 32


class RequestBody(SQLModel):
    """Base of request bodies: unknown fields rejected, and a body with far more fields
    than the model has rejected as a whole, before any field is looked at."""

    model_config = SQLModelConfig(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _not_too_many_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and len(data) > len(cls.model_fields) + MAX_UNKNOWN_FIELDS:
            fields = len(cls.model_fields)
            raise ValueError(f"too many fields ({len(data)}; this body has {fields})")
        return data


class ErrorDetail(SQLModel):
    """FastAPI's error shape: `{"detail": "..."}`."""

    detail: str


def _timestamp(**kw: Any) -> Any:
    return Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now(), **kw)
    )


def _id() -> Any:
    return Field(
        default=None, sa_column=Column(BigInteger, Identity(), primary_key=True, nullable=False)
    )


def _user_id() -> Any:
    return Field(sa_column=Column(String(255), nullable=False))


# tasks -----------------------------------------------------------------------------------


class TaskBase(SQLModel):
    title: Title
    description: Description | None = None
    priority: Priority = "medium"
    tags: Tags = Field(default_factory=list)
    due_date: UtcDatetime | None = None
    recurring: bool = False
    recurring_pattern: RecurringPattern | None = None


class Task(TodoModel, table=True):
    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint("priority IN ('low', 'medium', 'high')", name="priority"),
        CheckConstraint(
            "recurring_pattern IS NULL OR recurring_pattern IN ('daily', 'weekly', 'monthly')",
            name="recurring_pattern",
        ),
        CheckConstraint("NOT recurring OR recurring_pattern IS NOT NULL", name="recurring"),
        CheckConstraint("char_length(title) >= 1", name="title"),
        # A user's tasks newest first, and the same filtered by status.
        Index("ix_tasks_user_created", "user_id", text("created_at DESC"), text("id DESC")),
        Index(
            "ix_tasks_user_completed_created",
            "user_id",
            "completed",
            text("created_at DESC"),
            text("id DESC"),
        ),
        # `tags @> ARRAY[...]`: whole-tag match.
        Index("ix_tasks_tags", "tags", postgresql_using="gin"),
        # `q` (ILIKE '%...%') through pg_trgm: a search that matches nothing reads almost
        # nothing. The migration names the operator class with the extension's schema.
        *(
            Index(
                f"ix_tasks_{column}_trgm",
                column,
                postgresql_using="gin",
                postgresql_ops={column: "gin_trgm_ops"},
            )
            for column in ("title", "description")
        ),
        # One occurrence of a recurring series yields at most one next occurrence, however
        # often it is completed and reopened (`INSERT ... ON CONFLICT DO NOTHING`).
        Index("uq_tasks_source_task_id", "source_task_id", unique=True),
    )

    id: int | None = _id()
    user_id: str = _user_id()
    title: str = Field(sa_column=Column(String(200), nullable=False))
    description: str | None = Field(default=None, sa_column=Column(String(1000)))
    completed: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=text("false"))
    )
    priority: str = Field(
        default="medium",
        sa_column=Column(String(10), nullable=False, server_default=text("'medium'")),
    )
    tags: list[str] = Field(
        default_factory=list,
        sa_column=Column(ARRAY(Text), nullable=False, server_default=text("'{}'")),
    )
    due_date: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    recurring: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=text("false"))
    )
    recurring_pattern: str | None = Field(default=None, sa_column=Column(String(10)))
    # The occurrence whose completion created this one (internal, not in the API). Ids are
    # never reused, so a dangling value after a delete is harmless: no foreign key to check.
    source_task_id: int | None = Field(default=None, sa_column=Column(BigInteger))
    created_at: datetime | None = _timestamp()
    updated_at: datetime | None = _timestamp()


class TaskCreate(TaskBase, RequestBody):
    @model_validator(mode="after")
    def _pattern_when_recurring(self) -> TaskCreate:
        if self.recurring and self.recurring_pattern is None:
            raise ValueError("recurring_pattern is required when recurring is true")
        return self


class TaskUpdate(RequestBody):
    """A partial update: only the fields sent change. `null` clears `description`,
    `due_date` and `recurring_pattern`; the other fields cannot be null."""

    # Defaults are not validated, so "absent" is allowed while an explicit null is a 422.
    title: Title = Field(default=None)
    description: Description | None = None
    completed: bool = Field(default=None)
    priority: Priority = Field(default=None)
    tags: Tags = Field(default=None)
    due_date: UtcDatetime | None = None
    recurring: bool = Field(default=None)
    recurring_pattern: RecurringPattern | None = None

    @model_validator(mode="after")
    def _pattern_when_recurring(self) -> TaskUpdate:
        sent = self.model_fields_set
        if (
            self.recurring is True
            and "recurring_pattern" in sent
            and self.recurring_pattern is None
        ):
            raise ValueError("recurring_pattern is required when recurring is true")
        return self


class TaskPublic(TaskBase):
    id: int
    completed: bool
    created_at: OutDatetime
    updated_at: OutDatetime
    # Responses echo what is stored, without re-checking input rules.
    title: str
    description: str | None = None
    tags: list[str]
    due_date: OutDatetime | None = None


class TaskPage(SQLModel):
    items: list[TaskPublic]
    total: int = PydanticField(
        description="matching tasks, exact up to 10,000; past that, 10,000 (see `total_capped`)"
    )
    # Only when true, so ordinary sizes keep the plain `{"items": [...], "total": n}` shape.
    total_capped: bool = PydanticField(
        default=False,
        exclude_if=lambda capped: not capped,
        description="present (true) only when more than `total` tasks match: counting stopped",
    )


class TaskCompletion(SQLModel):
    task: TaskPublic
    next: TaskPublic | None


# conversations ---------------------------------------------------------------------------


class ConversationBase(SQLModel):
    title: ConversationTitle | None = None


class Conversation(TodoModel, table=True):
    __tablename__ = "conversations"
    __table_args__ = (
        # A user's conversations, most recently updated first.
        Index("ix_conversations_user_updated", "user_id", text("updated_at DESC"), text("id DESC")),
    )

    id: int | None = _id()
    user_id: str = _user_id()
    title: str | None = Field(default=None, sa_column=Column(String(200)))
    created_at: datetime | None = _timestamp()
    updated_at: datetime | None = _timestamp()


class ConversationCreate(ConversationBase, RequestBody):
    """A new conversation."""


class ConversationPublic(ConversationBase):
    id: int
    title: str | None = None
    created_at: OutDatetime
    updated_at: OutDatetime


class ConversationPage(SQLModel):
    items: list[ConversationPublic]
    total: int


# messages --------------------------------------------------------------------------------


class MessageBase(SQLModel):
    role: Role
    content: Content


class Message(TodoModel, table=True):
    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint("role IN ('user', 'assistant', 'system')", name="role"),
        CheckConstraint("char_length(content) >= 1", name="content"),
        # A conversation's messages, oldest first.
        Index("ix_messages_conversation_created", "conversation_id", "created_at", "id"),
    )

    id: int | None = _id()
    conversation_id: int = Field(
        sa_column=Column(
            BigInteger, ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
        )
    )
    role: str = Field(sa_column=Column(String(16), nullable=False))
    content: str = Field(sa_column=Column(String(32_000), nullable=False))
    created_at: datetime | None = _timestamp()


class MessageCreate(MessageBase, RequestBody):
    """A new message."""


class MessagePublic(MessageBase):
    id: int
    conversation_id: int
    content: str
    created_at: OutDatetime


class MessagePage(SQLModel):
    items: list[MessagePublic]
    total: int


TASKS = METADATA.tables["tasks"]
CONVERSATIONS = METADATA.tables["conversations"]
MESSAGES = METADATA.tables["messages"]

MIGRATIONS = Migrations(script_location=Path(__file__).parent / "migrations", metadata=METADATA)
"""Alembic scripts of this service and the metadata they must match (see `neondb`)."""
