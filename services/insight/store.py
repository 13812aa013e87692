"""asyncpg queries for the `insight` schema: profiles (JSONB + typed, indexed query columns),
extracted turns, extraction events and snapshots."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg

from services.insight.domain import FieldUpdate, Profile, ProfileQuery, merge_profile, queryable_columns

Stage = Literal["rules", "facts", "fields"]
Status = Literal["ok", "empty", "parse_error", "upstream_error"]
SNAPSHOT_LOCK_NAMESPACE = 0x494E5348  # "INSH": pg_advisory_xact_lock(namespace, hash of the firing)


@dataclass(frozen=True)
class ProfileRow:
    user_id: uuid.UUID
    insights: Profile
    training_level: float
    updated_at: datetime | None


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


def _profile_row(row: asyncpg.Record) -> ProfileRow:
    return ProfileRow(
        user_id=row["user_id"],
        insights=row["insights"],
        training_level=float(row["training_level"]),
        updated_at=row["updated_at"],
    )


async def get_profile(pool: asyncpg.Pool, user_id: uuid.UUID) -> ProfileRow | None:
    row = await pool.fetchrow(
        "SELECT user_id, insights, training_level, updated_at FROM insight.profiles WHERE user_id = $1", user_id
    )
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
    """Merge under the row lock; the JSONB and the typed query columns are written in one UPDATE."""
    await conn.execute("INSERT INTO insight.profiles (user_id) VALUES ($1) ON CONFLICT DO NOTHING", user_id)
    row = await conn.fetchrow(
        "SELECT insights, training_level FROM insight.profiles WHERE user_id = $1 FOR UPDATE", user_id
    )
    current: Profile = row["insights"]
    merged = merge_profile(current, updates, now)
    changed = [name for name, entry in merged.items() if current.get(name) != entry]
    if not changed:
        return MergeOutcome([], float(row["training_level"]))
    columns = queryable_columns(merged)
    await conn.execute(
        """UPDATE insight.profiles SET insights = $2, training_level = $3, city = $4, occupation = $5, mbti = $6,
               interests = $7, updated_at = now()
           WHERE user_id = $1""",
        user_id,
        merged,
        columns["training_level"],
        columns["city"],
        columns["occupation"],
        columns["mbti"],
        columns["interests"],
    )
    return MergeOutcome(changed, columns["training_level"])


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
        f"SELECT user_id, insights, training_level, updated_at FROM insight.profiles WHERE {where} "
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
    """Hard-delete the user's profile, snapshots, extraction events and extracted turns; rows deleted."""
    deleted = 0
    async with pool.acquire() as conn, conn.transaction():
        for table in ("profiles", "snapshots", "extraction_events", "extracted_turns"):
            result = await conn.execute(f"DELETE FROM insight.{table} WHERE user_id = $1", user_id)
            deleted += int(result.split()[-1])
    return deleted
