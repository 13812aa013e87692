"""Affinity persistence (schema `affinity`): one vector row per chat session and its event log.

Every write goes through `LockedSession.write` (used by `write_locked` and `project_branch`): `SELECT …
FOR UPDATE`, the lazy decay materialised to the write time, the change, at most one event row,
`version + 1`, and a `pg_notify` on `affinity_changes` carrying the new state — all in one transaction,
so watchers on any replica see exactly the committed changes, in commit order. A turn off the active
branch (`off_branch_turns.excluded`) only has its event recorded; an erased turn records nothing. Times come from the database clock unless a
caller injects `now` (tests).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple, TypeAlias

import asyncpg

from services.affinity.domain import AXES, AffinityVector, GhostBookkeeping, ReplayEvent, decay
from services.servicekit.grpc_errors import InvalidArgument, NotFound, PermissionDenied

CHANGES_CHANNEL = "affinity_changes"
EVENT_KINDS = ("message", "ghost", "gift")

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection


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
                                              created_at, updated_at, start_vector, started_at)
                VALUES ($1, $2, $3, $4, {", ".join(f"${i}" for i in range(5, 11))}, $11, $11, $12, $11)
                ON CONFLICT (session_id) DO NOTHING
                RETURNING *, updated_at AS read_at""",
            session_id,
            user_id,
            instance_id,
            is_demo,
            *start.as_dict().values(),
            created_at,
            start.as_dict(),
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
    turn_id: str | None = None  # the turn a change without an event belongs to (a streak reset), if any


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
    off_branch: bool = False  # the turn is off the active branch: its event (if any) was only recorded

    def effective_deltas(self, axes: Mapping[str, float]) -> dict[str, float]:
        return effective_deltas(self.before, self.state.vector, axes)


class LockedSession:
    """A session's row locked (`SELECT … FOR UPDATE`) inside a transaction, `state.read_at` = the write time.

    `write` is the one write of the state: the new vector and bookkeeping, `version + 1`, at most one event
    row and a `pg_notify` on `affinity_changes` — committed with the transaction, so watchers on any replica
    see exactly the committed changes, in commit order."""

    def __init__(self, conn: asyncpg.Connection, row: asyncpg.Record, state: SessionAffinity) -> None:
        self.conn = conn
        self.row = row
        self.state = state

    async def off_branch(self, turn_id: str | None) -> str | None:
        """`excluded` or `erased` when the turn is not on the session's active branch, else None."""
        if turn_id is None:
            return None
        return await self.conn.fetchval(  # type: ignore[no-any-return]
            """SELECT CASE WHEN $2 = ANY(erased) THEN 'erased' WHEN $2 = ANY(excluded) THEN 'excluded' END
               FROM affinity.off_branch_turns WHERE session_id = $1""",
            self.state.session_id,
            turn_id,
        )

    async def write(self, change: Change) -> WriteOutcome:
        locked = self.state
        before = locked.current()
        written = SessionAffinity(
            session_id=locked.session_id,
            user_id=locked.user_id,
            instance_id=locked.instance_id,
            is_demo=locked.is_demo,
            vector=change.vector,
            book=change.book,
            updated_at=locked.read_at,
            version=locked.version + 1,
            read_at=locked.read_at,
        )
        await self.conn.execute(
            f"""UPDATE affinity.vectors SET {", ".join(f"{axis} = ${i}" for i, axis in enumerate(AXES, 2))},
                    ghost_streak = $8, total_ghosts = $9, last_ghost_at = $10, updated_at = $11, version = $12
                WHERE session_id = $1""",
            locked.session_id,
            *change.vector.as_dict().values(),
            change.book.ghost_streak,
            change.book.total_ghosts,
            change.book.last_ghost_at,
            written.updated_at,
            written.version,
        )
        event_id = None
        kind = change.kind
        if change.event is not None:
            event_id = await _insert_event(self.conn, written, change.event, before)
            kind = change.event.kind
        payload = {"state": written.as_json(), "kind": kind, "event_id": str(event_id) if event_id else ""}
        await self.conn.execute("SELECT pg_notify($1, $2)", CHANGES_CHANNEL, json.dumps(payload))
        self.state = written
        return WriteOutcome(written, before, applied=True, event_id=event_id)

    async def record_off_branch(self, event: EventDraft) -> WriteOutcome:
        """Record the event of a turn that is off the active branch without changing the state (before =
        after = the current vector): a later projection that puts the turn on the branch replays it."""
        current = replace(self.state, vector=self.state.current(), updated_at=self.state.read_at)
        event_id = await _insert_event(self.conn, current, event, current.vector)
        return WriteOutcome(self.state, current.vector, applied=True, event_id=event_id, off_branch=True)


@asynccontextmanager
async def locked_session(
    pool: asyncpg.Pool, session_id: uuid.UUID, user_id: uuid.UUID, now: datetime | None = None
) -> AsyncIterator[LockedSession]:
    """The session's row locked for one transaction (NotFound if unknown, PermissionDenied if another user's)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(_SELECT + " FOR UPDATE", session_id)
        locked = _owned(row, user_id, None)
        if now is not None:
            locked = replace(locked, read_at=max(now, locked.updated_at))
        yield LockedSession(conn, row, locked)


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
    A change of a turn that is off the active branch (ProjectBranch's `excluded_turn_ids`) only records
    its event; one of an erased turn records nothing.
    """
    async with locked_session(pool, session_id, user_id, now) as session:
        locked = session.state
        if idempotency is not None:
            previous = await session.conn.fetchval(
                "SELECT id FROM affinity.events WHERE session_id = $1 AND kind = $2 AND turn_id = $3",
                session_id,
                *idempotency,
            )
            if previous is not None:
                return WriteOutcome(locked, locked.current(), applied=False, event_id=previous)
        outcome = change(locked)
        if outcome is None:
            return WriteOutcome(locked, locked.current(), applied=False)
        off_branch = await session.off_branch(outcome.event.turn_id if outcome.event else outcome.turn_id)
        if off_branch == "erased":
            return WriteOutcome(locked, locked.current(), applied=False, off_branch=True)
        if off_branch == "excluded":
            if outcome.event is None:
                return WriteOutcome(locked, locked.current(), applied=False, off_branch=True)
            return await session.record_off_branch(outcome.event)
        return await session.write(outcome)


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
    return await db.fetch(  # type: ignore[no-any-return]
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


# --- branches ------------------------------------------------------------------------------------


class EventRef(NamedTuple):
    """One event of a session by reference: the events of a turn (its message or ghost), or one event by id."""

    turn_id: str | None = None
    event_id: uuid.UUID | None = None


@dataclass(frozen=True)
class BranchOutcome:
    """ProjectBranch: the state before, the branch's state (written unless a dry run), the counts."""

    before: SessionAffinity
    state: SessionAffinity
    replayed: int
    erased: int


# The raw deltas as one float column per axis (NULL = not named): no JSON decoding per replayed event.
_DELTA_COLUMNS = ", ".join(f"(deltas->>'{axis}')::float8 AS {axis}" for axis in AXES)

# Events named by turn ids ($2) or event ids ($3). `IN (SELECT unnest(…))` is a hashed subplan; `= ANY($2)`
# would compare every row with every id once the prepared statement's plan is generic (20 ms for 1,000).
_NAMED_EVENTS = "(turn_id IN (SELECT unnest($2::text[])) OR id IN (SELECT unnest($3::uuid[])))"

BranchReplay = Callable[[SessionAffinity, AffinityVector, datetime, list[ReplayEvent]], Change]


async def _named_events(
    conn: asyncpg.Connection, session_id: uuid.UUID, refs: Sequence[EventRef]
) -> list[asyncpg.Record]:
    """The session's stored events named by `refs`, in the order they were written (names without a stored
    event are absent events)."""
    turn_ids = [ref.turn_id for ref in refs if ref.turn_id is not None]
    event_ids = [ref.event_id for ref in refs if ref.event_id is not None]
    if not turn_ids and not event_ids:
        return []
    return await conn.fetch(  # type: ignore[no-any-return]
        f"""SELECT id, kind, turn_id, created_at, {_DELTA_COLUMNS} FROM affinity.events
            WHERE session_id = $1 AND {_NAMED_EVENTS} ORDER BY seq""",
        session_id,
        turn_ids,
        event_ids,
    )


def _in_branch_order(
    rows: Sequence[asyncpg.Record], refs: Sequence[EventRef], erased: set[uuid.UUID]
) -> list[ReplayEvent]:
    """The branch's events in the refs' order (a turn's own events in the order they were written), without
    the erased ones; an event named twice is refused."""
    by_turn: dict[str, list[asyncpg.Record]] = {}
    by_id = {}
    for row in rows:
        by_id[row["id"]] = row
        if row["turn_id"] is not None:
            by_turn.setdefault(row["turn_id"], []).append(row)
    events: list[ReplayEvent] = []
    seen: set[uuid.UUID] = set()
    for ref in refs:
        if ref.turn_id is not None:
            named = by_turn.get(ref.turn_id, [])
        else:
            named = [by_id[ref.event_id]] if ref.event_id in by_id else []
        for row in named:
            if row["id"] in seen:
                raise InvalidArgument(f"event {row['id']} is listed twice in events", field="events")
            seen.add(row["id"])
            if row["id"] not in erased:
                deltas = {axis: row[axis] for axis in AXES if row[axis] is not None}
                events.append(ReplayEvent(row["kind"], row["created_at"], deltas))
    return events


async def _erase_events(
    conn: asyncpg.Connection, session_id: uuid.UUID, doomed: Sequence[asyncpg.Record], erase: Sequence[EventRef]
) -> int:
    """Delete the events for good; the named turns and the events' turns are tombstoned (a late write of one
    records nothing)."""
    if not erase:
        return 0
    await conn.execute(
        "DELETE FROM affinity.events WHERE id IN (SELECT unnest($1::uuid[]))", [row["id"] for row in doomed]
    )
    tombstones = {ref.turn_id for ref in erase if ref.turn_id is not None}
    tombstones |= {row["turn_id"] for row in doomed if row["turn_id"] is not None}
    await conn.execute(
        """INSERT INTO affinity.off_branch_turns (session_id, erased) VALUES ($1, $2)
           ON CONFLICT (session_id) DO UPDATE
           SET erased = ARRAY(SELECT DISTINCT unnest(off_branch_turns.erased || EXCLUDED.erased))""",
        session_id,
        sorted(tombstones),
    )
    return len(doomed)


async def _replace_excluded_turns(conn: asyncpg.Connection, session_id: uuid.UUID, turn_ids: Sequence[str]) -> None:
    """The session's excluded turns become exactly `turn_ids` (erased turns stay tombstoned)."""
    await conn.execute(
        """INSERT INTO affinity.off_branch_turns (session_id, excluded) VALUES ($1, $2)
           ON CONFLICT (session_id) DO UPDATE SET excluded = EXCLUDED.excluded""",
        session_id,
        list(turn_ids),
    )


async def project_branch(
    pool: asyncpg.Pool,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    replay: BranchReplay,
    *,
    events: Sequence[EventRef],
    excluded_turn_ids: Sequence[str],
    erase: Sequence[EventRef],
    dry_run: bool,
    now: datetime | None = None,
) -> BranchOutcome:
    """Under the row lock: read the branch's events, `replay` them from the session's starting vector and,
    unless `dry_run`, erase `erase`, make `excluded_turn_ids` the session's excluded turns and write the
    branch's state (the one write: version + 1, NOTIFY). An event both on the branch and to erase is erased
    (deleting a reply erases its turn while the user message it answered stays on the branch)."""
    async with locked_session(pool, session_id, user_id, now) as session:
        before = session.state
        start = AffinityVector.from_mapping(session.row["start_vector"])
        doomed = await _named_events(session.conn, session_id, erase)
        named = await _named_events(session.conn, session_id, events)
        branch = _in_branch_order(named, events, {row["id"] for row in doomed})
        change = replay(before, start, session.row["started_at"], branch)
        if dry_run:
            projected = replace(before, vector=change.vector, book=change.book, updated_at=before.read_at)
            return BranchOutcome(before, projected, len(branch), 0)
        erased = await _erase_events(session.conn, session_id, doomed, erase)
        await _replace_excluded_turns(session.conn, session_id, excluded_turn_ids)
        outcome = await session.write(change)
        return BranchOutcome(before, outcome.state, len(branch), erased)


# --- deletion ------------------------------------------------------------------------------------


async def delete_user_data(pool: asyncpg.Pool, user_id: uuid.UUID, instance_id: uuid.UUID | None) -> int:
    """Hard-delete a user's vectors, events and off-branch turns (of one persona instance if given) → rows deleted.
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
        off_branch = await conn.execute("DELETE FROM affinity.off_branch_turns WHERE session_id = ANY($1::uuid[])", ids)
        vectors = await conn.execute("DELETE FROM affinity.vectors WHERE session_id = ANY($1::uuid[])", ids)
        for session_id in ids:
            payload = {"deleted": True, "session_id": str(session_id)}
            await conn.execute("SELECT pg_notify($1, $2)", CHANGES_CHANNEL, json.dumps(payload))
        return sum(int(result.split()[-1]) for result in (events, off_branch, vectors))


async def event_effective_deltas(db: Executor, event_id: uuid.UUID) -> dict[str, float]:
    """What an event changed, per axis it named."""
    deltas = await db.fetchval("SELECT effective_deltas FROM affinity.events WHERE id = $1", event_id)
    return dict(deltas or {})
