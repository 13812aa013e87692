"""The typed rows the orchestrator's store returns."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

Conn = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True)
class PersonaRow:
    id: uuid.UUID
    name: str
    system_prompt: str
    tip_personality: str
    art_metadata: dict[str, Any]
    card: dict[str, Any] | None
    source: str


@dataclass(frozen=True)
class InstanceRow:
    """One user's copy of a persona."""

    id: uuid.UUID
    user_id: uuid.UUID
    persona_id: uuid.UUID


@dataclass(frozen=True)
class SessionRow:
    id: uuid.UUID
    user_id: uuid.UUID
    instance_id: uuid.UUID
    persona_id: uuid.UUID
    persona_name: str
    is_demo: bool
    message_count: int
    user_message_count: int
    active_branch_id: uuid.UUID | None = None


@dataclass(frozen=True)
class SessionListing:
    id: uuid.UUID
    instance_id: uuid.UUID
    persona_id: uuid.UUID
    persona_name: str
    message_count: int
    is_demo: bool
    started_at: datetime
    last_active_at: datetime
    usage: dict[str, Any]
    cost: float


@dataclass(frozen=True)
class MessageRow:
    id: str
    role: str
    kind: str
    content: str
    sent_at: datetime
    client_msg_id: str | None = None
    parent_id: str | None = None
    deleted_at: datetime | None = None
    turn_id: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class TreeNode:
    """A message's place in its session's tree (no text)."""

    id: str
    parent_id: str | None
    role: str
    kind: str
    deleted: bool
    turn_id: str | None = None
    gift_event: str | None = None  # a gift's affinity event


@dataclass(frozen=True)
class TurnLink:
    turn_id: str
    user_message_id: str
    status: str


@dataclass(frozen=True)
class BranchRow:
    id: uuid.UUID
    session_id: uuid.UUID
    head_id: str | None
    forked_from: str | None
    created_at: datetime


@dataclass(frozen=True)
class EventRow:
    seq: int
    id: str
    kind: str
    actor: str
    message_id: str | None
    branch_id: uuid.UUID | None
    data: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class TurnRow:
    id: str
    session_id: uuid.UUID
    user_id: uuid.UUID
    client_msg_id: str
    user_message_id: str
    status: str  # running, done, failed
    frames: list[dict[str, Any]]
    explain: dict[str, Any]
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    branch_id: uuid.UUID | None = None


@dataclass(frozen=True)
class TurnAttempt:
    """A turn answering one user message (a user message may be answered several times: regenerates)."""

    client_msg_id: str
    status: str
    post_processed: bool


@dataclass(frozen=True)
class AssistantMessage:
    """The assistant message a turn ends with (a reply, or a ghost)."""

    id: str
    content: str
    kind: str = "chat"  # chat or ghost
    model: str | None = None
    usage: dict[str, Any] | None = None


@dataclass(frozen=True)
class ApiKeyInfo:
    id: uuid.UUID
    user_id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class ServiceKeyInfo:
    id: uuid.UUID
    service: str
    scopes: tuple[str, ...]
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def row_to(cls: type, record: asyncpg.Record | None) -> Any:
    """A record as a row dataclass, taking only the dataclass's fields (None stays None)."""
    if record is None:
        return None
    return cls(**{name: record[name] for name in _shared_fields(cls, tuple(record.keys()))})


def rows_to(cls: type, records: list[asyncpg.Record]) -> list[Any]:
    """Many records of one query as row dataclasses."""
    if not records:
        return []
    names = _shared_fields(cls, tuple(records[0].keys()))
    return [cls(**{name: record[name] for name in names}) for record in records]


@functools.cache
def _shared_fields(cls: type, columns: tuple[str, ...]) -> tuple[str, ...]:
    present = set(columns)
    return tuple(name for name in cls.__dataclass_fields__ if name in present)  # type: ignore[attr-defined]
