"""asyncpg queries for the `insight` schema: profiles (JSONB + typed, indexed query columns),
extracted turns, extraction events and snapshots."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg

from services.insight.domain import (
    FieldUpdate,
    Profile,
    ProfileQuery,
    erase_sources,
    hidden_fields,
    merge_profile,
    profile_sources,
    queryable_columns,
    training_level,
    visible_profile,
    without_erased_sources,
)

Stage = Literal["rules", "facts", "fields"]
Status = Literal["ok", "empty", "parse_error", "upstream_error"]
SNAPSHOT_LOCK_NAMESPACE = 0x494E5348  # "INSH": pg_advisory_xact_lock(namespace, hash of the firing)
USER_LOCK_NAMESPACE = 0x494E5355  # "INSU": pg_advisory_xact_lock(namespace, hashtext(user_id))


@dataclass(frozen=True)
class ProfileRow:
    """A profile as the active branches see it: `insights` without the fields whose every source message is
    hidden (listed in `hidden_fields`); `training_level` is the visible profile's."""

    user_id: uuid.UUID
    insights: Profile
    training_level: float
    updated_at: datetime | None
    hidden_fields: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SnapshotRow:
    user_id: uuid.UUID
    captured_at: datetime
    insights: Profile
    training_level: float


@dataclass(frozen=True)
class ExtractionEvent:
    """One stage of one extraction run, as recorded in insight.extraction_events."""

    stage: Stage
    status: Status
    payload: dict[str, Any]
    model: str = ""
    usage: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MergeOutcome:
    """What an applied extraction changed."""

    updated_fields: list[str]
    training_level: float


# A profile row with the hidden message ids among its sources (index probes on the user's hidden messages).
_PROFILE_COLUMNS = """p.user_id, p.insights, p.training_level, p.updated_at,
    ARRAY(SELECT h.message_id FROM insight.hidden_messages h WHERE h.user_id = p.user_id AND h.message_id = ANY(
        ARRAY(SELECT jsonb_array_elements_text(e.value->'sources') FROM jsonb_each(p.insights) e
              WHERE jsonb_typeof(e.value->'sources') = 'array'))) AS hidden_sources"""


def _profile_row(row: asyncpg.Record) -> ProfileRow:
    hidden = set(row["hidden_sources"])
    return ProfileRow(
        user_id=row["user_id"],
        insights=visible_profile(row["insights"], hidden),
        training_level=float(row["training_level"]),
        updated_at=row["updated_at"],
        hidden_fields=hidden_fields(row["insights"], hidden),
    )


async def get_profile(pool: asyncpg.Pool, user_id: uuid.UUID) -> ProfileRow | None:
    row = await pool.fetchrow(f"SELECT {_PROFILE_COLUMNS} FROM insight.profiles p WHERE p.user_id = $1", user_id)
    return None if row is None else _profile_row(row)


async def turn_extracted(pool: asyncpg.Pool, turn_id: str) -> bool:
    return bool(
        await pool.fetchval("SELECT EXISTS (SELECT 1 FROM insight.extracted_turns WHERE turn_id = $1)", turn_id)
    )


async def record_events(
    conn: asyncpg.Connection | asyncpg.Pool, user_id: uuid.UUID, turn_id: str, events: Sequence[ExtractionEvent]
) -> None:
    await conn.executemany(
        """INSERT INTO insight.extraction_events (user_id, turn_id, stage, status, payload, model, usage)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        [(user_id, turn_id, e.stage, e.status, e.payload, e.model, e.usage) for e in events],
    )


async def _merge_locked(
    conn: asyncpg.Connection, user_id: uuid.UUID, updates: Sequence[FieldUpdate], now: datetime
) -> MergeOutcome:
    """Merge under the row lock; the JSONB and the typed query columns are written in one UPDATE. Erased
    messages are dropped from the updates' sources first."""
    await lock_user(conn, user_id)
    updates = without_erased_sources(updates, await _erased_among(conn, user_id, _update_sources(updates)))
    await conn.execute("INSERT INTO insight.profiles (user_id) VALUES ($1) ON CONFLICT DO NOTHING", user_id)
    row = await conn.fetchrow(
        "SELECT insights, training_level FROM insight.profiles WHERE user_id = $1 FOR UPDATE", user_id
    )
    current: Profile = row["insights"]
    merged = merge_profile(current, updates, now)
    changed = [name for name, entry in merged.items() if current.get(name) != entry]
    if not changed:
        return MergeOutcome([], float(row["training_level"]))
    level = await _write_profile(conn, user_id, merged)
    return MergeOutcome(changed, level)


async def _write_profile(conn: asyncpg.Connection, user_id: uuid.UUID, profile: Profile) -> float:
    """Store the profile; the typed query columns and training level are the visible profile's (fields whose
    every source is hidden are left out) → that training level."""
    hidden = await _hidden_among(conn, user_id, profile_sources(profile))
    columns = queryable_columns(visible_profile(profile, hidden))
    await conn.execute(
        """UPDATE insight.profiles SET insights = $2, training_level = $3, city = $4, occupation = $5, mbti = $6,
               interests = $7, updated_at = now()
           WHERE user_id = $1""",
        user_id,
        profile,
        columns["training_level"],
        columns["city"],
        columns["occupation"],
        columns["mbti"],
        columns["interests"],
    )
    return float(columns["training_level"])


async def apply_extraction(
    pool: asyncpg.Pool,
    *,
    user_id: uuid.UUID,
    turn_id: str,
    updates: Sequence[FieldUpdate],
    events: Sequence[ExtractionEvent],
    now: datetime,
) -> MergeOutcome | None:
    """Claim the turn, record its events and merge its updates — one transaction. None when the turn
    was already extracted (a redelivery, or a concurrent duplicate that won): nothing is written."""
    async with pool.acquire() as conn, conn.transaction():
        claimed = await conn.fetchval(
            """INSERT INTO insight.extracted_turns (turn_id, user_id) VALUES ($1, $2)
               ON CONFLICT (turn_id) DO NOTHING RETURNING turn_id""",
            turn_id,
            user_id,
        )
        if claimed is None:
            return None
        await record_events(conn, user_id, turn_id, events)
        if not updates:
            level = await conn.fetchval("SELECT training_level FROM insight.profiles WHERE user_id = $1", user_id)
            return MergeOutcome([], float(level or 0))
        outcome = await _merge_locked(conn, user_id, updates, now)
        await conn.execute(
            "UPDATE insight.extracted_turns SET updated_fields = $2 WHERE turn_id = $1", turn_id, outcome.updated_fields
        )
        return outcome


def profile_query_sql(query: ProfileQuery) -> tuple[str, list[Any]]:
    """SQL + arguments for a validated query: only the given conditions, each on an indexed column."""
    conditions: list[str] = []
    args: list[Any] = []

    def condition(sql: str, value: Any) -> None:
        args.append(value)
        conditions.append(sql.format(f"${len(args)}"))

    if query.city is not None:
        condition("city = {}", query.city)
    if query.occupation is not None:
        condition("occupation = {}", query.occupation)
    if query.mbti is not None:
        condition("mbti = {}", query.mbti)
    if query.interests_all:
        condition("interests @> {}::text[]", list(query.interests_all))
    if query.min_training_level:
        condition("training_level >= {}", query.min_training_level)
    where = " AND ".join(conditions) or "true"
    args.append(query.limit)
    sql = (
        f"SELECT {_PROFILE_COLUMNS} FROM insight.profiles p WHERE {where} "
        f"ORDER BY training_level DESC, user_id LIMIT ${len(args)}"
    )
    return sql, args


async def query_profiles(pool: asyncpg.Pool, query: ProfileQuery) -> list[ProfileRow]:
    sql, args = profile_query_sql(query)
    return [_profile_row(row) for row in await pool.fetch(sql, *args)]


async def capture_snapshots(pool: asyncpg.Pool, captured_at: datetime) -> int:
    """Copy every profile as of the firing `captured_at`; returns the rows written.

    Replicas firing together serialise on a transaction-level advisory lock keyed by the firing (so
    two large INSERT … SELECTs never interleave); the unique (user_id, captured_at) then makes the
    later run write nothing. If the first run fails, the second still writes the firing."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashint8(extract(epoch FROM $2::timestamptz)::bigint))",
            SNAPSHOT_LOCK_NAMESPACE,
            captured_at,
        )
        result = await conn.execute(
            """INSERT INTO insight.snapshots (user_id, captured_at, insights, training_level)
               SELECT user_id, $1, insights, training_level FROM insight.profiles
               ON CONFLICT (user_id, captured_at) DO NOTHING""",
            captured_at,
        )
        return int(result.split()[-1])


async def list_snapshots(pool: asyncpg.Pool, user_id: uuid.UUID, limit: int) -> list[SnapshotRow]:
    rows = await pool.fetch(
        """SELECT user_id, captured_at, insights, training_level FROM insight.snapshots
           WHERE user_id = $1 ORDER BY captured_at DESC LIMIT $2""",
        user_id,
        limit,
    )
    return [
        SnapshotRow(
            user_id=r["user_id"],
            captured_at=r["captured_at"],
            insights=r["insights"],
            training_level=float(r["training_level"]),
        )
        for r in rows
    ]


async def delete_user_data(pool: asyncpg.Pool, user_id: uuid.UUID) -> int:
    """Hard-delete the user's profile, snapshots, extraction events, extracted turns, hidden sets and erased
    messages; rows deleted."""
    deleted = 0
    async with pool.acquire() as conn, conn.transaction():
        for table in ("profiles", "snapshots", "extraction_events", "extracted_turns", *BRANCH_TABLES):
            result = await conn.execute(f"DELETE FROM insight.{table} WHERE user_id = $1", user_id)
            deleted += int(result.split()[-1])
    return deleted


# ---------------------------------------------------------------------------
# the active branch (issue 10)
#
# insight.hidden_messages: per (user, session), the messages off the conversation's active branch (replaced by
# SetHiddenMessages). A field whose every source is hidden in some session of the user is left out of what
# readers see (domain.visible_profile) and of the typed query columns; it is kept in `insights` and comes back
# when a source is visible again. insight.erased_messages: tombstones of surgically deleted messages.

BRANCH_TABLES = ("hidden_messages", "erased_messages")


async def lock_user(conn: asyncpg.Connection, user_id: uuid.UUID) -> None:
    """Serialize this transaction with every other profile write of the user (merges, hidden sets, erasures)."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", USER_LOCK_NAMESPACE, str(user_id))


def _update_sources(updates: Sequence[FieldUpdate]) -> set[str]:
    return {source for update in updates for source in update.source_message_ids}


async def _hidden_among(conn: asyncpg.Connection, user_id: uuid.UUID, message_ids: set[str]) -> set[str]:
    """Those of `message_ids` hidden in some session of the user."""
    if not message_ids:
        return set()
    rows = await conn.fetch(
        "SELECT DISTINCT message_id FROM insight.hidden_messages WHERE user_id = $1 AND message_id = ANY($2::text[])",
        user_id,
        sorted(message_ids),
    )
    return {row["message_id"] for row in rows}


async def _erased_among(conn: asyncpg.Connection, user_id: uuid.UUID, message_ids: set[str]) -> set[str]:
    if not message_ids:
        return set()
    rows = await conn.fetch(
        "SELECT message_id FROM insight.erased_messages WHERE user_id = $1 AND message_id = ANY($2::text[])",
        user_id,
        sorted(message_ids),
    )
    return {row["message_id"] for row in rows}


async def _refresh_query_columns(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[str]:
    """Recompute the typed query columns from the visible profile (after its hidden messages changed) → the
    hidden fields. The profile itself is unchanged."""
    row = await conn.fetchrow("SELECT insights FROM insight.profiles WHERE user_id = $1 FOR UPDATE", user_id)
    if row is None:
        return []
    hidden = await _hidden_among(conn, user_id, profile_sources(row["insights"]))
    columns = queryable_columns(visible_profile(row["insights"], hidden))
    await conn.execute(
        """UPDATE insight.profiles SET training_level = $2, city = $3, occupation = $4, mbti = $5, interests = $6
           WHERE user_id = $1""",
        user_id,
        columns["training_level"],
        columns["city"],
        columns["occupation"],
        columns["mbti"],
        columns["interests"],
    )
    return hidden_fields(row["insights"], hidden)


async def set_hidden_messages(
    pool: asyncpg.Pool, user_id: uuid.UUID, session_id: uuid.UUID, message_ids: Sequence[str]
) -> list[str]:
    """Make `message_ids` the session's hidden set → the profile fields hidden now."""
    wanted = set(message_ids)
    async with pool.acquire() as conn, conn.transaction():
        await lock_user(conn, user_id)
        rows = await conn.fetch(
            "SELECT message_id FROM insight.hidden_messages WHERE user_id = $1 AND session_id = $2", user_id, session_id
        )
        before = {row["message_id"] for row in rows}
        if before - wanted:
            await conn.execute(
                """DELETE FROM insight.hidden_messages WHERE user_id = $1 AND session_id = $2
                   AND message_id IN (SELECT unnest($3::text[]))""",
                user_id,
                session_id,
                list(before - wanted),
            )
        if wanted - before:
            await conn.execute(
                """INSERT INTO insight.hidden_messages (user_id, session_id, message_id)
                   SELECT $1, $2, unnest($3::text[])""",
                user_id,
                session_id,
                list(wanted - before),
            )
        return await _refresh_query_columns(conn, user_id)


@dataclass(frozen=True)
class ErasureOutcome:
    removed_fields: list[str]
    updated_fields: list[str]


async def erase_messages(
    pool: asyncpg.Pool, user_id: uuid.UUID, message_ids: Sequence[str], *, dry_run: bool
) -> ErasureOutcome:
    """Fields whose every source is among the messages are removed, the others lose them (profile and
    snapshots); the messages leave the hidden sets and are tombstoned. A dry run only reports the profile's."""
    erased = set(message_ids)
    async with pool.acquire() as conn, conn.transaction():
        await lock_user(conn, user_id)
        row = await conn.fetchrow("SELECT insights FROM insight.profiles WHERE user_id = $1 FOR UPDATE", user_id)
        erasure = erase_sources(row["insights"] if row else {}, erased)
        if dry_run:
            return ErasureOutcome(erasure.removed, erasure.updated)
        await conn.execute(
            "DELETE FROM insight.hidden_messages WHERE user_id = $1 AND message_id IN (SELECT unnest($2::text[]))",
            user_id,
            list(erased),
        )
        await conn.execute(
            """INSERT INTO insight.erased_messages (user_id, message_id) SELECT $1, unnest($2::text[])
               ON CONFLICT DO NOTHING""",
            user_id,
            list(erased),
        )
        if row is not None:
            if erasure.removed or erasure.updated:
                await _write_profile(conn, user_id, erasure.profile)
            else:
                await _refresh_query_columns(conn, user_id)  # erased ids left the hidden sets
        snapshots = await conn.fetch("SELECT id, insights FROM insight.snapshots WHERE user_id = $1", user_id)
        for snapshot in snapshots:
            cleaned = erase_sources(snapshot["insights"], erased)
            if cleaned.removed or cleaned.updated:
                await conn.execute(
                    "UPDATE insight.snapshots SET insights = $2, training_level = $3 WHERE id = $1",
                    snapshot["id"],
                    cleaned.profile,
                    training_level(cleaned.profile),
                )
        return ErasureOutcome(erasure.removed, erasure.updated)
