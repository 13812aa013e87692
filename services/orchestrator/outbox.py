"""The post-process worker: delivers outbox jobs to affinity / memory / insight.

At-least-once: jobs are claimed with `FOR UPDATE SKIP LOCKED` and a lease (a crashed worker's job
becomes due again), retried with exponential backoff, and parked as `dead` after `max_attempts` —
never silently dropped. Receivers deduplicate on the turn id, so the effect is exactly once.
Each job carries the turn's trace context, so its spans land in the turn's trace.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
from google.protobuf.json_format import ParseDict
from google.protobuf.message import Message
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagate import extract, inject

from services.servicekit.telemetry import meter

from .leases import LEASE_SECONDS as REPLICA_LEASE_SECONDS
from .peers import Peers
from .store import outbox as outbox_store

log = logging.getLogger("rapport.outbox")

LEASE_SECONDS = 120  # outlives the POST_PROCESS call timeout (peers.py)


class OutboxMetrics:
    """Post-process queue depth (by status), retries, dead jobs and lag (reply → delivered)."""

    def __init__(self) -> None:
        m = meter("rapport.outbox")
        self.retries = m.create_counter("rapport.post_process.retries")
        self.dead = m.create_counter("rapport.post_process.dead")
        self.lag_seconds = m.create_histogram("rapport.post_process.lag", unit="s")
        self.depth: dict[str, int] = {}
        m.create_observable_gauge("rapport.post_process.queue_depth", callbacks=[self._observe_depth])

    def _observe_depth(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(count, {"status": status}) for status, count in self.depth.items()]


METRICS = OutboxMetrics()


def backoff_seconds(attempts: int, base: float = 0.5, cap: float = 300.0) -> float:
    """Delay before attempt `attempts + 1`: base·2^(attempts−1), capped."""
    return float(min(cap, base * (2 ** max(0, attempts - 1))))


def current_trace_context() -> dict[str, str]:
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


@dataclass
class OutboxWorker:
    """Delivers due jobs. A job is retried with exponential backoff up to `backoff_cap` for `horizon_seconds`
    (default a day; or `max_attempts` attempts when set) before it is parked dead — and retried at once when its
    peer comes back (`watch_reconnects`). Delivered jobs are pruned after `retention_seconds`."""

    pool: asyncpg.Pool
    peers: Peers
    batch_size: int = 32
    max_attempts: int | None = None
    poll_seconds: float = 1.0
    backoff_base: float = 0.5
    backoff_cap: float = 300.0
    horizon_seconds: float = 86_400.0
    retention_seconds: float = 7 * 86_400.0
    prune_every_seconds: float = 600.0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    tracer: trace.Tracer = field(default_factory=lambda: trace.get_tracer("rapport.outbox"))
    # Told the queue's counts by status at every round (the orchestrator reports dead jobs in its health).
    report_counts: Callable[[dict[str, int]], Awaitable[None]] | None = None
    # The replica delivering (its turn-lease id): claims of stopped or silent replicas, and those this one lost,
    # are released at most every `release_every_seconds`. None: claims only expire (after LEASE_SECONDS).
    replica_id: uuid.UUID | None = None
    replica_lease_seconds: float = REPLICA_LEASE_SECONDS
    release_every_seconds: float = 2.0
    in_flight: set[int] = field(default_factory=set)

    def notify(self) -> None:
        self.wake.set()

    async def run(self) -> None:
        next_prune = next_release = 0.0
        while True:
            if self.replica_id is not None and asyncio.get_running_loop().time() >= next_release:
                released = await outbox_store.release_abandoned_claims(
                    self.pool,
                    replica_id=self.replica_id,
                    in_flight=sorted(self.in_flight),
                    lease_seconds=self.replica_lease_seconds,
                )
                if released:
                    log.warning("%d post-process jobs claimed by a stopped replica (or lost) are due again", released)
                next_release = asyncio.get_running_loop().time() + self.release_every_seconds
            if asyncio.get_running_loop().time() >= next_prune:
                pruned = await outbox_store.prune_done(self.pool, self.retention_seconds)
                if pruned:
                    log.info("pruned %d delivered post-process jobs older than the retention", pruned)
                next_prune = asyncio.get_running_loop().time() + self.prune_every_seconds
            METRICS.depth = await outbox_store.counts(self.pool)
            if self.report_counts is not None:
                await self.report_counts(METRICS.depth)
            delivered = await self.deliver_due()
            if delivered:
                continue
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=self.poll_seconds)
            except TimeoutError:
                pass

    async def deliver_due(self) -> int:
        jobs = await outbox_store.claim(self.pool, self.batch_size, LEASE_SECONDS, self.replica_id)
        if jobs:
            await asyncio.gather(*(self.deliver(job) for job in jobs))
        return len(jobs)

    async def deliver(self, job: outbox_store.ClaimedJob) -> None:
        parent = extract(job.trace_context or {})
        token = otel_context.attach(parent)
        self.in_flight.add(job.id)
        try:
            with self.tracer.start_as_current_span(
                f"{job.call} {job.target}",
                attributes={"rapport.turn_id": job.turn_id, "rapport.attempt": job.attempts},
            ):
                deliver, request_type = self.peers.outbox_call(job.target, job.call)
                response = await deliver(job_request(job, request_type))
        except (TimeoutError, grpc.aio.AioRpcError, OSError) as error:
            await self._failed(job, _describe(error))
        except Exception as error:  # a bug must not kill the worker: park the job visibly instead
            log.exception("post-process job %s failed unexpectedly", job.id)
            await self._failed(job, f"{type(error).__name__}: {error}")
        else:
            lag = await outbox_store.mark_done(self.pool, job, effects(job, response))
            METRICS.lag_seconds.record(lag, {"target": job.target})
        finally:
            self.in_flight.discard(job.id)
            otel_context.detach(token)

    async def watch_reconnects(self) -> None:
        """When a peer's channel becomes ready again (it restarted, or the network came back), its waiting jobs
        are due at once instead of at the end of their backoff."""
        await asyncio.gather(*(self._watch(target, channel) for target, channel in self.peers.channels.items()))

    async def _watch(self, target: str, channel: grpc.aio.Channel) -> None:
        state = channel.get_state(try_to_connect=False)
        while True:
            await channel.wait_for_state_change(state)
            previous, state = state, channel.get_state(try_to_connect=False)
            if state == grpc.ChannelConnectivity.READY and previous != grpc.ChannelConnectivity.READY:
                resumed = await outbox_store.due_now(self.pool, target)
                if resumed:
                    log.info("%s is back: %d waiting post-process jobs are due now", target, resumed)
                    self.notify()

    def _gives_up(self, job: outbox_store.ClaimedJob) -> bool:
        if self.max_attempts is not None and job.attempts >= self.max_attempts:
            return True
        return (datetime.now(UTC) - job.created_at).total_seconds() >= self.horizon_seconds

    async def _failed(self, job: outbox_store.ClaimedJob, reason: str) -> None:
        if self._gives_up(job):
            METRICS.dead.add(1, {"target": job.target})
            log.error(
                "post-process job %s (%s, turn %s) is dead after %d attempts: %s",
                job.id,
                job.target,
                job.turn_id,
                job.attempts,
                reason,
            )
            await outbox_store.park_dead(self.pool, job.id, reason)
            return
        delay = backoff_seconds(job.attempts, self.backoff_base, self.backoff_cap)
        METRICS.retries.add(1, {"target": job.target})
        log.warning(
            "post-process job %s (%s) failed (attempt %d), retrying in %.1fs: %s",
            job.id,
            job.target,
            job.attempts,
            delay,
            reason,
        )
        await outbox_store.retry_later(self.pool, job.id, delay, reason)


def effects(job: outbox_store.ClaimedJob, response: Any) -> dict[str, Any] | None:
    """What a turn's post-process left behind (for the conversation's event log): the affinity event, the
    memories written, the profile fields updated."""
    if job.call != "post_process":
        return None
    if job.target == "affinity":
        return {"affinity_event_id": response.event_id, "applied": response.applied}
    if job.target == "memory":
        return {"memory_ids": list(response.memory_ids), "applied": response.applied}
    return {"updated_fields": list(response.updated_fields), "applied": response.applied}


def job_request(job: outbox_store.ClaimedJob, request_type: type[Message]) -> Message:
    """The job's request: serialized since migration 003, as JSON before."""
    if job.request is not None:
        return request_type.FromString(job.request)
    return ParseDict(job.payload or {}, request_type(), ignore_unknown_fields=True)


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"


async def outbox_counts(pool: asyncpg.Pool) -> dict[str, int]:
    return await outbox_store.counts(pool)


async def list_jobs(pool: asyncpg.Pool, status: str, limit: int = 50) -> list[outbox_store.JobListing]:
    """Jobs of one status, newest first (the admin listing of `rapport outbox`)."""
    return await outbox_store.list_jobs(pool, status, limit)


async def retry_dead_jobs(pool: asyncpg.Pool) -> int:
    """Put dead jobs back in the queue (after the cause is fixed); receivers are idempotent by turn id."""
    return await outbox_store.retry_dead(pool)
