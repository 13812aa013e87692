"""The post-process outbox: jobs written with the turn's end, claimed with `FOR UPDATE SKIP LOCKED` under a
lease, retried with backoff, parked as dead. A job's request is the peer's protobuf request, serialized."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from google.protobuf.message import Message

from . import conversations
from .replicas import live_replica
from .rows import Conn, rows_to


@dataclass(frozen=True)
class OutboxJob:
    """A job to write: the peer (`affinity`, `memory`, `insight`), the request it is sent, and which of the
    peer's calls takes it (`post_process`: a turn's ApplyTurn / IngestTurn / ExtractTurn)."""

    target: str
    request: Message
    call: str = "post_process"


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    turn_id: str  # the job's key: its turn, or the event that made it
    target: str
    call: str
    request: bytes | None  # the serialized request
    payload: dict[str, Any] | None  # the request as JSON, for jobs written before requests were serialized
    trace_context: dict[str, str]
    attempts: int
    created_at: datetime
    session_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None


@dataclass(frozen=True)
class JobListing:
    id: int
    turn_id: str
    target: str
    attempts: int
    last_error: str | None
    created_at: datetime


async def insert_jobs(
    conn: Conn,
    *,
    turn_id: str,
    user_id: uuid.UUID,
    session_id: uuid.UUID,
    jobs: Sequence[OutboxJob],
    trace_context: dict[str, str],
) -> None:
    """Idempotent by (key, target, call)."""
    if not jobs:
        return
    await conn.executemany(
        """INSERT INTO chat.outbox (turn_id, target, call, request, user_id, session_id, trace_context)
           VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (turn_id, target, call) DO NOTHING""",
        [
            (turn_id, job.target, job.call, job.request.SerializeToString(), user_id, session_id, trace_context)
            for job in jobs
        ],
    )


async def claim(
    conn: Conn, batch_size: int, lease_seconds: float, claimed_by: uuid.UUID | None = None
) -> list[ClaimedJob]:
    """Due jobs, each leased for `lease_seconds` (a crashed worker's job becomes due again) by the replica
    `claimed_by`, and counted as an attempt. A session's jobs for one peer are delivered in order: a job waits
    while an earlier one is pending."""
    rows = await conn.fetch(
        """WITH due AS (
               SELECT o.id FROM chat.outbox o WHERE o.status = 'pending' AND o.next_attempt_at <= now()
               AND NOT EXISTS (SELECT 1 FROM chat.outbox e WHERE e.session_id = o.session_id
                               AND e.target = o.target AND e.status = 'pending' AND e.id < o.id)
               ORDER BY o.next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
           UPDATE chat.outbox o SET attempts = o.attempts + 1,
               next_attempt_at = now() + make_interval(secs => $2), claimed_until = now() + make_interval(secs => $2),
               claimed_by = $3
           FROM due WHERE o.id = due.id
           RETURNING o.id, o.turn_id, o.target, o.call, o.request, o.payload, o.trace_context, o.attempts,
                     o.created_at, o.session_id, o.user_id""",
        batch_size,
        lease_seconds,
        claimed_by,
    )
    return rows_to(ClaimedJob, rows)


async def release_abandoned_claims(
    conn: Conn, *, replica_id: uuid.UUID, in_flight: Sequence[int], lease_seconds: float
) -> int:
    """Claimed jobs nobody delivers any more are due again now: those of a replica that stopped or whose
    heartbeat is older than the lease, and those of this replica that it is not delivering (its worker lost
    them, e.g. in a database outage) → how many."""
    result = await conn.execute(
        """UPDATE chat.outbox o SET claimed_until = NULL, claimed_by = NULL, next_attempt_at = now()
           WHERE o.status = 'pending' AND o.claimed_until > now() AND o.claimed_by IS NOT NULL
             AND ((o.claimed_by = $1 AND NOT (o.id = ANY($2::bigint[])))
                  OR (o.claimed_by <> $1 AND NOT """
        + live_replica("o.claimed_by", "$3")
        + "))",
        replica_id,
        list(in_flight),
        lease_seconds,
    )
    return int(result.split()[-1])


async def mark_done(pool: asyncpg.Pool, job: ClaimedJob, effects: dict[str, Any] | None = None) -> float:
    """The job is delivered; its effects (when given) become an `effects` event of its session, in the same
    transaction → the job's lag: seconds from its creation (the reply) to delivery."""
    async with pool.acquire() as conn, conn.transaction():
        lag = await conn.fetchval(
            "UPDATE chat.outbox SET status = 'done', done_at = now(), last_error = NULL WHERE id = $1 "
            "RETURNING extract(epoch FROM done_at - created_at)",
            job.id,
        )
        if effects is not None and job.session_id is not None and job.user_id is not None:
            if await conn.fetchval("SELECT 1 FROM chat.sessions WHERE id = $1", job.session_id):  # not deleted
                await conversations.append_event(
                    conn,
                    session_id=job.session_id,
                    user_id=job.user_id,
                    kind="effects",
                    actor="system",
                    data={"turn_id": job.turn_id, "target": job.target, **effects},
                )
    return float(lag or 0.0)


async def retry_later(conn: Conn, job_id: int, delay_seconds: float, reason: str) -> None:
    await conn.execute(
        "UPDATE chat.outbox SET next_attempt_at = now() + make_interval(secs => $2), last_error = $3, "
        "claimed_until = NULL WHERE id = $1",
        job_id,
        delay_seconds,
        reason,
    )


async def park_dead(conn: Conn, job_id: int, reason: str) -> None:
    await conn.execute("UPDATE chat.outbox SET status = 'dead', last_error = $2 WHERE id = $1", job_id, reason)


async def counts(conn: Conn) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM chat.outbox GROUP BY status")
    return {row["status"]: int(row["n"]) for row in rows}


async def list_jobs(conn: Conn, status: str, limit: int = 50) -> list[JobListing]:
    """Jobs of one status, newest first (the admin listing of `rapport outbox`)."""
    rows = await conn.fetch(
        "SELECT id, turn_id, target, attempts, last_error, created_at FROM chat.outbox WHERE status = $1 "
        "ORDER BY created_at DESC LIMIT $2",
        status,
        limit,
    )
    return rows_to(JobListing, rows)


async def retry_dead(conn: Conn) -> int:
    """Put dead jobs back in the queue (after the cause is fixed); receivers are idempotent by turn id."""
    result = await conn.execute(
        "UPDATE chat.outbox SET status = 'pending', attempts = 0, next_attempt_at = now() WHERE status = 'dead'"
    )
    return int(result.split()[-1])


async def delete_pending_for_user(conn: Conn, user_id: uuid.UUID) -> None:
    """Pending jobs of a user (they would recreate what "delete my data" erases)."""
    await conn.execute(
        "DELETE FROM chat.outbox WHERE status = 'pending' AND (user_id = $1 OR payload->>'user_id' = $2)",
        user_id,
        str(user_id),
    )


async def delete_for_user(conn: Conn, user_id: uuid.UUID) -> int:
    """Every job of a user, whatever its state: their requests hold the user's words."""
    result = await conn.execute(
        "DELETE FROM chat.outbox WHERE user_id = $1 OR payload->>'user_id' = $2", user_id, str(user_id)
    )
    return int(result.split()[-1])


async def prune_done(conn: Conn, retention_seconds: float) -> int:
    """Delivered jobs older than the retention period are removed (the effects live with their peers)."""
    result = await conn.execute(
        "DELETE FROM chat.outbox WHERE status = 'done' AND done_at < now() - make_interval(secs => $1)",
        retention_seconds,
    )
    return int(result.split()[-1])


async def due_now(conn: Conn, target: str) -> int:
    """The target's waiting jobs become due at once (its peer is back) → how many."""
    result = await conn.execute(
        "UPDATE chat.outbox SET next_attempt_at = now() WHERE status = 'pending' AND target = $1 "
        "AND attempts > 0 AND next_attempt_at > now() AND (claimed_until IS NULL OR claimed_until < now())",
        target,
    )
    return int(result.split()[-1])
