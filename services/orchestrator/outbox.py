"""The post-process worker: delivers outbox jobs to affinity / memory / insight.

At-least-once: jobs are claimed with `FOR UPDATE SKIP LOCKED` and a lease (a crashed worker's job
becomes due again), retried with exponential backoff, and parked as `dead` after `max_attempts` —
never silently dropped. Receivers deduplicate on the turn id, so the effect is exactly once.
Each job carries the turn's trace context, so its spans land in the turn's trace.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import asyncpg
import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject

from .peers import Peers, payload_to_request

log = logging.getLogger("rapport.outbox")

LEASE_SECONDS = 120
DELIVERY_TIMEOUT = 60.0  # LLM-backed extraction may take a while; the lease outlives it


class OutboxMetrics:
    """Post-process queue depth (by status), retries, dead jobs and lag (reply → delivered)."""

    def __init__(self) -> None:
        from services.servicekit.telemetry import meter

        m = meter("rapport.outbox")
        self.retries = m.create_counter("rapport.post_process.retries")
        self.dead = m.create_counter("rapport.post_process.dead")
        self.lag_seconds = m.create_histogram("rapport.post_process.lag", unit="s")
        self.depth: dict[str, int] = {}
        m.create_observable_gauge("rapport.post_process.queue_depth", callbacks=[self._observe_depth])

    def _observe_depth(self, options):  # type: ignore[no-untyped-def]
        from opentelemetry.metrics import Observation

        return [Observation(count, {"status": status}) for status, count in self.depth.items()]


METRICS = OutboxMetrics()


def backoff_seconds(attempts: int, base: float = 0.5, cap: float = 300.0) -> float:
    """Delay before attempt `attempts + 1`: base·2^(attempts−1), capped."""
    return min(cap, base * (2 ** max(0, attempts - 1)))


def current_trace_context() -> dict[str, str]:
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


@dataclass
class OutboxWorker:
    pool: asyncpg.Pool
    peers: Peers
    batch_size: int = 32
    max_attempts: int = 10
    poll_seconds: float = 1.0
    backoff_base: float = 0.5
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    tracer: trace.Tracer = field(default_factory=lambda: trace.get_tracer("rapport.outbox"))

    def notify(self) -> None:
        self.wake.set()

    async def run(self) -> None:
        while True:
            METRICS.depth = await outbox_counts(self.pool)
            delivered = await self.deliver_due()
            if delivered:
                continue
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=self.poll_seconds)
            except TimeoutError:
                pass

    async def claim(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """WITH due AS (
                   SELECT id FROM chat.outbox WHERE status = 'pending' AND next_attempt_at <= now()
                   ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
               UPDATE chat.outbox o SET attempts = o.attempts + 1,
                   next_attempt_at = now() + make_interval(secs => $2)
               FROM due WHERE o.id = due.id
               RETURNING o.id, o.turn_id, o.target, o.payload, o.trace_context, o.attempts""",
            self.batch_size,
            LEASE_SECONDS,
        )

    async def deliver_due(self) -> int:
        jobs = await self.claim()
        if jobs:
            await asyncio.gather(*(self.deliver(job) for job in jobs))
        return len(jobs)

    async def deliver(self, job: asyncpg.Record) -> None:
        parent = extract(job["trace_context"] or {})
        token = otel_context.attach(parent)
        try:
            with self.tracer.start_as_current_span(
                f"post_process {job['target']}",
                attributes={"rapport.turn_id": job["turn_id"], "rapport.attempt": job["attempts"]},
            ):
                rpc, request_type = self.peers.post_process_call(job["target"])
                await rpc(payload_to_request(job["payload"], request_type), timeout=DELIVERY_TIMEOUT)
        except (TimeoutError, grpc.aio.AioRpcError, OSError) as error:
            await self._failed(job, _describe(error))
        except Exception as error:  # a bug must not kill the worker: park the job visibly instead
            log.exception("post-process job %s failed unexpectedly", job["id"])
            await self._failed(job, f"{type(error).__name__}: {error}")
        else:
            lag = await self.pool.fetchval(
                "UPDATE chat.outbox SET status = 'done', done_at = now(), last_error = NULL WHERE id = $1 "
                "RETURNING extract(epoch FROM done_at - created_at)",
                job["id"],
            )
            METRICS.lag_seconds.record(float(lag or 0.0), {"target": job["target"]})
        finally:
            otel_context.detach(token)

    async def _failed(self, job: asyncpg.Record, reason: str) -> None:
        attempts = job["attempts"]
        if attempts >= self.max_attempts:
            METRICS.dead.add(1, {"target": job["target"]})
            log.error(
                "post-process job %s (%s, turn %s) is dead after %d attempts: %s",
                job["id"],
                job["target"],
                job["turn_id"],
                attempts,
                reason,
            )
            await self.pool.execute(
                "UPDATE chat.outbox SET status = 'dead', last_error = $2 WHERE id = $1", job["id"], reason
            )
            return
        delay = backoff_seconds(attempts, self.backoff_base)
        METRICS.retries.add(1, {"target": job["target"]})
        log.warning(
            "post-process job %s (%s) failed (attempt %d), retrying in %.1fs: %s",
            job["id"],
            job["target"],
            attempts,
            delay,
            reason,
        )
        await self.pool.execute(
            "UPDATE chat.outbox SET next_attempt_at = now() + make_interval(secs => $2), last_error = $3 WHERE id = $1",
            job["id"],
            delay,
            reason,
        )


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"


async def outbox_counts(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT status, count(*) AS n FROM chat.outbox GROUP BY status")
    return {row["status"]: int(row["n"]) for row in rows}


async def list_jobs(pool: asyncpg.Pool, status: str, limit: int = 50) -> list[asyncpg.Record]:
    """Jobs of one status, newest first (the admin listing of `rapport outbox`)."""
    return await pool.fetch(
        "SELECT id, turn_id, target, attempts, last_error, created_at FROM chat.outbox WHERE status = $1 "
        "ORDER BY created_at DESC LIMIT $2",
        status,
        limit,
    )


async def retry_dead_jobs(pool: asyncpg.Pool) -> int:
    """Put dead jobs back in the queue (after the cause is fixed); receivers are idempotent by turn id."""
    result = await pool.execute(
        "UPDATE chat.outbox SET status = 'pending', attempts = 0, next_attempt_at = now() WHERE status = 'dead'"
    )
    return int(result.split()[-1])
