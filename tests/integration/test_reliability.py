"""Reliability fixes of issue 13, each against the real services and Postgres: "delete my data" leaves nothing of
the user in any table, delivered jobs are pruned, turns are owned by lease (a starting replica never fails
another's live turn; a turn nobody runs ends failed), a lock wait past its timeout is a 503, the outbox keeps
trying for its horizon and resumes as soon as a peer is back, a retried gift applies once."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest

from services.orchestrator.leases import TurnLeases
from services.orchestrator.live_turns import LiveTurns
from services.orchestrator.outbox import OutboxWorker
from services.orchestrator.peers import Peers
from services.orchestrator.store import outbox as outbox_store
from services.servicekit.config import Env
from services.servicekit.db import create_pool
from services.servicekit.service import start_service
from tests.stack import INTERNAL_ENV, Stack, start_stack, wait_for


async def delivered(db: asyncpg.Connection) -> bool:
    rows = await db.fetch("SELECT status FROM chat.outbox")
    return bool(rows) and all(r["status"] == "done" for r in rows)


async def test_delete_my_data_leaves_nothing_of_the_user_in_any_table(stack: Stack, db) -> None:
    user, other = uuid.uuid4(), uuid.uuid4()
    secret = "Zanzibarquux"  # a word only this user ever wrote
    for who in (user, other):
        chat = await stack.start_chat(who)
        await stack.send(who, chat["session_id"], f"My cat is called {secret if who == user else 'Tom'} and I "
                                                  "live in Lisbon, I work as a nurse.")
        response = await stack.client.post(f"/comp/chat/{chat['session_id']}/event/gift",
                                           json={"deltas": {"warmth": 0.2}, "label": "a rose"},
                                           headers=stack.headers(who))
        assert response.status_code == 200
    await wait_for(lambda: delivered(db), timeout=30)
    response = await stack.client.delete(f"/comp/user/{user}/data", headers=stack.headers(user))
    assert response.status_code == 200, response.text

    columns = await db.fetch(
        """SELECT table_schema, table_name, column_name FROM information_schema.columns
           WHERE table_schema IN ('chat', 'affinity', 'memory', 'insight')""")
    found = []
    for column in columns:
        table = f'"{column["table_schema"]}"."{column["table_name"]}"'
        hits = await db.fetchval(
            f'SELECT count(*) FROM {table} WHERE "{column["column_name"]}"::text ILIKE $1 '
            f'OR "{column["column_name"]}"::text ILIKE $2',
            f"%{user}%", f"%{secret}%")
        if hits:
            found.append(f"{table}.{column['column_name']}: {hits}")
    assert found == [], "the deleted user's data survives in " + ", ".join(found)
    outbox = await db.fetchval("SELECT count(*) FROM chat.outbox WHERE encode(request, 'escape') ILIKE $1",
                               f"%{secret}%")
    assert outbox == 0
    assert await db.fetchval("SELECT count(*) FROM chat.messages WHERE user_id = $1", other) > 0  # others kept


async def test_delivered_jobs_are_pruned_after_the_retention(database_url: str, db) -> None:
    await db.execute("INSERT INTO chat.outbox (turn_id, target, payload, status, done_at) VALUES "
                     "('old', 'memory', '{}', 'done', now() - interval '8 days'), "
                     "('recent', 'memory', '{}', 'done', now() - interval '1 day'), "
                     "('waiting', 'memory', '{}', 'pending', now() - interval '9 days')")
    pool = await create_pool(database_url, max_size=2)
    try:
        assert await outbox_store.prune_done(pool, 7 * 86_400) == 1
    finally:
        await pool.close()
    assert sorted(r["turn_id"] for r in await db.fetch("SELECT turn_id FROM chat.outbox")) == ["recent", "waiting"]


async def test_a_starting_replica_leaves_another_replicas_live_turn_alone(database_url: str, db) -> None:
    """Before, a starting replica failed every running turn, another replica's live one included (and a retry
    then generated it twice)."""
    pool = await create_pool(database_url, max_size=4)
    try:
        live_a = LiveTurns()
        a = TurnLeases(pool, live_a)
        await a.start()
        session = await _session(db)
        await db.execute("INSERT INTO chat.turns (id, session_id, user_id, client_msg_id, user_message_id, status, "
                         "owner) VALUES ('turn-a', $1, $2, 'cm-a', 'msg-a', 'running', $3)",
                         session, uuid.uuid4(), a.replica_id)
        live_a._logs["turn-a"] = object()  # type: ignore[assignment]  # A runs it
        b = TurnLeases(pool, LiveTurns())
        await b.start()  # B starts: its sweep must not touch A's turn
        assert await db.fetchval("SELECT status FROM chat.turns WHERE id = 'turn-a'") == "running"
        await a.stop()  # A goes away: now the turn is nobody's
        await b.sweep()
        assert await db.fetchval("SELECT status FROM chat.turns WHERE id = 'turn-a'") == "failed"
    finally:
        await pool.close()


async def test_a_turn_whose_failure_could_not_be_recorded_is_finished_by_the_sweep(database_url: str, db) -> None:
    """Before, a turn whose failure could not be written (a database outage) stayed running forever and a retry
    got 409 until the orchestrator restarted."""
    pool = await create_pool(database_url, max_size=4)
    try:
        leases = TurnLeases(pool, LiveTurns())
        await leases.start()
        session = await _session(db)
        await db.execute("INSERT INTO chat.turns (id, session_id, user_id, client_msg_id, user_message_id, status, "
                         "owner) VALUES ('lost', $1, $2, 'cm-l', 'msg-l', 'running', $3)",
                         session, uuid.uuid4(), leases.replica_id)  # ours, but we no longer run it
        assert await leases.sweep() == 1
        assert await db.fetchval("SELECT status FROM chat.turns WHERE id = 'lost'") == "failed"
    finally:
        await pool.close()


async def test_a_turn_whose_replica_went_away_ends_unavailable_not_internal(database_url: str, db) -> None:
    """A replica that stopped is a transient outage, not a bug: the frame a retry or an attacher replays says
    `unavailable` (retryable), as a database outage mid-turn does — before it said `internal`."""
    pool = await create_pool(database_url, max_size=4)
    try:
        leases = TurnLeases(pool, LiveTurns())
        await leases.start()
        session = await _session(db)
        await db.execute("INSERT INTO chat.turns (id, session_id, user_id, client_msg_id, user_message_id, status, "
                         "owner) VALUES ('gone', $1, $2, 'cm-g', 'msg-g', 'running', $3)",
                         session, uuid.uuid4(), uuid.uuid4())  # owned by a replica that never beat
        assert await leases.sweep() == 1
        frame = await db.fetchval("SELECT frames->-1 FROM chat.turns WHERE id = 'gone'")
        frame = json.loads(frame) if isinstance(frame, str) else frame
        assert frame["type"] == "error" and frame["code"] == "unavailable" and frame["retryable"] is True
    finally:
        await pool.close()


async def _session(db: asyncpg.Connection) -> uuid.UUID:
    user = uuid.uuid4()
    persona = await db.fetchval("SELECT id FROM chat.personas LIMIT 1")
    instance = await db.fetchval("INSERT INTO chat.persona_instances (user_id, persona_id) VALUES ($1, $2) "
                                 "RETURNING id", user, persona)
    return await db.fetchval("INSERT INTO chat.sessions (user_id, instance_id) VALUES ($1, $2) RETURNING id",
                             user, instance)  # type: ignore[no-any-return]


async def test_a_lock_wait_past_its_timeout_is_a_503_not_a_500(database_url: str, db) -> None:
    stack = await start_stack(database_url, extra_env={"DB_LOCK_TIMEOUT_SECS": "0.3"})
    try:
        user = uuid.uuid4()
        chat = await stack.start_chat(user)
        await stack.send(user, chat["session_id"], "Hello!")
        history = (await stack.client.get(f"/comp/chat/{chat['session_id']}/history",
                                          headers=stack.headers(user))).json()
        holder = await asyncpg.connect(database_url)
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT 1 FROM chat.sessions WHERE id = $1 FOR UPDATE", uuid.UUID(chat["session_id"]))
        try:
            response = await stack.client.post(f"/comp/chat/{chat['session_id']}/branches",
                                               json={"from_message_id": history["messages"][0]["id"]},
                                               headers=stack.headers(user))
        finally:
            await transaction.rollback()
            await holder.close()
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] and response.json()["code"] == "unavailable"
    finally:
        await stack.stop()


async def test_the_outbox_keeps_trying_for_its_horizon_not_a_number_of_attempts(database_url: str, db) -> None:
    """Before, 10 failed attempts (about 4.5 minutes of a peer being down) parked a job dead."""
    await db.execute("INSERT INTO chat.outbox (turn_id, target, payload, attempts, created_at) VALUES "
                     "('young', 'memory', '{}', 40, now()), ('old', 'memory', '{}', 3, now() - interval '25 hours')")
    pool = await create_pool(database_url, max_size=2)
    peers = Peers.connect(Env({"MEMORY_ADDR": "127.0.0.1:9", "AFFINITY_ADDR": "127.0.0.1:9",
                               "INSIGHT_ADDR": "127.0.0.1:9", **INTERNAL_ENV}))  # nothing listens there
    worker = OutboxWorker(pool, peers, backoff_base=0.0, horizon_seconds=86_400)
    try:
        await worker.deliver_due()
        rows = {r["turn_id"]: r["status"] for r in await db.fetch("SELECT turn_id, status FROM chat.outbox")}
        assert rows == {"young": "pending", "old": "dead"}
    finally:
        await peers.close()
        await pool.close()


async def test_a_peer_back_from_an_outage_gets_its_jobs_at_once(database_url: str, db) -> None:
    """Before, a job waited out its backoff (up to minutes) after the peer came back."""
    stack = await start_stack(database_url, per_service_env={"orchestrator": {"POST_PROCESS_BACKOFF_CAP_SECS": "600"}})
    try:
        memory = stack.services["memory"]
        address = memory.address
        await memory.stop(grace=0.1)
        user = uuid.uuid4()
        chat = await stack.start_chat(user)
        await stack.send(user, chat["session_id"], "I live in Porto.")

        async def failed_a_few_times() -> bool:
            attempts = await db.fetchval("SELECT attempts FROM chat.outbox WHERE target = 'memory'")
            return bool(attempts and attempts >= 2)

        await wait_for(failed_a_few_times, timeout=30)
        # a long backoff now lies ahead of the job
        await db.execute("UPDATE chat.outbox SET next_attempt_at = now() + interval '10 minutes' "
                         "WHERE target = 'memory'")
        env = {**stack.env, "BIND_ADDR": address}
        stack.services["memory"] = await start_service("memory", Env(env), pool_size=3)
        started = asyncio.get_running_loop().time()

        async def memory_done() -> bool:
            return await db.fetchval("SELECT status FROM chat.outbox WHERE target = 'memory'") == "done"

        await wait_for(memory_done, timeout=20)
        assert asyncio.get_running_loop().time() - started < 20
    finally:
        await stack.stop()


@pytest.mark.parametrize("retries", [2])
async def test_a_retried_gift_applies_once(stack: Stack, db, retries: int) -> None:
    """Before, a gift had no idempotency key: a client's retry applied it twice."""
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    body = {"deltas": {"warmth": 0.3}, "label": "a rose", "client_request_id": "gift-0001"}
    answers = [await stack.client.post(f"/comp/chat/{chat['session_id']}/event/gift", json=body,
                                       headers=stack.headers(user)) for _ in range(retries)]
    assert all(a.status_code == 200 for a in answers)
    assert answers[0].json() == answers[1].json()
    session = uuid.UUID(chat["session_id"])
    assert await db.fetchval("SELECT count(*) FROM affinity.events WHERE session_id = $1 AND kind = 'gift'",
                             session) == 1
    assert await db.fetchval("SELECT count(*) FROM chat.messages WHERE session_id = $1 AND kind = 'gift'",
                             session) == 1
    other = {**body, "client_request_id": "gift-0002"}
    await stack.client.post(f"/comp/chat/{chat['session_id']}/event/gift", json=other, headers=stack.headers(user))
    assert await db.fetchval("SELECT count(*) FROM affinity.events WHERE session_id = $1 AND kind = 'gift'",
                             session) == 2


async def test_a_database_outage_mid_turn_is_a_retryable_unavailable_frame(stack: Stack, monkeypatch) -> None:
    """Found by SIGKILLing PostgreSQL under `rapport up` with turns in flight: the turns ended with an `internal`
    error frame ("Something went wrong") instead of saying the service is briefly unavailable."""
    from services.orchestrator.turn import TurnEngine

    async def connection_lost(*args: object) -> None:
        raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    monkeypatch.setattr(TurnEngine, "_run", connection_lost)
    frames = await stack.send(user, chat["session_id"], "Hello!", client_msg_id="outage-0000000000000000000001")
    error = frames[-1]
    assert error["type"] == "error", frames
    assert error["code"] == "unavailable" and error["retryable"] is True
    assert "briefly unavailable" in error["user_message"]
    monkeypatch.undo()  # the database is back: the same message, retried, is answered
    frames = await stack.send(user, chat["session_id"], "Hello!", client_msg_id="outage-0000000000000000000001")
    assert frames[-1]["type"] == "final"


async def test_jobs_claimed_by_a_stopped_replica_are_delivered_at_once(database_url: str, db) -> None:
    """Found by SIGKILLing an orchestrator replica under `rapport up --replicas 2`: the post-process jobs it had
    claimed waited out the claim's two-minute lease (post-process settled 104 s after the last reply)."""
    stack = await start_stack(database_url)
    try:
        memory = stack.services.pop("memory")
        address = memory.address
        await memory.stop(grace=0.1)
        user = uuid.uuid4()
        chat = await stack.start_chat(user)
        await stack.send(user, chat["session_id"], "I live in Porto.")
        gone = uuid.uuid4()  # a replica that was killed while delivering the job
        await db.execute("INSERT INTO chat.replicas (id, heartbeat_at) VALUES ($1, now() - interval '1 minute')",
                         gone)
        await db.execute("UPDATE chat.outbox SET claimed_by = $1, claimed_until = now() + interval '2 minutes', "
                         "next_attempt_at = now() + interval '2 minutes' WHERE target = 'memory'", gone)
        stack.services["memory"] = await start_service("memory", Env({**stack.env, "BIND_ADDR": address}),
                                                       pool_size=3)

        async def memory_done() -> bool:
            return await db.fetchval("SELECT status FROM chat.outbox WHERE target = 'memory'") == "done"

        await wait_for(memory_done, timeout=20)  # not the two minutes of the claim
    finally:
        await stack.stop()
