"""Dreaming-lite: distill idle sessions into memories (spec: memory.md, Dreaming-lite sweeper).

Each tick claims sessions idle for DREAMING_IDLE_SECS with turns past their high-water mark — one
`UPDATE … FOR UPDATE SKIP LOCKED` statement, so replicas never claim the same session; a claim older
than DREAMING_CLAIM_STALE_SECS is free again (its worker crashed). The new turns are distilled by
`domain.distill_transcript`, and the memories, the new mark and the released claim are committed in
one transaction that first checks the claim is still ours: two workers never both commit the same
turns. The same loop purges memories soft-deleted more than MEMORY_PURGE_AFTER_DAYS ago.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg

from services.memory import domain, store
from services.memory.embedders import Embedder
from services.servicekit.config import Env

log = logging.getLogger("rapport.memory.sweeper")


@dataclass(frozen=True)
class DreamingSettings:
    tick_secs: float  # DREAMING_TICK_SECS
    idle_secs: float  # DREAMING_IDLE_SECS
    claim_stale_secs: float  # DREAMING_CLAIM_STALE_SECS
    disabled: bool  # DREAMING_DISABLED
    batch: int  # DREAMING_BATCH: sessions claimed per tick
    purge_after_days: float  # MEMORY_PURGE_AFTER_DAYS

    @classmethod
    def from_env(cls, env: Env) -> DreamingSettings:
        return cls(
            tick_secs=env.float("DREAMING_TICK_SECS", 300.0, 0.01, 86_400.0),
            idle_secs=env.float("DREAMING_IDLE_SECS", 1800.0, 0.0, 30 * 86_400.0),
            claim_stale_secs=env.float("DREAMING_CLAIM_STALE_SECS", 600.0, 1.0, 86_400.0),
            disabled=env.bool("DREAMING_DISABLED", False),
            batch=env.int("DREAMING_BATCH", 20, 1, 1000),
            purge_after_days=env.float("MEMORY_PURGE_AFTER_DAYS", 30.0, 0.0, 3650.0),
        )


@dataclass(frozen=True)
class TickReport:
    claimed: int = 0
    distilled: int = 0  # sessions committed
    memories: int = 0
    lost_claims: int = 0
    failed: int = 0
    purged: int = 0


@dataclass(frozen=True)
class DistillResult:
    status: Literal["committed", "lost", "failed"]
    memories: int = 0


class DreamingSweeper:
    def __init__(
        self,
        pool: asyncpg.Pool,
        embedder: Embedder,
        settings: DreamingSettings,
        *,
        merge_threshold: float,
        worker: str | None = None,
    ) -> None:
        self.pool = pool
        self.embedder = embedder
        self.settings = settings
        self.merge_threshold = merge_threshold
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    async def run(self) -> None:
        """The background loop: a tick every DREAMING_TICK_SECS until cancelled."""
        while True:
            try:
                report = await self.tick()
                if report.claimed or report.purged:
                    log.info("dreaming tick: %s", report)
            except (asyncpg.PostgresError, OSError) as error:
                log.warning("dreaming tick failed, retrying next tick: %s", error)
            except Exception:  # never let the loop die silently: log it whole and try again next tick
                log.exception("dreaming tick failed unexpectedly, retrying next tick")
            await asyncio.sleep(self.settings.tick_secs)

    async def tick(self, now: datetime | None = None) -> TickReport:
        """One pass: purge expired soft-deletes, then (unless disabled) claim and distill idle sessions."""
        now = now or datetime.now(UTC)
        purged = await store.purge_deleted(self.pool, now - timedelta(days=self.settings.purge_after_days))
        if self.settings.disabled:
            return TickReport(purged=purged)
        claims = await self.claim(now)
        results = [await self.distill(claim, token) for claim, token in claims]
        return TickReport(
            claimed=len(claims),
            distilled=sum(r.status == "committed" for r in results),
            memories=sum(r.memories for r in results),
            lost_claims=sum(r.status == "lost" for r in results),
            failed=sum(r.status == "failed" for r in results),
            purged=purged,
        )

    async def claim(self, now: datetime) -> list[tuple[asyncpg.Record, uuid.UUID]]:
        """Claim idle sessions (committed at once); each claim carries this tick's token."""
        token = uuid.uuid4()
        rows = await store.claim_idle_sessions(
            self.pool,
            now=now,
            idle_secs=self.settings.idle_secs,
            stale_secs=self.settings.claim_stale_secs,
            limit=self.settings.batch,
            token=token,
        )
        return [(row, token) for row in rows]

    async def distill(self, claim: asyncpg.Record, token: uuid.UUID) -> DistillResult:
        """Distill one claimed session: committed (with the memories written), lost (another worker
        took the claim over; nothing written) or failed (claim released so the next tick retries)."""
        session_id, user_id = claim["session_id"], claim["user_id"]
        from_seq, to_seq = claim["distilled_seq"], claim["last_seq"]
        try:
            turns = await store.turns_after(self.pool, session_id, from_seq, to_seq)
            memories = await self._memories(claim, turns)
            result = await store.commit_distillation(
                self.pool,
                session_id=session_id,
                user_id=user_id,
                token=token,
                from_seq=from_seq,
                to_seq=to_seq,
                memories=memories,
                model=self.embedder.model,
                merge_threshold=self.merge_threshold,
                worker=self.worker,
            )
        except Exception:
            log.exception("distilling session %s failed; releasing the claim", session_id)
            await store.release_claim(self.pool, session_id, token)
            return DistillResult("failed")
        if result is None:
            log.info("claim on session %s was taken over by another worker; nothing written", session_id)
            return DistillResult("lost")
        return DistillResult("committed", len(result.memory_ids))

    async def _memories(self, claim: asyncpg.Record, turns: list[asyncpg.Record]) -> list[store.NewMemory]:
        messages: list[tuple[str, str, str]] = []
        occurred: dict[str, datetime] = {}
        persona_name = next((t["persona_name"] for t in reversed(turns) if t["persona_name"]), None)
        for turn in turns:
            messages.append((turn["user_message_id"], "user", turn["user_text"]))
            occurred[turn["user_message_id"]] = turn["occurred_at"]
            if turn["reply_text"]:
                messages.append((turn["reply_message_id"], "assistant", turn["reply_text"]))
                occurred[turn["reply_message_id"]] = turn["occurred_at"]
        texts = {message_id: content for message_id, _, content in messages}
        distilled = domain.distill_transcript(messages, persona_name)
        if not distilled:
            return []
        vectors = await self.embedder.embed([candidate.content for candidate, _ in distilled], "document")
        return [
            store.NewMemory(
                user_id=claim["user_id"],
                instance_id=claim["instance_id"] if candidate.layer == "relationship" else None,
                session_id=claim["session_id"],
                content=candidate.content,
                category=candidate.category,
                importance=candidate.importance,
                embedding=vector,
                source_message_ids=sources,
                occurred_at=max(occurred[s] for s in sources),
                metadata={"source": "dreaming"},
                speaker=candidate.speaker,
                event_dates=tuple(
                    sorted({day for s in sources for day in domain.mentioned_dates(texts[s], occurred[s].date())})
                ),
            )
            for (candidate, sources), vector in zip(distilled, vectors, strict=True)
        ]
