"""The dreaming-lite sweeper against real Postgres: idle sessions distilled into both layers past a
high-water mark, a crashed claim recovered after the stale window, two sweepers never distilling the
same turns twice, and the background loop wired into the service."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import asyncpg
import pytest

from services.memory.embedders import embedder_from_env
from services.memory.sweeper import DreamingSettings, DreamingSweeper
from services.servicekit.config import Env
from services.servicekit.db import create_pool
from tests.integration.test_memory_fixtures import (  # noqa: F401
    MemoryClient,
    ids,
    memory_service,
    start_memory,
    utc,
)
from tests.stack import wait_for

T0 = utc(2026, 3, 2, 20, 0)
IDLE = timedelta(seconds=1800)
STALE = timedelta(seconds=600)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=6)
    try:
        yield pool
    finally:
        await pool.close()


def sweeper(pool: asyncpg.Pool, **env: str) -> DreamingSweeper:
    settings = DreamingSettings.from_env(Env(env))
    return DreamingSweeper(pool, embedder_from_env({}), settings, merge_threshold=0.92)


async def evening(memory: MemoryClient, user: uuid.UUID, instance: uuid.UUID, session: uuid.UUID,
                  start: datetime) -> None:
    """A short evening chat: a self-statement, a plan, a laugh, a question left open."""
    exchange = [
        ("I work as a carpenter.", "That sounds satisfying."),
        ("Let's go to the beach on Saturday.", "I'd love that!"),
        ("My cat fell into the bathtub again haha", "Poor thing, that's hilarious."),
        ("Do you think I should change careers next year?", "Hmm, I'm not sure, let me think about it."),
    ]
    for minute, (user_text, reply) in enumerate(exchange):
        await memory.ingest(user, instance, session, user_text, reply, occurred_at=start + timedelta(minutes=minute))


async def dreamed(db, session: uuid.UUID) -> list[tuple[str, str, bool]]:
    """What dreaming wrote in the session. A distilled relationship memory quotes a user message, so it
    merges into that message's moment (a near-duplicate), which it relabels and recategorizes."""
    rows = await db.fetch("""SELECT content, category, instance_id IS NULL AS profile FROM memory.memories
                             WHERE session_id = $1 AND metadata->>'source' = 'dreaming' ORDER BY content""", session)
    return [(r["content"], r["category"], r["profile"]) for r in rows]


async def test_idle_sessions_are_distilled_into_both_layers_past_a_high_water_mark(
        memory: MemoryClient, pool: asyncpg.Pool, db) -> None:
    user, instance, session = ids()
    await evening(memory, user, instance, session, T0)
    worker = sweeper(pool)
    assert (await worker.tick(now=T0 + timedelta(minutes=10))).claimed == 0  # not idle yet
    report = await worker.tick(now=T0 + IDLE + timedelta(minutes=5))
    assert (report.claimed, report.distilled, report.failed, report.lost_claims) == (1, 1, 0, 0)
    assert await dreamed(db, session) == [
        ('Open question from User: "Do you think I should change careers next year?"', "thread", False),
        ('Plan made together: "Let\'s go to the beach on Saturday."', "moment", False),
        ('Shared a laugh: "My cat fell into the bathtub again"', "moment", False),
    ]
    # The self-statement was already extracted on ingest: distilling it again merged into that row.
    facts = await db.fetch("SELECT source_message_ids, metadata->>'source' AS source FROM memory.memories "
                           "WHERE content = 'User works as a carpenter'")
    assert len(facts) == 1 and facts[0]["source"] == "rules"
    state = await db.fetchrow("SELECT * FROM memory.sessions WHERE session_id = $1", session)
    assert state["distilled_seq"] == state["last_seq"] and state["claim_token"] is None
    assert (await worker.tick(now=T0 + IDLE + timedelta(hours=1))).claimed == 0  # nothing new

    # A later message is distilled next time — only it.
    later = T0 + timedelta(days=1)
    await memory.ingest(user, instance, session, "I promise I'll call my mum tomorrow.", "Good!", occurred_at=later)
    report = await worker.tick(now=later + IDLE + timedelta(seconds=1))
    assert (report.claimed, report.distilled) == (1, 1)
    runs = await db.fetch("SELECT from_seq, to_seq, cardinality(memory_ids) AS n FROM memory.distillations "
                          "WHERE session_id = $1 ORDER BY id", session)
    assert [r["from_seq"] for r in runs] == [0, runs[0]["to_seq"]] and runs[1]["to_seq"] > runs[0]["to_seq"]
    assert runs[1]["n"] == 1
    assert ('User promised: "I promise I\'ll call my mum tomorrow."', "thread", False) in await dreamed(db, session)
    assert len(await dreamed(db, session)) == 4


async def test_a_claim_left_by_a_crashed_worker_is_recovered_after_the_stale_window(
        memory: MemoryClient, pool: asyncpg.Pool, db) -> None:
    user, instance, session = ids()
    await evening(memory, user, instance, session, T0)
    now = T0 + IDLE + timedelta(minutes=5)
    crashed = sweeper(pool)
    [(claim, token)] = await crashed.claim(now)  # claimed and committed, then the worker "dies"
    rescuer = sweeper(pool)
    assert (await rescuer.tick(now=now + timedelta(seconds=60))).claimed == 0  # the claim is still fresh
    assert await dreamed(db, session) == []
    report = await rescuer.tick(now=now + STALE + timedelta(seconds=1))
    assert (report.claimed, report.distilled) == (1, 1) and len(await dreamed(db, session)) == 3
    # The crashed worker coming back to life cannot commit its stale claim: nothing is written twice.
    late = await crashed.distill(claim, token)
    assert late.status == "lost"
    assert await db.fetchval("SELECT count(*) FROM memory.distillations WHERE session_id = $1", session) == 1
    assert len(await dreamed(db, session)) == 3


async def test_a_failed_distillation_releases_its_claim_for_the_next_tick(
        memory: MemoryClient, pool: asyncpg.Pool, db) -> None:
    user, instance, session = ids()
    await evening(memory, user, instance, session, T0)
    now = T0 + IDLE + timedelta(minutes=5)
    broken = sweeper(pool)

    async def embedder_down(texts: object, kind: object) -> None:
        raise ConnectionError("embedder down")

    broken.embedder = type("Down", (), {"model": broken.embedder.model, "embed": staticmethod(embedder_down)})()
    report = await broken.tick(now=now)
    assert (report.claimed, report.failed, report.distilled) == (1, 1, 0)
    assert await db.fetchval("SELECT claim_token FROM memory.sessions WHERE session_id = $1", session) is None
    report = await sweeper(pool).tick(now=now + timedelta(seconds=1))
    assert (report.claimed, report.distilled) == (1, 1)


async def test_two_sweepers_at_once_never_distill_the_same_turns_twice(
        memory: MemoryClient, pool: asyncpg.Pool, db) -> None:
    sessions = []
    for _ in range(6):
        user, instance, session = ids()
        await evening(memory, user, instance, session, T0)
        sessions.append(session)
    first, second = sweeper(pool, DREAMING_BATCH="2"), sweeper(pool, DREAMING_BATCH="2")
    now = T0 + IDLE + timedelta(minutes=5)
    claimed = []
    while True:
        reports = await asyncio.gather(first.tick(now=now), second.tick(now=now))
        if not any(r.claimed for r in reports):
            break
        claimed.append([r.claimed for r in reports])
        assert all(r.claimed == r.distilled for r in reports)
    assert sum(sum(pair) for pair in claimed) == 6 and claimed[0] == [2, 2]  # SKIP LOCKED split the first pass
    runs = await db.fetch("SELECT session_id, worker FROM memory.distillations")
    assert sorted(r["session_id"] for r in runs) == sorted(sessions)  # exactly once each
    assert {r["worker"] for r in runs} == {first.worker, second.worker}
    for session in sessions:
        assert len(await dreamed(db, session)) == 3


async def test_dreaming_runs_in_the_background_unless_disabled(memory: MemoryClient, database_url: str,
                                                               pool: asyncpg.Pool, db) -> None:
    user, instance, session = ids()
    await memory.ingest(user, instance, session, "Let's cook pasta together tonight.", "Yes!")
    disabled = await sweeper(pool, DREAMING_DISABLED="1", DREAMING_IDLE_SECS="0").tick()
    assert disabled.claimed == 0 and await db.fetchval("SELECT count(*) FROM memory.distillations") == 0
    running = await start_memory(database_url, DREAMING_DISABLED="0", DREAMING_TICK_SECS="0.05",
                                 DREAMING_IDLE_SECS="0")
    try:
        async def distilled() -> bool:
            return await db.fetchval("SELECT count(*) FROM memory.distillations") == 1

        await wait_for(distilled)
    finally:
        await running.close()
    assert await dreamed(db, session) == [('Plan made together: "Let\'s cook pasta together tonight."', "moment", False)]
