"""Recall per memory_scope (the memory service alone interprets it): which layers come back, what of
the insight profile the prompt may use, and no embedding or search when no memory layer is let through;
history_window travels in the request."""
from __future__ import annotations

import uuid

import grpc
import pytest
from rapport.memory.v1 import memory_pb2 as pb

from tests.integration.test_memory_fixtures import (  # noqa: F401
    MemoryClient,
    contents,
    ids,
    memory_service,
    start_memory,
)

SCOPES = [  # scope, profile memories, relationship memories, insights
    ("full", True, True, pb.INSIGHTS_MODE_FULL),
    ("neutral_and_relationship", True, True, pb.INSIGHTS_MODE_NEUTRAL),
    ("", True, True, pb.INSIGHTS_MODE_NEUTRAL),  # the default
    ("relationship_only", False, True, pb.INSIGHTS_MODE_OFF),
    ("neutral_only", False, False, pb.INSIGHTS_MODE_NEUTRAL),
    ("insights_only", False, False, pb.INSIGHTS_MODE_FULL),
    ("none", False, False, pb.INSIGHTS_MODE_OFF),
]


@pytest.mark.parametrize(("scope", "profile", "relationship", "insights"), SCOPES)
async def test_recall_per_scope(memory: MemoryClient, scope: str, profile: bool, relationship: bool,
                                insights: int) -> None:
    user, instance, session = ids()
    await memory.ingest(user, instance, session, "I work as a pilot.")
    recalled = await memory.recall(user, instance, "what is my job", memory_scope=scope)
    assert contents(recalled.profile) == (["User works as a pilot"] if profile else [])
    assert contents(recalled.relationship) == (["I work as a pilot."] if relationship else [])
    assert recalled.insights == insights
    searched = profile or relationship
    assert (recalled.embed_ms > 0, recalled.search_ms > 0) == (searched, searched)


async def test_neutral_only_recalls_no_memories_of_either_layer(memory: MemoryClient) -> None:
    user, instance, session = ids()
    await memory.ingest(user, instance, session, "I'm allergic to peanuts and I live in Lisbon.")
    recalled = await memory.recall(user, instance, "peanuts Lisbon", memory_scope="neutral_only")
    assert list(recalled.profile) == [] and list(recalled.relationship) == []
    assert recalled.insights == pb.INSIGHTS_MODE_NEUTRAL and recalled.embed_ms == 0


async def test_a_scope_without_memories_still_validates_the_request(memory: MemoryClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await memory.recall(uuid.uuid4(), uuid.uuid4(), "", memory_scope="none")
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "query" in failure.value.details()


async def test_the_history_window_of_the_request_hides_the_moments_the_prompt_carries(memory: MemoryClient) -> None:
    user, instance, session = ids()
    for line in ("We baked a lemon cake together.", "The lemon cake burned a little.",
                 "The lemon cake was still tasty."):
        await memory.ingest(user, instance, session, line)
    everything = {"We baked a lemon cake together.", "The lemon cake burned a little.", "The lemon cake was still tasty."}

    async def recalled(window: int) -> set[str]:
        reply = await memory.recall(user, instance, "lemon cake", session_id=str(session), history_window=window,
                                    relationship_top=5)
        return set(contents(reply.relationship))

    assert await recalled(2) == everything - {"The lemon cake was still tasty."}  # the last turn
    assert await recalled(4) == {"We baked a lemon cake together."}  # the last two turns
    assert await recalled(0) == set()  # 0 = MEMORY_HISTORY_WINDOW (20): the whole session is in the prompt
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await recalled(-1)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "history_window" in failure.value.details()
