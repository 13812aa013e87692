"""Affinity through the gateway: gifts, the debug route, continuity across sessions, and the ghost
end to end (ten messages, gifts that sour the mood, a ghost, then an answer) with a WatchAffinity
subscriber that must see every change."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from rapport.affinity.v1 import affinity_pb2 as pb
from rapport.affinity.v1 import affinity_pb2_grpc as pb_grpc

from services.affinity.domain import AXES, AffinityVector, ghost_score
from tests.stack import Stack, internal_channel, reply_text, start_stack, wait_for

DEBUG_FIELDS = {*AXES, "bond", "chemistry", "label", "ghost_streak", "total_ghosts"}
SOURING_GIFT = {"intrigue": -1.0, "patience": -1.0, "tension": 1.0}


@pytest.fixture
async def debug_stack(database_url: str, spans: Any) -> AsyncIterator[Stack]:
    running = await start_stack(database_url, extra_env={"EXPOSE_AFFINITY_DEBUG": "true"})
    try:
        yield running
    finally:
        await running.stop()


async def gift(stack: Stack, user: uuid.UUID, session_id: str, body: dict[str, Any]) -> Any:
    return await stack.client.post(f"/comp/chat/{session_id}/event/gift", json=body, headers=stack.headers(user))


async def debug_state(stack: Stack, user: uuid.UUID, session_id: str) -> dict[str, Any]:
    response = await stack.client.get(f"/comp/affinity/{session_id}", headers=stack.headers(user))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def vector(state: dict[str, Any]) -> AffinityVector:
    return AffinityVector.from_mapping({axis: state[axis] for axis in AXES})


async def event_count(db, session_id: str, kind: str) -> int:  # type: ignore[no-untyped-def]
    return await db.fetchval("SELECT count(*) FROM affinity.events WHERE session_id = $1 AND kind = $2",
                             uuid.UUID(session_id), kind)  # type: ignore[no-any-return]


async def test_a_gift_goes_through_the_ema_and_is_listed(stack: Stack, db) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    response = await gift(stack, user, chat["session_id"], {"deltas": {"warmth": 0.5, "tension": -1},
                                                           "label": "roses", "metadata": {"sku": "r-12"}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"applied_deltas", "affinity"} and set(body["affinity"]) == DEBUG_FIELDS
    assert body["applied_deltas"] == pytest.approx({"warmth": 0.1, "tension": -0.1})  # tension clamps at 0
    assert body["affinity"]["warmth"] == pytest.approx(0.4) and body["affinity"]["tension"] == 0.0

    listed = await stack.client.get(f"/comp/chat/{chat['session_id']}/gifts", headers=stack.headers(user))
    gifts = listed.json()["gifts"]
    assert len(gifts) == 1 and gifts[0]["label"] == "roses" and gifts[0]["metadata"] == {"sku": "r-12"}
    assert gifts[0]["deltas"] == {"warmth": 0.5, "tension": -1.0}
    assert gifts[0]["applied_deltas"] == pytest.approx({"warmth": 0.1, "tension": -0.1})
    hidden = await stack.client.get(f"/comp/affinity/{chat['session_id']}", headers=stack.headers(user))
    assert hidden.status_code == 404  # the debug route needs EXPOSE_AFFINITY_DEBUG=true


@pytest.mark.parametrize("deltas", [{"warmth": 1.5}, {"charm": 0.2}, {"trust": 0.2, "patience": -2}])
async def test_bad_gifts_get_400_and_apply_nothing(stack: Stack, db, deltas: dict[str, float]) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    response = await gift(stack, user, chat["session_id"], {"deltas": deltas})
    assert response.status_code == 400 and response.json()["code"] == "invalid_payload"
    assert "deltas" in response.json()["message"]
    assert await db.fetchval("SELECT version FROM affinity.vectors WHERE session_id = $1",
                             uuid.UUID(chat["session_id"])) == 0
    assert await event_count(db, chat["session_id"], "gift") == 0


async def test_gifts_to_another_users_session_are_forbidden(stack: Stack, db) -> None:
    owner, intruder = uuid.uuid4(), uuid.uuid4()
    chat = await stack.start_chat(owner)
    response = await gift(stack, intruder, chat["session_id"], {"deltas": {"warmth": 1}})
    assert response.status_code == 403
    listed = await stack.client.get(f"/comp/chat/{chat['session_id']}/gifts", headers=stack.headers(intruder))
    assert listed.status_code == 403
    assert await event_count(db, chat["session_id"], "gift") == 0


async def test_force_new_continues_the_pairs_vector_and_reset_starts_fresh(debug_stack: Stack) -> None:
    user = uuid.uuid4()
    first = await debug_stack.start_chat(user)
    await gift(debug_stack, user, first["session_id"], {"deltas": {"warmth": 1, "trust": 1, "intimacy": 1}})
    before = await debug_state(debug_stack, user, first["session_id"])

    continued = await debug_stack.start_chat(user, force_new=True)
    assert continued["session_id"] != first["session_id"]
    after = await debug_state(debug_stack, user, continued["session_id"])
    assert {a: after[a] for a in AXES} == pytest.approx({a: before[a] for a in AXES}, abs=1e-3)
    assert after["warmth"] == pytest.approx(0.5)

    fresh = await debug_stack.start_chat(user, force_new=True, reset_affinity=True)
    assert vector(await debug_state(debug_stack, user, fresh["session_id"])).as_dict() == pytest.approx(
        AffinityVector.START.as_dict(), abs=1e-3)
    forbidden = await debug_stack.client.get(f"/comp/affinity/{first['session_id']}",
                                             headers=debug_stack.headers(uuid.uuid4()))
    assert forbidden.status_code == 403


async def test_soured_mood_ghosts_the_next_message_then_answers_and_a_watcher_sees_every_change(
        debug_stack: Stack, db) -> None:
    stack = debug_stack
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    session_id = chat["session_id"]
    channel = internal_channel(stack.address("affinity"))
    stub = pb_grpc.AffinityServiceStub(channel)
    seen: list[pb.WatchAffinityResponse] = []
    watch = stub.WatchAffinity(pb.WatchAffinityRequest(user_id=str(user), session_id=session_id))

    async def collect() -> None:
        async for change in watch:
            seen.append(change)

    watcher = asyncio.create_task(collect())

    async def seen_at_least(count: int) -> bool:
        return len(seen) >= count

    try:
        await wait_for(lambda: seen_at_least(1))
        for i in range(10):
            frames = await stack.send(user, session_id, f"Tell me something about your day, part {i + 1} of it.")
            assert frames[0]["action_type"] == "reply" and reply_text(frames).strip()

        async def turns_applied(count: int) -> bool:
            return await event_count(db, session_id, "message") == count

        await wait_for(lambda: turns_applied(10))
        for _ in range(4):
            response = await gift(stack, user, session_id, {"deltas": SOURING_GIFT, "label": "cold shoulder"})
            assert response.status_code == 200
        soured = await debug_state(stack, user, session_id)
        assert soured["intrigue"] < 0.1 and soured["patience"] < 0.1 and soured["tension"] > 0.8
        assert ghost_score(vector(soured)) > 0.65

        ghosted = await stack.send(user, session_id, "Hello? Are you still there? Talk to me please.")
        assert [f["type"] for f in ghosted] == ["meta", "done", "final"]
        assert ghosted[0]["action_type"] == "ghost"
        after_ghost = await debug_state(stack, user, session_id)
        assert (after_ghost["ghost_streak"], after_ghost["total_ghosts"]) == (1, 1)
        decision = await stub.DecideGhost(pb.DecideGhostRequest(user_id=str(user), session_id=session_id,
                                                                user_message_count=12, ghosting_enabled=True))
        assert decision.ghost is False and decision.rule == "streak"  # never two in a row

        answered = await stack.send(user, session_id, "Okay, sorry. How was your evening, honestly?")
        assert answered[0]["action_type"] == "reply" and reply_text(answered).strip()
        await wait_for(lambda: turns_applied(11))
        final = await debug_state(stack, user, session_id)
        assert (final["ghost_streak"], final["total_ghosts"]) == (0, 1)

        # 11 turns + 4 gifts + 1 ghost = 16 events, + the streak reset = 17 writes after the first frame.
        await wait_for(lambda: seen_at_least(18))
        assert [change.state.version for change in seen] == list(range(18))
        event_ids = {str(r["id"]) for r in await db.fetch("SELECT id FROM affinity.events WHERE session_id = $1",
                                                          uuid.UUID(session_id))}
        assert len(event_ids) == 16 and {c.event_id for c in seen if c.event_id} == event_ids
        kinds = [change.kind for change in seen[1:]]
        assert kinds.count(pb.EVENT_KIND_MESSAGE) == 11 and kinds.count(pb.EVENT_KIND_GIFT) == 4
        assert kinds.count(pb.EVENT_KIND_GHOST) == 1 and kinds.count(pb.EVENT_KIND_REPLY) == 1
        assert kinds.index(pb.EVENT_KIND_GHOST) < kinds.index(pb.EVENT_KIND_REPLY)
        assert seen[-1].state.vector.warmth == pytest.approx(final["warmth"], abs=1e-4)
    finally:
        watch.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await channel.close()
