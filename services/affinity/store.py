"""Affinity persistence (schema `affinity`): one vector row per chat session and its event log.

Every write goes through `write_locked`: `SELECT … FOR UPDATE`, the lazy decay materialised to the
write time, the change, at most one event row, `version + 1`, and a `pg_notify` on
`affinity_changes` carrying the new state — all in one transaction, so watchers on any replica
see exactly the committed changes, in commit order. Times come from the database clock unless a
caller injects `now` (tests).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import asyncpg

from services.affinity.domain import AXES, AffinityVector, GhostBookkeeping, decay
from services.servicekit.grpc_errors import NotFound, PermissionDenied

CHANGES_CHANNEL = "affinity_changes"
EVENT_KINDS = ("message", "ghost", "gift")

Executor = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True)
class SessionAffinity:
    """A session's row as read at `read_at`: `vector` is as stored at `updated_at` (not decayed)."""

    session_id: uuid.UUID
    user_id: uuid.UUID
    instance_id: uuid.UUID
    is_demo: bool
    vector: AffinityVector
    book: GhostBookkeeping
    updated_at: datetime
    version: int
    read_at: datetime

    def current(self) -> AffinityVector:
        """The vector decayed from `updated_at` to `read_at` (what every reader and writer uses)."""
        return decay(self.vector, self.read_at - self.updated_at)

    def as_json(self) -> dict[str, Any]:
        """The notification payload form (see `from_json`)."""
        return {
            "session_id": str(self.session_id),
            "user_id": str(self.user_id),
            "instance_id": str(self.instance_id),
            "is_demo": self.is_demo,
            "vector": self.vector.as_dict(),
            "ghost_streak": self.book.ghost_streak,
            "total_ghosts": self.book.total_ghosts,
            "last_ghost_at": self.book.last_ghost_at.isoformat() if self.book.last_ghost_at else None,
            "updated_at": self.updated_at.isoformat(),
            "version": self.version,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionAffinity:
        updated_at = datetime.fromisoformat(data["updated_at"])
        last_ghost_at = data.get("last_ghost_at")
        return cls(
            session_id=uuid.UUID(data["session_id"]),
            user_id=uuid.UUID(data["user_id"]),
            instance_id=uuid.UUID(data["instance_id"]),
            is_demo=bool(data["is_demo"]),
            vector=AffinityVector.from_mapping(data["vector"]),
            book=GhostBookkeeping(
                int(data["ghost_streak"]),
                int(data["total_ghosts"]),
                datetime.fromisoformat(last_ghost_at) if last_ghost_at else None,
            ),
            updated_at=updated_at,
            version=int(data["version"]),
            read_at=updated_at,
        )


def _session(row: asyncpg.Record, now: datetime | None = None) -> SessionAffinity:
    read_at = max(now or row["read_at"], row["updated_at"])  # the clock never runs backwards here
    return SessionAffinity(
        session_id=row["session_id"],
        user_id=row["user_id"],
        instance_id=row["instance_id"],
        is_demo=row["is_demo"],
        vector=AffinityVector(**{axis: row[axis] for axis in AXES}),
        book=GhostBookkeeping(row["ghost_streak"], row["total_ghosts"], row["last_ghost_at"]),
        updated_at=row["updated_at"],
        version=row["version"],
        read_at=read_at,
    )


_SELECT = "SELECT v.*, clock_timestamp() AS read_at FROM affinity.vectors v WHERE v.session_id = $1"


def _owned(row: asyncpg.Record | None, user_id: uuid.UUID, now: datetime | None) -> SessionAffinity:
    if row is None:
        raise NotFound("no affinity state for this session", user_message="We couldn't find that chat.")
    if row["user_id"] != user_id:
        raise PermissionDenied("session belongs to another user")
    return _session(row, now)


async def read_owned(
    db: Executor, session_id: uuid.UUID, user_id: uuid.UUID, now: datetime | None = None
) -> SessionAffinity:
    """The session's row (NotFound if unknown, PermissionDenied if another user's)."""
    return _owned(await db.fetchrow(_SELECT, session_id), user_id, now)


# --- opening a session ---------------------------------------------------------------------------


async def open_session(
    pool: asyncpg.Pool,
    *,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    instance_id: uuid.UUID,
    is_demo: bool,
    reset_affinity: bool,
    now: datetime | None = None,
) -> tuple[SessionAffinity, bool]:
    """Create the session's vector → (state, continued). Idempotent: an existing session is
    returned as it is (continued=False). Unless `reset_affinity`, the vector starts from the pair's
    latest vector decayed to now; otherwise (or for a first session) from the start values."""
    async with pool.acquire() as conn, conn.transaction():
        existing = await conn.fetchrow(_SELECT, session_id)
        if existing is not None:
            return _owned(existing, user_id, now), False
        start = AffinityVector.START
        continued = False
        if not reset_affinity:
            latest = await conn.fetchrow(
                """SELECT v.*, clock_timestamp() AS read_at FROM affinity.vectors v
                   WHERE v.user_id = $1 AND v.instance_id = $2 ORDER BY v.updated_at DESC LIMIT 1""",
                user_id,
                instance_id,
            )
            if latest is not None:
                start, continued = _session(latest, now).current(), True
        created_at = now or await conn.fetchval("SELECT clock_timestamp()")
        row = await conn.fetchrow(
            f"""INSERT INTO affinity.vectors (session_id, user_id, instance_id, is_demo, {", ".join(AXES)},
                                              created_at, updated_at)
                VALUES ($1, $2, $3, $4, {", ".join(f"${i}" for i in range(5, 11))}, $11, $11)
                ON CONFLICT (session_id) DO NOTHING
                RETURNING *, updated_at AS read_at""",
            session_id,
            user_id,
            instance_id,
            is_demo,
            *start.as_dict().values(),
            created_at,
        )
        if row is None:  # opened concurrently by another call
            return _owned(await conn.fetchrow(_SELECT, session_id), user_id, now), False
        return _session(row), continued


# --- the one write path --------------------------------------------------------------------------


@dataclass(frozen=True)
class EventDraft:
    """One event row; state before/after and effective deltas are filled in by `write_locked`."""

    kind: str
    turn_id: str | None = None
    deltas: Mapping[str, float] = field(default_factory=dict)
    reason: str = ""
    skipped: bool = False
    rule_deltas: Mapping[str, float] = field(default_factory=dict)
    evaluator_deltas: Mapping[str, float] = field(default_factory=dict)
    evaluator: str = ""
    evaluator_error: str | None = None
    label: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"event kind must be one of {EVENT_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class Change:
    """What a write makes of the (decayed) current state. `kind` names the change for watchers
    when there is no event (a streak reset is `reply`)."""

    vector: AffinityVector
    book: GhostBookkeeping
    event: EventDraft | None = None
    kind: str = ""


def effective_deltas(before: AffinityVector, after: AffinityVector, axes: Mapping[str, float]) -> dict[str, float]:
    """`after − before` on the axes a change named."""
    return {axis: getattr(after, axis) - getattr(before, axis) for axis in axes}


@dataclass(frozen=True)
class WriteOutcome:
    """The state after the write (or as found, when nothing was applied) and the vector before it."""

    state: SessionAffinity
    before: AffinityVector
    applied: bool
    event_id: uuid.UUID | None = None

    def effective_deltas(self, axes: Mapping[str, float]) -> dict[str, float]:
        return effective_deltas(self.before, self.state.vector, axes)


async def write_locked(
    pool: asyncpg.Pool,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    change: Callable[[SessionAffinity], Change | None],
    *,
    idempotency: tuple[str, str] | None = None,
    now: datetime | None = None,
) -> WriteOutcome:
    """Lock the row, decay it to now, apply `change` (None = nothing to do) and record it.

    `idempotency` = (kind, turn_id): if that event exists, nothing changes (applied=False). The
    state handed to `change` has `read_at` = the write time; its `current()` is the decayed vector.
    """
    async with pool.acquire() as conn, conn.transaction():
        locked = _owned(await conn.fetchrow(_SELECT + " FOR UPDATE", session_id), user_id, None)
        if now is not None:
            locked = replace(locked, read_at=max(now, locked.updated_at))
        if idempotency is not None:
            previous = await conn.fetchval(
                "SELECT id FROM affinity.events WHERE session_id = $1 AND kind = $2 AND turn_id = $3",
                session_id,
                *idempotency,
            )
            if previous is not None:
                return WriteOutcome(locked, locked.current(), applied=False, event_id=previous)
        before = locked.current()
        outcome = change(locked)
        if outcome is None:
            return WriteOutcome(locked, before, applied=False)
        written = SessionAffinity(
            session_id=locked.session_id,
            user_id=locked.user_id,
            instance_id=locked.instance_id,
            is_demo=locked.is_demo,
            vector=outcome.vector,
            book=outcome.book,
            updated_at=locked.read_at,
            version=locked.version + 1,
            read_at=locked.read_at,
        )
        await conn.execute(
            f"""UPDATE affinity.vectors SET {", ".join(f"{axis} = ${i}" for i, axis in enumerate(AXES, 2))},
                    ghost_streak = $8, total_ghosts = $9, last_ghost_at = $10, updated_at = $11, version = $12
                WHERE session_id = $1""",
            session_id,
            *outcome.vector.as_dict().values(),
            outcome.book.ghost_streak,
            outcome.book.total_ghosts,
            outcome.book.last_ghost_at,
            written.updated_at,
            written.version,
        )
        event_id = None
        kind = outcome.kind
        if outcome.event is not None:
            event_id = await _insert_event(conn, written, outcome.event, before)
            kind = outcome.event.kind
        payload = {"state": written.as_json(), "kind": kind, "event_id": str(event_id) if event_id else ""}
        await conn.execute("SELECT pg_notify($1, $2)", CHANGES_CHANNEL, json.dumps(payload))
        return WriteOutcome(written, before, applied=True, event_id=event_id)


async def _insert_event(
    conn: asyncpg.Connection, written: SessionAffinity, event: EventDraft, before: AffinityVector
) -> uuid.UUID:
    after = written.vector
    event_id: uuid.UUID = await conn.fetchval(
        """INSERT INTO affinity.events (session_id, user_id, kind, turn_id, deltas, effective_deltas, rule_deltas,
               evaluator_deltas, evaluator, evaluator_error, reason, skipped, label, metadata, state_before,
               state_after, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) RETURNING id""",
        written.session_id,
        written.user_id,
        event.kind,
        event.turn_id,
        dict(event.deltas),
        effective_deltas(before, after, event.deltas),
        dict(event.rule_deltas),
        dict(event.evaluator_deltas),
        event.evaluator,
        event.evaluator_error,
        event.reason,
        event.skipped,
        event.label,
        dict(event.metadata),
        before.as_dict(),
        after.as_dict(),
        written.updated_at,
    )
    return event_id


# --- events --------------------------------------------------------------------------------------


async def has_event(db: Executor, session_id: uuid.UUID, kind: str, turn_id: str) -> bool:
    """Whether an event of this kind and turn id exists (a cheap check before expensive work)."""
    found = await db.fetchval(
        "SELECT 1 FROM affinity.events WHERE session_id = $1 AND kind = $2 AND turn_id = $3", session_id, kind, turn_id
    )
    return found is not None


async def list_events(
    db: Executor, session_id: uuid.UUID, *, limit: int, kind: str | None = None, oldest_first: bool = False
) -> list[asyncpg.Record]:
    """Events of a session (optionally of one kind), newest first unless `oldest_first`."""
    order = "ASC" if oldest_first else "DESC"
    return await db.fetch(
        f"""SELECT * FROM affinity.events WHERE session_id = $1 AND ($2::text IS NULL OR kind = $2)
            ORDER BY seq {order} LIMIT $3""",
        session_id,
        kind,
        limit,
    )


async def recent_reasons(db: Executor, session_id: uuid.UUID, count: int) -> list[str]:
    """The reasons of the last `count` evaluated (not skipped) events, oldest first."""
    rows = await db.fetch(
        """SELECT reason FROM affinity.events WHERE session_id = $1 AND NOT skipped AND reason <> ''
           ORDER BY seq DESC LIMIT $2""",
        session_id,
        count,
    )
    return [row["reason"] for row in reversed(rows)]


# --- deletion ------------------------------------------------------------------------------------


async def delete_user_data(pool: asyncpg.Pool, user_id: uuid.UUID, instance_id: uuid.UUID | None) -> int:
    """Hard-delete a user's vectors and events (of one persona instance if given) → rows deleted.
    Watchers of the deleted sessions are told (their streams end)."""
    async with pool.acquire() as conn, conn.transaction():
        sessions = await conn.fetch(
            """SELECT session_id FROM affinity.vectors WHERE user_id = $1 AND ($2::uuid IS NULL OR instance_id = $2)
               FOR UPDATE""",
            user_id,
            instance_id,
        )
        ids = [row["session_id"] for row in sessions]
        events = await conn.execute("DELETE FROM affinity.events WHERE session_id = ANY($1::uuid[])", ids)
        vectors = await conn.execute("DELETE FROM affinity.vectors WHERE session_id = ANY($1::uuid[])", ids)
        for session_id in ids:
            payload = {"deleted": True, "session_id": str(session_id)}
            await conn.execute("SELECT pg_notify($1, $2)", CHANGES_CHANNEL, json.dumps(payload))
        return int(events.split()[-1]) + int(vectors.split()[-1])
