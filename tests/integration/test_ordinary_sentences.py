"""The three sentences a new user types in the web page (issue 11, item 6), end to end through the
gateway, the orchestrator's outbox and the real memory and insight services: within seconds of the
turns the structured profile has the occupation, the city and the interests, and the memory profile
layer has the name."""
from __future__ import annotations

import uuid

from rapport.memory.v1 import memory_pb2 as pb
from rapport.memory.v1 import memory_pb2_grpc as pb_grpc

from tests.stack import Stack, internal_channel, wait_for

SENTENCES = (
    "I'm Sam",
    "I work night shifts as an ER nurse at a hospital in Lisbon.",
    "Weekends are for hiking in Sintra and playing jazz piano.",
)


async def test_ordinary_sentences_fill_the_profile_within_seconds(stack: Stack, db) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    for text in SENTENCES:
        await stack.send(user, chat["session_id"], text)

    async def profile() -> dict | None:
        body = (await stack.client.get(f"/comp/user/{user}/profile", headers=stack.headers(user))).json()
        insights = body["insights"]
        return insights if {"occupation", "city", "interests"} <= set(insights) else None

    insights = await wait_for(profile, timeout=10)
    assert insights["occupation"] == "ER nurse" and insights["city"] == "Lisbon"
    assert insights["interests"] == ["hiking", "playing jazz piano"]

    async def remembered() -> list[str] | None:
        async with internal_channel(stack.address("memory")) as channel:
            listed = await pb_grpc.MemoryServiceStub(channel).ListMemories(
                pb.ListMemoriesRequest(user_id=str(user), layer=pb.LAYER_PROFILE))
        found = [m.content for m in listed.memories]
        return found if "User's name is Sam" in found else None

    facts = await wait_for(remembered, timeout=10)
    assert "User works night shifts as an ER nurse at a hospital in Lisbon" in facts
