"""A turn always ends in a definite state: an orchestrator stopped mid-generation leaves it failed after
restart and a retry regenerates it once; a turn running elsewhere answers 409 duplicate_in_progress;
turns of one session are serialized."""
from __future__ import annotations

import asyncio
import uuid


from rapport.orchestrator.v1 import orchestrator_pb2 as pb
from rapport.orchestrator.v1 import orchestrator_pb2_grpc as pb_grpc
from services.offline_llm.server import LlmScript, ScriptedResponse, build_llm_app, serve_llm
from services.contracts.frames import to_json as to_dict  # the frames are a shared contract
from services.servicekit.config import Env
from services.servicekit.service import start_service
from tests.stack import INTERNAL_ENV, Stack, internal_channel, new_client_msg_id, reply_text, start_stack


async def _frames(stub: pb_grpc.OrchestratorServiceStub, request: pb.SendMessageRequest) -> list[dict]:
    return [to_dict(frame) async for frame in stub.SendMessage(request, timeout=30)]


async def test_a_turn_interrupted_by_a_stop_is_failed_after_restart_and_a_retry_does_not_duplicate(
        database_url: str, db, spans) -> None:  # type: ignore[no-untyped-def]
    script = LlmScript(ScriptedResponse("stall", stall_seconds=60))
    llm = await serve_llm(build_llm_app("script", script))
    orchestrator_env = {"LLM_BASE_URL": llm.base_url, "LLM_API_KEY": "x", "LLM_MODEL": "m"}
    stack = await start_stack(database_url, per_service_env={"orchestrator": orchestrator_env})
    try:
        user = uuid.uuid4()
        chat = await stack.start_chat(user)
        client_msg_id = new_client_msg_id()
        request = pb.SendMessageRequest(user_id=str(user), session_id=chat["session_id"], content="hello?",
                                        client_msg_id=client_msg_id)
        first = asyncio.create_task(stack.send(user, chat["session_id"], "hello?", client_msg_id))
        await script.wait_for_requests(1)
        await stack.services.pop("orchestrator").stop(grace=0.1)  # the orchestrator goes away mid-generation
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert await db.fetchval("SELECT status FROM chat.turns") == "running"

        script.add(ScriptedResponse("reply", "Back again."))
        script.release_stalls()
        restarted = await start_service("orchestrator", Env({**stack.env, **orchestrator_env,
                                                             "AFFINITY_ADDR": stack.address("affinity"),
                                                             "MEMORY_ADDR": stack.address("memory"),
                                                             "INSIGHT_ADDR": stack.address("insight")}))
        try:
            assert await db.fetchval("SELECT status FROM chat.turns") == "failed"
            async with internal_channel(restarted.address) as channel:
                frames = await _frames(pb_grpc.OrchestratorServiceStub(channel), request)
            assert reply_text(frames) == "Back again." and frames[-1]["type"] == "final"
        finally:
            await restarted.stop(grace=0.5)
        assert await db.fetchval("SELECT count(*) FROM chat.messages WHERE role = 'user'") == 1
        assert await db.fetchval("SELECT count(*) FROM chat.messages WHERE role = 'assistant'") == 1
        assert await db.fetchval("SELECT status FROM chat.turns") == "done"
    finally:
        script.release_stalls()
        await stack.stop()
        await llm.stop()


async def test_a_turn_running_in_another_replica_answers_409_with_the_original_message_id(stack: Stack, db) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    client_msg_id = new_client_msg_id()
    await db.execute("INSERT INTO chat.turns (id, session_id, user_id, client_msg_id, user_message_id, status) "
                     "VALUES ('01TURNELSEWHERE0000000000', $1, $2, $3, '01MSGELSEWHERE00000000000', 'running')",
                     uuid.UUID(chat["session_id"]), user, client_msg_id)
    response = await stack.client.post(f"/comp/chat/{chat['session_id']}/message/stream",
                                       json={"content": "hi", "client_msg_id": client_msg_id},
                                       headers=stack.headers(user))
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "duplicate_in_progress" and body["message_id"] == "01MSGELSEWHERE00000000000"


async def test_two_turns_on_one_session_are_serialized(database_url: str, db, spans) -> None:  # type: ignore[no-untyped-def]
    script = LlmScript(ScriptedResponse("reply", "first reply, slowly told", per_chunk_delay=0.03),
                       ScriptedResponse("reply", "second reply"))
    llm = await serve_llm(build_llm_app("script", script))
    stack = await start_stack(database_url, per_service_env={"orchestrator": {
        "LLM_BASE_URL": llm.base_url, "LLM_API_KEY": "x", "LLM_MODEL": "m"}})
    try:
        user = uuid.uuid4()
        chat = await stack.start_chat(user)
        first = asyncio.create_task(stack.send(user, chat["session_id"], "one"))
        await script.wait_for_requests(1)
        second = await stack.send(user, chat["session_id"], "two")
        assert (await first)[-1]["type"] == "final"
        # The second prompt was built after the first reply was stored: it is in its history.
        assert any(m.get("content") == "first reply, slowly told" for m in script.requests[1].messages)
        roles = await db.fetch("SELECT role, content FROM chat.messages WHERE kind = 'chat' ORDER BY id")
        assert [r["content"] for r in roles] == ["one", "first reply, slowly told", "two", reply_text(second)]
    finally:
        await stack.stop()
        await llm.stop()


async def test_a_job_that_keeps_failing_is_parked_dead_listed_and_can_be_queued_again(database_url: str, db) -> None:
    from services.cli import outbox_report
    from services.orchestrator.outbox import OutboxWorker
    from services.orchestrator.peers import Peers
    from services.servicekit.db import create_pool

    await db.execute("INSERT INTO chat.outbox (turn_id, target, payload) VALUES ('t-1', 'memory', '{}')")
    pool = await create_pool(database_url, max_size=2)
    peers = Peers.connect(Env({"MEMORY_ADDR": "127.0.0.1:9", "AFFINITY_ADDR": "127.0.0.1:9",
                               "INSIGHT_ADDR": "127.0.0.1:9", **INTERNAL_ENV}))  # nothing listens there
    worker = OutboxWorker(pool, peers, max_attempts=2, backoff_base=0.0)
    try:
        for _ in range(2):
            await worker.deliver_due()
            await db.execute("UPDATE chat.outbox SET next_attempt_at = now()")  # skip the backoff wait
        row = await db.fetchrow("SELECT status, attempts, last_error FROM chat.outbox")
        assert row["status"] == "dead" and row["attempts"] == 2 and "UNAVAILABLE" in row["last_error"]
        report = await outbox_report(database_url, retry_dead=False)
        assert report[0] == "pending: 0  done: 0  dead: 1" and "turn t-1" in report[1]
        assert await outbox_report(database_url, retry_dead=True) == ["queued 1 dead jobs again"]
        assert await db.fetchval("SELECT status FROM chat.outbox") == "pending"
    finally:
        await peers.close()
        await pool.close()
