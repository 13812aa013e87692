"""Issue 11 against the real memory service and Postgres: the persona's side is remembered with its
speaker and the reply's message id, merges keep every statement and source, one ranking across
layers, dates resolved at ingest and returned by Recall, a short query read with the recent turns, and a long
message embedded by its last words but searched by all of them."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from rapport.memory.v1 import memory_pb2 as pb

from services.memory import embedders
from services.memory.domain import QUERY_WORDS_FOR_EMBEDDING
from tests.integration.test_memory_fixtures import (  # noqa: F401
    MemoryClient,
    contents,
    ids,
    memory_service,
    start_memory,
)


async def test_what_the_persona_said_is_remembered_attributed_with_speaker_and_source(memory: MemoryClient,
                                                                                       db) -> None:
    user, instance, session = ids()
    await memory.ingest(user, instance, session, "Do you have any siblings?",
                        reply_text="I do! My little brother Pablo is a fisherman in Vigo. What about you?",
                        persona_name="Elena")
    turn = await db.fetchrow("SELECT reply_message_id FROM memory.ingested_turns")
    rows = await db.fetch("SELECT content, speaker, source_message_ids, instance_id, session_id FROM memory.memories")
    assert [(r["content"], r["speaker"], list(r["source_message_ids"])) for r in rows] == [
        ('Elena told you: "My little brother Pablo is a fisherman in Vigo."', "persona", [turn["reply_message_id"]])]
    assert rows[0]["instance_id"] == instance and rows[0]["session_id"] == session
    recalled = await memory.recall(user, instance, "What does your brother do?", top=3)
    assert contents(recalled.relationship)[0].startswith("Elena told you") and recalled.relationship[0].speaker == "persona"


async def test_a_merge_keeps_every_statement_and_source_and_different_statements_stay_apart(memory: MemoryClient,
                                                                                             db) -> None:
    user, instance, session = ids()
    await memory.ingest(user, instance, session, "My sister lives in Porto.")
    await memory.ingest(user, instance, session, "My sister lives in Lisbon.")
    moments = await db.fetch("SELECT content FROM memory.memories WHERE instance_id IS NOT NULL ORDER BY created_at")
    assert [r["content"] for r in moments] == ["My sister lives in Porto.", "My sister lives in Lisbon."]
    await memory.ingest(user, instance, session, "I really love hiking.")
    await memory.ingest(user, instance, session, "I love hiking!")
    hiking = await db.fetchrow("SELECT content, merged_contents, source_message_ids FROM memory.memories "
                               "WHERE instance_id IS NOT NULL AND content ILIKE '%hiking%'")
    # As informative: the newer restatement is the text, the earlier one is kept with it.
    assert hiking["content"] == "I love hiking!" and list(hiking["merged_contents"]) == ["I really love hiking."]
    assert len(hiking["source_message_ids"]) == 2
    listed = await memory.stub.ListMemories(pb.ListMemoriesRequest(user_id=str(user), text="hiking"))
    assert {tuple(m.merged_contents) for m in listed.memories} >= {("I really love hiking.",)}
    await memory.ingest(user, instance, session, "I love hiking so much, especially in the Gerês mountains.")
    richer = await db.fetch("SELECT content FROM memory.memories WHERE instance_id IS NOT NULL AND content ILIKE '%hik%'")
    assert len(richer) == 2  # a new place is a new statement, not a restatement


async def test_a_merged_row_written_before_the_migration_keeps_working(memory: MemoryClient, db) -> None:
    user, instance, session = ids()
    await memory.ingest(user, instance, session, "I'm allergic to peanuts.")
    await db.execute("UPDATE memory.memories SET source_message_ids = ARRAY['old-1', 'old-2'], "
                     "metadata = metadata || '{\"merges\": 1}' WHERE instance_id IS NULL")
    await memory.ingest(user, instance, session, "I'm allergic to peanuts!")
    fact = await db.fetchrow("SELECT source_message_ids, merged_contents FROM memory.memories WHERE instance_id IS NULL")
    assert list(fact["source_message_ids"])[:2] == ["old-1", "old-2"] and len(fact["source_message_ids"]) == 3
    assert list(fact["merged_contents"]) == []  # the same text again: nothing to fold


async def test_recall_ranks_both_layers_together_with_a_minimum_per_layer(database_url: str) -> None:
    client = await start_memory(database_url, MEMORY_RECALL_TOP="4")
    try:
        user, instance, session = ids()
        await client.ingest(user, instance, session, "I live in Porto.")
        for line in ("We went to the beach in Porto.", "Porto was sunny at the beach.", "The beach in Porto was cold.",
                     "I swam at the beach near Porto.", "Porto beach sunsets are the best."):
            await client.ingest(user, instance, session, line)
        recalled = await client.recall(user, instance, "the beach in Porto", session_id=str(uuid.uuid4()))
    finally:
        await client.close()
    assert len(recalled.profile) + len(recalled.relationship) == 4
    assert contents(recalled.profile) == ["User lives in Porto"]  # the layer's minimum, not fixed slots
    scores = [m.score for m in sorted([*recalled.profile, *recalled.relationship], key=lambda m: -m.score)]
    assert scores == sorted(scores, reverse=True)


async def test_dates_are_resolved_at_ingest_and_returned_and_asked_about(memory: MemoryClient) -> None:
    user, instance, session = ids()
    said = datetime.now(UTC) - timedelta(days=10)
    await memory.ingest(user, instance, session, "Yesterday I went to a pottery class.", occurred_at=said)
    await memory.ingest(user, instance, session, "I love pottery and painting.", occurred_at=said - timedelta(days=5))
    day = (said - timedelta(days=1)).date()
    recalled = await memory.recall(user, instance, f"What did I do on {day.day} {day.strftime('%B')}?", top=1)
    (best,) = [*recalled.profile, *recalled.relationship]
    assert best.content == "Yesterday I went to a pottery class." and list(best.event_dates) == [day.isoformat()]
    assert best.occurred_at.ToDatetime(tzinfo=UTC) == said.replace(microsecond=said.microsecond // 1000 * 1000) or (
        abs((best.occurred_at.ToDatetime(tzinfo=UTC) - said).total_seconds()) < 0.001)


async def test_a_short_query_is_searched_with_the_recent_turns(memory: MemoryClient) -> None:
    user, instance, session = ids()
    await memory.ingest(user, instance, session, "My sister Marta moved to Porto.")
    for line in ("I made soup for dinner.", "Work was long today.", "It rained all afternoon."):
        await memory.ingest(user, instance, session, line)

    async def best(recent_turns: list[str]) -> str:
        reply = await memory.recall(user, instance, "and then?", top=1, session_id=str(uuid.uuid4()),
                                    recent_turns=recent_turns, memory_scope="relationship_only")
        return reply.relationship[0].content

    assert await best(["I was thinking about my sister Marta today.", "Oh? Where does she live?"]) == (
        "My sister Marta moved to Porto.")
    assert await best(["Dinner tonight was nice.", "What did you cook?"]) == "I made soup for dinner."


async def test_a_long_message_is_embedded_by_its_last_words_and_searched_by_all_of_them(
        memory: MemoryClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The query is embedded on the reply's critical path at a cost that grows with its length (a 256-word
    message: about 430 ms on one core); a roleplay message can run to paragraphs."""
    user, instance, session = ids()
    await memory.ingest(user, instance, session, "My sister Marta moved to Porto.")
    embedded: list[str] = []
    encode = embedders._E5Worker.encode

    def recording(worker: embedders._E5Worker, texts: list[str], is_query: bool) -> object:
        if is_query:
            embedded.extend(texts)
        return encode(worker, texts, is_query)

    monkeypatch.setattr(embedders._E5Worker, "encode", recording)
    words = [f"word{i}" for i in range(300)]
    message = "Marta " + " ".join(words) + " do you remember that?"
    recalled = await memory.recall(user, instance, message, top=1, memory_scope="relationship_only")
    assert embedded == [" ".join([*words[-(QUERY_WORDS_FOR_EMBEDDING - 4):], "do you remember that?"])]
    assert contents(recalled.relationship) == ["My sister Marta moved to Porto."]  # "Marta", word 1: full text
