"""Resilience of the post-process path (issue 13), against the real services and Postgres: a peer down for ten
minutes leaves nothing dead, a session's jobs reach a peer in turn order after an outage, a restarted peer is
used again within two seconds, and dead jobs show in the gateway's /readyz without making it unready.

Time is compressed honestly where minutes are involved: the outbox's schedule lives in the rows it keeps
(`created_at`, `attempts`, `next_attempt_at`), so the test writes the state those rows reach after ten minutes
of the real backoff (0.5 s doubling to a 5-minute ceiling) while the peer really is down, and the real worker
then makes its next attempt."""
from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest

from services.admin import outbox_report
from services.orchestrator.outbox import backoff_seconds
from services.servicekit.config import Env
from services.servicekit.service import start_service
from tests.integration.post_process_audit import audit_post_process, outbox_settled
from tests.stack import Stack, start_stack, wait_for

pytestmark = pytest.mark.resilience

TEN_MINUTES = 600.0


def attempts_within(seconds: float) -> int:
    """How many attempts the outbox's real schedule makes within `seconds` of a job's creation (the first at
    once, each next one `backoff_seconds(n)` after the n-th)."""
    attempts, elapsed = 1, 0.0
    while elapsed + backoff_seconds(attempts) <= seconds:
        elapsed += backoff_seconds(attempts)
        attempts += 1
    return attempts


async def restart(stack: Stack, name: str, address: str) -> None:
    """Start service `name` again where it listened before (its callers' channels reconnect to it)."""
    stack.services[name] = await start_service(name, Env({**stack.env, "BIND_ADDR": address}), pool_size=3)


async def final_frame(stack: Stack, user: uuid.UUID, session: str, text: str) -> dict:
    frames = await stack.send(user, session, text)
    assert frames[-1]["type"] == "final", frames[-1]
    return frames[-1]


async def test_a_ten_minute_peer_outage_leaves_nothing_dead(database_url: str, db: asyncpg.Connection) -> None:
    """Before, 10 failed attempts (about 4.5 minutes of backoff) parked a job dead until an operator ran
    `rapport outbox --retry-dead`."""
    stack = await start_stack(database_url)
    try:
        memory = stack.services.pop("memory")
        address = memory.address
        await memory.stop(grace=0.1)
        user = uuid.uuid4()
        chat = await stack.start_chat(user)
        for text in ("I live in Porto.", "I work as a nurse.", "My sister is called Rita."):
            assert "memory" in (await final_frame(stack, user, chat["session_id"], text))["degraded"]

        async def first_job_failed() -> bool:
            return bool(await db.fetchval("SELECT attempts FROM chat.outbox WHERE target = 'memory' ORDER BY id "
                                          "LIMIT 1"))

        await wait_for(first_job_failed, timeout=30)
        # Ten minutes of outage: the jobs are ten minutes old; the session's first one has made the attempts the
        # real schedule makes in that time (11: at 0, 0.5, 1.5, 3.5 … 511.5 s) and the next is due now, with the
        # peer still down; the later ones waited behind it (a session's jobs reach a peer in order).
        made = attempts_within(TEN_MINUTES)
        assert made == 11
        await db.execute("UPDATE chat.outbox SET created_at = created_at - make_interval(secs => $1), "
                         "next_attempt_at = now() WHERE target = 'memory'", TEN_MINUTES)
        await db.execute("UPDATE chat.outbox SET attempts = $1 WHERE id = (SELECT min(id) FROM chat.outbox "
                         "WHERE target = 'memory')", made)

        async def attempted_again() -> bool:  # the attempt made and failed (no longer claimed)
            return bool(await db.fetchval("SELECT count(*) FROM chat.outbox WHERE target = 'memory' "
                                          "AND attempts > $1 AND claimed_until IS NULL", made))

        await wait_for(attempted_again, timeout=30)
        jobs = await db.fetch("SELECT status, attempts, next_attempt_at - now() AS wait FROM chat.outbox "
                              "WHERE target = 'memory' ORDER BY id")
        assert [job["status"] for job in jobs] == ["pending"] * 3  # still trying, none dead
        assert jobs[0]["wait"].total_seconds() > 200  # at the 5-minute ceiling of the backoff

        await restart(stack, "memory", address)
        back = time.monotonic()
        await wait_for(lambda: outbox_settled(db, [user]), timeout=30)
        print(f"\n10-minute outage: the 3 waiting jobs delivered {time.monotonic() - back:.1f} s after the peer was back")
        assert await db.fetchval("SELECT count(*) FROM chat.outbox WHERE status = 'dead'") == 0
        audit = await audit_post_process(db, [user])
        assert audit.problems == [] and audit.replies == 3
    finally:
        await stack.stop()


async def test_after_an_outage_a_sessions_jobs_reach_affinity_in_turn_order(database_url: str,
                                                                            db: asyncpg.Connection) -> None:
    """Before, the outbox delivered a claimed batch in parallel, in the order the jobs fell due: after an outage a
    session's affinity updates could apply out of order (the EMA and the decay depend on the order)."""
    stack = await start_stack(database_url)
    try:
        affinity = stack.services.pop("affinity")
        address = affinity.address
        user = uuid.uuid4()
        chat = await stack.start_chat(user)
        await affinity.stop(grace=0.1)
        texts = ["Thank you, that was lovely!", "Honestly I'm annoyed today.", "You're wonderful, I trust you.",
                 "Whatever.", "I missed you so much!"]
        for text in texts:
            assert "affinity" in (await final_frame(stack, user, chat["session_id"], text))["degraded"]
        # The older a job, the more often it failed and the longer its backoff: the newest is due first.
        await db.execute("UPDATE chat.outbox SET next_attempt_at = now() - make_interval(secs => id::float) "
                         "WHERE target = 'affinity'")
        await restart(stack, "affinity", address)
        await wait_for(lambda: outbox_settled(db, [user]), timeout=30)
        turns = [r["id"] for r in await db.fetch("SELECT id FROM chat.turns WHERE session_id = $1 ORDER BY started_at",
                                                 uuid.UUID(chat["session_id"]))]
        applied = [r["turn_id"] for r in await db.fetch(
            "SELECT turn_id FROM affinity.events WHERE session_id = $1 AND kind = 'message' ORDER BY seq",
            uuid.UUID(chat["session_id"]))]
        assert applied == turns
        assert (await audit_post_process(db, [user])).problems == []
    finally:
        await stack.stop()


async def test_a_restarted_peer_is_used_again_within_two_seconds(database_url: str) -> None:
    """Before, gRPC's default reconnect backoff (1 s growing ×1.6 to 120 s) left turns degraded for 8–16 s after a
    peer came back, and the gateway's own calls to it failing for longer."""
    stack = await start_stack(database_url)
    try:
        users = [uuid.uuid4() for _ in range(6)]  # a turn each at a time: one probe never waits for another
        sessions = {user: (await stack.start_chat(user))["session_id"] for user in users}
        assert (await final_frame(stack, users[0], sessions[users[0]], "Hello!"))["degraded"] == []
        memory = stack.services.pop("memory")
        address = memory.address
        await memory.stop(grace=0.1)
        # Down for 12 s while turns keep the channels trying: gRPC's default backoff would be at ~6.5 s by then.
        down_until = time.monotonic() + 12
        while time.monotonic() < down_until:
            assert "memory" in (await final_frame(stack, users[0], sessions[users[0]], "Still there?"))["degraded"]
            await asyncio.sleep(1.0)  # the outage's length is the fault injected, not a wait for a result
        await restart(stack, "memory", address)
        back = time.monotonic()
        turns_served: list[float] = []  # when (after the peer was back) each turn that used memory again began
        gateway_served: list[float] = []

        async def probe_turn(user: uuid.UUID) -> None:
            began = time.monotonic() - back
            if "memory" not in (await final_frame(stack, user, sessions[user], "And now?"))["degraded"]:
                turns_served.append(began)

        async def probe_gateway(user: uuid.UUID) -> None:
            began = time.monotonic() - back
            response = await stack.client.get(f"/comp/user/{user}/memories", headers=stack.headers(user))
            if response.status_code == 200:
                gateway_served.append(began)

        # A probe of each kind every 0.25 s, each turn in a session of its own (a session's turns are serialized).
        probes: list[asyncio.Task[None]] = []
        while not (turns_served and gateway_served) and time.monotonic() - back < 20:
            user = users[len(probes) // 2 % len(users)]
            probes += [asyncio.create_task(probe_turn(user)), asyncio.create_task(probe_gateway(user))]
            await asyncio.sleep(0.25)  # the probes' spacing: the resolution of the measurement
        await asyncio.gather(*probes, return_exceptions=True)
        turn_back, gateway_back = min(turns_served, default=None), min(gateway_served, default=None)
        print(f"\nmemory back: turns use it after {turn_back} s, the gateway after {gateway_back} s")
        assert turn_back is not None and turn_back < 2.0
        assert gateway_back is not None and gateway_back < 2.0
    finally:
        await stack.stop()


async def test_dead_jobs_show_in_readyz_which_stays_ready(database_url: str, db: asyncpg.Connection) -> None:
    """Dead jobs raised a metric and a log line, but the health an operator looks at said nothing."""
    stack = await start_stack(database_url, per_service_env={"orchestrator": {"POST_PROCESS_MAX_ATTEMPTS": "1"}})
    try:
        ready = (await stack.client.get("/readyz")).json()
        assert ready["status"] == "ready" and ready["post_process"] == "ok"
        memory = stack.services.pop("memory")
        address = memory.address
        await memory.stop(grace=0.1)
        user = uuid.uuid4()
        chat = await stack.start_chat(user)
        await final_frame(stack, user, chat["session_id"], "I live in Porto.")

        async def memory_job_dead() -> bool:
            return await db.fetchval("SELECT status FROM chat.outbox WHERE target = 'memory'") == "dead"

        await wait_for(memory_job_dead, timeout=30)
        await restart(stack, "memory", address)

        async def readyz() -> dict:
            response = await stack.client.get("/readyz")
            return {"http": response.status_code, **response.json()}

        async def reported(state: str) -> dict | None:
            answer = await readyz()
            return answer if answer.get("post_process") == state and answer["http"] == 200 else None

        answer = await wait_for(lambda: reported("dead_jobs"), timeout=15)
        assert answer["status"] == "ready"  # reported, not a reason to take the gateway out of rotation
        assert await outbox_report(stack.database_url, retry_dead=True) == ["queued 1 dead jobs again"]
        await wait_for(lambda: outbox_settled(db, [user]), timeout=15)
        assert await db.fetchval("SELECT status FROM chat.outbox WHERE target = 'memory'") == "done"
        await wait_for(lambda: reported("ok"), timeout=15)
    finally:
        await stack.stop()
