"""The affinity service over real gRPC against real Postgres: locked writes, idempotency, decay,
continuity, owner checks, scope, the LLM evaluator, the change feed across replicas, deletion."""
from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from rapport.affinity.v1 import affinity_pb2 as pb
from rapport.affinity.v1 import affinity_pb2_grpc as pb_grpc

from services.affinity import store
from services.affinity.domain import (
    AXES,
    AffinityVector,
    apply_delta,
    combine_deltas,
    decay,
    rule_deltas,
)
from services.affinity.evaluator import OfflineEvaluator
from services.offline_llm.server import (
    LlmScript,
    ScriptedResponse,
    build_llm_app,
    serve_llm,
)
from services.servicekit.config import ConfigError, Env
from services.servicekit.db import create_pool
from services.servicekit.service import RunningService, start_service
from tests.stack import INTERNAL_ENV, internal_channel, wait_for

PERSONA = "Mara"
LONG_TEXT = "I spent the whole afternoon repainting the kitchen walls."  # ≥ 30 chars, no relational cue
REPLY = "That sounds like a big job."


@dataclass
class Affinity:
    """A running affinity service and a client stub to it."""

    service: RunningService
    channel: grpc.aio.Channel

    @property
    def stub(self) -> pb_grpc.AffinityServiceStub:
        return pb_grpc.AffinityServiceStub(self.channel)

    async def stop(self) -> None:
        await self.channel.close()
        await self.service.stop(grace=0.5)


async def start_affinity(database_url: str, **env: str) -> Affinity:
    service = await start_service("affinity", Env({"DATABASE_URL": database_url, "BIND_ADDR": "127.0.0.1:0", **INTERNAL_ENV,
                                                   "SHUTDOWN_GRACE_SECS": "1", **env}), pool_size=10)
    return Affinity(service, internal_channel(service.address))


@pytest.fixture
async def affinity(database_url: str) -> AsyncIterator[Affinity]:
    running = await start_affinity(database_url)
    try:
        yield running
    finally:
        await running.stop()


async def open_session(stub: pb_grpc.AffinityServiceStub, user: uuid.UUID | None = None,
                       instance: uuid.UUID | None = None, **flags: bool) -> tuple[str, str, pb.OpenSessionResponse]:
    user_id, session_id = str(user or uuid.uuid4()), str(uuid.uuid4())
    reply = await stub.OpenSession(pb.OpenSessionRequest(user_id=user_id, session_id=session_id,
                                                         instance_id=str(instance or uuid.uuid4()), **flags))
    return user_id, session_id, reply


def vector_of(message: pb.AffinityVector) -> dict[str, float]:
    return {axis: getattr(message, axis) for axis in AXES}


def assert_vector(actual: pb.AffinityVector, expected: AffinityVector, tolerance: float = 1e-5) -> None:
    assert vector_of(actual) == pytest.approx(expected.as_dict(), abs=tolerance)


def turn(user_id: str, session_id: str, turn_id: str, text: str = LONG_TEXT, **fields: object) -> pb.ApplyTurnRequest:
    return pb.ApplyTurnRequest(turn_id=turn_id, user_id=user_id, session_id=session_id, persona_name=PERSONA,
                               user_text=text, reply_text=REPLY, **fields)


def turn_deltas(text: str = LONG_TEXT) -> dict[str, float]:
    evaluation = OfflineEvaluator().evaluate(PERSONA, AffinityVector.START, text, REPLY)
    return combine_deltas(rule_deltas(text, None, datetime.now(UTC)), evaluation.deltas)


async def backdate(db, session_id: str, days: float) -> None:  # type: ignore[no-untyped-def]
    await db.execute("UPDATE affinity.vectors SET updated_at = updated_at - make_interval(secs => $2) "
                     "WHERE session_id = $1", uuid.UUID(session_id), days * 86400)


# --- locked writes and idempotency ---------------------------------------------------------------


async def test_fifty_concurrent_turns_leave_the_sequential_vector_and_fifty_events(affinity: Affinity, db) -> None:
    user_id, session_id, _ = await open_session(affinity.stub)
    replies = await asyncio.gather(*(affinity.stub.ApplyTurn(turn(user_id, session_id, f"turn-{i}"))
                                     for i in range(50)))
    assert all(reply.applied for reply in replies)

    deltas = turn_deltas()
    expected = AffinityVector.START
    for _ in range(50):
        expected = apply_delta(expected, deltas, 0.8)
    # The deltas must move the vector without hitting a bound, or a lost update could hide.
    assert expected.intrigue - AffinityVector.START.intrigue == pytest.approx(50 * 0.2 * deltas["intrigue"])
    assert 0.6 < expected.intrigue < 1.0 and 0.6 < expected.patience < 1.0
    state = await affinity.stub.GetState(pb.GetStateRequest(user_id=user_id, session_id=session_id))
    assert_vector(state.state.vector, expected)
    assert state.state.version == 50

    rows = await db.fetch("SELECT state_before, state_after, turn_id FROM affinity.events "
                          "WHERE session_id = $1 ORDER BY seq", uuid.UUID(session_id))
    assert len(rows) == 50 and {r["turn_id"] for r in rows} == {f"turn-{i}" for i in range(50)}
    for earlier, later in itertools.pairwise(rows):  # serialised: each write starts where the last ended
        assert json.loads(later["state_before"]) == pytest.approx(json.loads(earlier["state_after"]), abs=1e-5)


async def test_a_repeated_turn_id_applies_once(affinity: Affinity, db) -> None:
    user_id, session_id, _ = await open_session(affinity.stub)
    concurrent = await asyncio.gather(*(affinity.stub.ApplyTurn(turn(user_id, session_id, "same-turn"))
                                        for _ in range(5)))
    later = await affinity.stub.ApplyTurn(turn(user_id, session_id, "same-turn"))
    assert sorted(r.applied for r in concurrent) == [False, False, False, False, True]
    assert later.applied is False and later.reason == "turn already applied"
    assert_vector(later.state.vector, apply_delta(AffinityVector.START, turn_deltas(), 0.8))
    assert await db.fetchval("SELECT count(*) FROM affinity.events WHERE session_id = $1",
                             uuid.UUID(session_id)) == 1


async def test_turn_event_records_raw_effective_rule_and_evaluator_deltas(affinity: Affinity, db) -> None:
    user_id, session_id, _ = await open_session(affinity.stub)
    sent = datetime.now(UTC)
    request = turn(user_id, session_id, "t-1", text="Thank you, you are so kind! What about you?")
    request.user_message_at.FromDatetime(sent)
    request.previous_user_message_at.FromDatetime(sent - timedelta(hours=25))  # the long-gap rule fires
    reply = await affinity.stub.ApplyTurn(request)
    assert reply.applied and reply.event_id

    events = (await affinity.stub.ListEvents(pb.ListEventsRequest(user_id=user_id, session_id=session_id))).events
    assert len(events) == 1
    event = events[0]
    assert event.kind == pb.EVENT_KIND_MESSAGE and event.turn_id == "t-1" and event.evaluator == "offline"
    assert dict(event.rule_deltas) == pytest.approx({"intrigue": 0.02, "patience": -0.03, "tension": 0.03})
    assert event.evaluator_deltas["warmth"] > 0.1 and "compliment" in event.reason
    assert dict(event.deltas) == pytest.approx(combine_deltas(event.rule_deltas, event.evaluator_deltas))
    for axis, raw in event.deltas.items():
        assert event.effective_deltas[axis] == pytest.approx(0.2 * raw, abs=1e-9)
        assert getattr(event.after, axis) - getattr(event.before, axis) == pytest.approx(0.2 * raw, abs=1e-9)
    assert_vector(event.before, AffinityVector.START)


async def test_short_messages_skip_the_evaluator_but_keep_rule_deltas(affinity: Affinity) -> None:
    user_id, session_id, _ = await open_session(affinity.stub)
    await affinity.stub.ApplyTurn(turn(user_id, session_id, "t-1", text="ok"))
    event = (await affinity.stub.ListEvents(pb.ListEventsRequest(user_id=user_id, session_id=session_id))).events[0]
    assert event.skipped and "shorter than 4" in event.reason
    assert dict(event.evaluator_deltas) == {axis: 0.0 for axis in event.evaluator_deltas}
    assert dict(event.deltas)["patience"] == pytest.approx(-0.02)


async def test_demo_sessions_use_the_demo_inertia_and_gifts_the_global_one(affinity: Affinity) -> None:
    user_id, session_id, _ = await open_session(affinity.stub, is_demo=True)
    reply = await affinity.stub.ApplyTurn(turn(user_id, session_id, "t-1"))
    after_turn = apply_delta(AffinityVector.START, turn_deltas(), 0.3)
    assert reply.state.is_demo
    assert_vector(reply.state.vector, after_turn)
    gift = await affinity.stub.ApplyGift(pb.ApplyGiftRequest(user_id=user_id, session_id=session_id,
                                                             deltas={"trust": 0.5}))
    assert gift.applied_deltas["trust"] == pytest.approx(0.1)
    assert_vector(gift.state.vector, apply_delta(after_turn, {"trust": 0.5}, 0.8))


async def test_inertia_comes_from_the_environment(database_url: str) -> None:
    running = await start_affinity(database_url, EMA_INERTIA="0", DEMO_EMA_INERTIA="1")
    try:
        user_id, session_id, _ = await open_session(running.stub)
        gift = await running.stub.ApplyGift(pb.ApplyGiftRequest(user_id=user_id, session_id=session_id,
                                                                deltas={"warmth": 0.5}))
        assert gift.applied_deltas["warmth"] == pytest.approx(0.5)  # inertia 0: the delta in full
        demo_user, demo_session, _ = await open_session(running.stub, is_demo=True)
        reply = await running.stub.ApplyTurn(turn(demo_user, demo_session, "t-1"))
        assert_vector(reply.state.vector, AffinityVector.START)  # inertia 1: nothing changes
    finally:
        await running.stop()


@pytest.mark.parametrize("variable, value", [("EMA_INERTIA", "1.5"), ("DEMO_EMA_INERTIA", "abc"),
                                             ("GHOST_MAX_STREAK", "-1"), ("GHOST_RAISED_WINDOW_HOURS", "x")])
async def test_bad_settings_stop_start_up_naming_the_variable(database_url: str, variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        await start_affinity(database_url, **{variable: value})
    assert raised.value.variable == variable and variable in str(raised.value)


# --- decay -----------------------------------------------------------------------------------------


async def test_reads_decay_from_updated_at_and_ghost_bookkeeping_keeps_the_decay(affinity: Affinity, db) -> None:
    user_id, session_id, _ = await open_session(affinity.stub)
    await backdate(db, session_id, days=10)
    decayed = decay(AffinityVector.START, timedelta(days=10))
    assert decayed.intrigue == pytest.approx(0.4) and decayed.patience == pytest.approx(0.55)
    read = await affinity.stub.GetState(pb.GetStateRequest(user_id=user_id, session_id=session_id))
    assert_vector(read.state.vector, decayed)

    ghost = await affinity.stub.RecordGhost(pb.RecordGhostRequest(user_id=user_id, session_id=session_id,
                                                                  turn_id="g-1"))
    assert ghost.applied and ghost.state.ghost_streak == 1 and ghost.state.total_ghosts == 1
    assert_vector(ghost.state.vector, decayed)
    await backdate(db, session_id, days=10)  # ten more days pass
    await affinity.stub.RecordReply(pb.RecordReplyRequest(user_id=user_id, session_id=session_id))
    row = await db.fetchrow("SELECT * FROM affinity.vectors WHERE session_id = $1", uuid.UUID(session_id))
    twenty_days = decay(AffinityVector.START, timedelta(days=20))
    assert row["ghost_streak"] == 0 and row["total_ghosts"] == 1
    assert {axis: row[axis] for axis in AXES} == pytest.approx(twenty_days.as_dict(), abs=1e-5)  # materialised
    read = await affinity.stub.GetState(pb.GetStateRequest(user_id=user_id, session_id=session_id))
    assert_vector(read.state.vector, twenty_days)


async def test_store_reads_and_writes_decay_to_an_injected_now(database_url: str, affinity: Affinity) -> None:
    user_id, session_id, opened = await open_session(affinity.stub)
    pool = await create_pool(database_url, max_size=2)
    try:
        start = opened.state.updated_at.ToDatetime(tzinfo=UTC)
        later = start + timedelta(days=40)
        state = await store.read_owned(pool, uuid.UUID(session_id), uuid.UUID(user_id), now=later)
        assert state.current() == decay(AffinityVector.START, timedelta(days=40))
        outcome = await store.write_locked(
            pool, uuid.UUID(session_id), uuid.UUID(user_id),
            lambda locked: store.Change(apply_delta(locked.current(), {"tension": 0.5}, 0.0), locked.book),
            now=later)
        assert outcome.before == state.current() and outcome.state.updated_at == later
        assert outcome.state.vector.tension == pytest.approx(0.5)  # 0.1 − 0.2 clamps to 0, then +0.5
    finally:
        await pool.close()


# --- continuity ------------------------------------------------------------------------------------


async def test_a_new_session_continues_the_pairs_decayed_vector_unless_reset(affinity: Affinity, db) -> None:
    user, instance = uuid.uuid4(), uuid.uuid4()
    user_id, first, opened = await open_session(affinity.stub, user, instance)
    assert opened.continued is False
    await affinity.stub.ApplyGift(pb.ApplyGiftRequest(user_id=user_id, session_id=first,
                                                      deltas={"warmth": 1, "intrigue": 1, "trust": 1}))
    moved = (await affinity.stub.GetState(pb.GetStateRequest(user_id=user_id, session_id=first))).state.vector
    await backdate(db, first, days=5)

    _, _, continued = await open_session(affinity.stub, user, instance)
    expected = decay(AffinityVector.from_mapping(vector_of(moved)), timedelta(days=5))
    assert continued.continued is True and continued.state.ghost_streak == 0
    assert_vector(continued.state.vector, expected)
    _, _, fresh = await open_session(affinity.stub, user, instance, reset_affinity=True)
    assert fresh.continued is False
    assert_vector(fresh.state.vector, AffinityVector.START)
    _, _, other_persona = await open_session(affinity.stub, user)
    assert_vector(other_persona.state.vector, AffinityVector.START)


async def test_open_session_is_idempotent_and_owner_checked(affinity: Affinity) -> None:
    user_id, session_id, first = await open_session(affinity.stub)
    request = pb.OpenSessionRequest(user_id=user_id, session_id=session_id, instance_id=str(uuid.uuid4()))
    again = await affinity.stub.OpenSession(request)
    assert again.state.version == first.state.version == 0
    request.user_id = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await affinity.stub.OpenSession(request)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


# --- owner checks and validation --------------------------------------------------------------------

RPCS = {
    "GetState": lambda u, s: pb.GetStateRequest(user_id=u, session_id=s),
    "ApplyTurn": lambda u, s: turn(u, s, "t-x"),
    "DecideGhost": lambda u, s: pb.DecideGhostRequest(user_id=u, session_id=s, user_message_count=12,
                                                      ghosting_enabled=True),
    "RecordGhost": lambda u, s: pb.RecordGhostRequest(user_id=u, session_id=s, turn_id="g-x"),
    "RecordReply": lambda u, s: pb.RecordReplyRequest(user_id=u, session_id=s),
    "ApplyGift": lambda u, s: pb.ApplyGiftRequest(user_id=u, session_id=s, deltas={"warmth": 0.5}),
    "ListGifts": lambda u, s: pb.ListGiftsRequest(user_id=u, session_id=s),
    "ListEvents": lambda u, s: pb.ListEventsRequest(user_id=u, session_id=s),
}


async def _call(stub: pb_grpc.AffinityServiceStub, rpc: str, request: object) -> object:
    if rpc == "WatchAffinity":
        async for first in stub.WatchAffinity(request):
            return first
    return await getattr(stub, rpc)(request)


@pytest.mark.parametrize("rpc", [*RPCS, "WatchAffinity"])
async def test_every_rpc_is_owner_checked(affinity: Affinity, db, rpc: str) -> None:
    build = RPCS.get(rpc, lambda u, s: pb.WatchAffinityRequest(user_id=u, session_id=s))
    _, session_id, _ = await open_session(affinity.stub)
    for session, code in ((session_id, grpc.StatusCode.PERMISSION_DENIED),
                          (str(uuid.uuid4()), grpc.StatusCode.NOT_FOUND)):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _call(affinity.stub, rpc, build(str(uuid.uuid4()), session))
        assert raised.value.code() == code
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _call(affinity.stub, rpc, build("not-a-uuid", session_id))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    row = await db.fetchrow("SELECT version, (SELECT count(*) FROM affinity.events) AS events "
                            "FROM affinity.vectors WHERE session_id = $1", uuid.UUID(session_id))
    assert row["version"] == 0 and row["events"] == 0


@pytest.mark.parametrize("deltas", [{"warmth": 1.5}, {"charm": 0.1}, {}, {"trust": -1.01, "warmth": 0.2}])
async def test_bad_gift_deltas_are_invalid_and_apply_nothing(affinity: Affinity, db, deltas: dict) -> None:
    user_id, session_id, _ = await open_session(affinity.stub)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await affinity.stub.ApplyGift(pb.ApplyGiftRequest(user_id=user_id, session_id=session_id, deltas=deltas))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "deltas" in (raised.value.details() or "")
    assert await db.fetchval("SELECT version FROM affinity.vectors WHERE session_id = $1", uuid.UUID(session_id)) == 0


async def test_get_state_filters_prompt_lines_by_scope(affinity: Affinity) -> None:
    user_id, session_id, _ = await open_session(affinity.stub)
    await affinity.stub.ApplyGift(pb.ApplyGiftRequest(user_id=user_id, session_id=session_id,
                                                      deltas={"warmth": 1}, label="roses"))
    await affinity.stub.ApplyTurn(turn(user_id, session_id, "t-1", text="Thank you, you are so kind!"))
    await affinity.stub.ApplyTurn(turn(user_id, session_id, "t-2", text="ok"))  # skipped: not emotional context

    default = await affinity.stub.GetState(pb.GetStateRequest(user_id=user_id, session_id=session_id))
    assert list(default.scope_axes) == ["warmth", "intimacy", "tension"]
    assert [line.split(":")[0] for line in default.feelings_lines[1:]] == ["warmth", "intimacy", "tension"]
    assert default.mood_lines[-1].startswith("Relationship: ")
    assert list(default.emotional_context) == ["They gave you a gift: roses.",
                                               (await _reasons(affinity, user_id, session_id))[1]]
    chemistry = await affinity.stub.GetState(pb.GetStateRequest(user_id=user_id, session_id=session_id,
                                                                affinity_scope=["chemistry"]))
    assert list(chemistry.scope_axes) == ["trust", "intrigue", "patience"]
    assert chemistry.state.chemistry == pytest.approx(
        (chemistry.state.vector.trust + chemistry.state.vector.intrigue + chemistry.state.vector.patience) / 3)
    none = await affinity.stub.GetState(pb.GetStateRequest(user_id=user_id, session_id=session_id,
                                                           affinity_scope=["none"]))
    assert list(none.mood_lines) == [] and list(none.feelings_lines) == [] and list(none.scope_axes) == []
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await affinity.stub.GetState(pb.GetStateRequest(user_id=user_id, session_id=session_id,
                                                        affinity_scope=["warmth", "charm"]))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "charm" in (raised.value.details() or "")


async def _reasons(affinity: Affinity, user_id: str, session_id: str) -> list[str]:
    events = (await affinity.stub.ListEvents(pb.ListEventsRequest(user_id=user_id, session_id=session_id))).events
    return [event.reason for event in reversed(events)]


async def test_decide_ghost_applies_the_switch_and_reports_judge_permission(affinity: Affinity) -> None:
    user_id, session_id, _ = await open_session(affinity.stub)
    await affinity.stub.ApplyGift(pb.ApplyGiftRequest(user_id=user_id, session_id=session_id,
                                                      deltas={"intrigue": -1, "patience": -1, "tension": 1}))
    await affinity.stub.ApplyGift(pb.ApplyGiftRequest(user_id=user_id, session_id=session_id,
                                                      deltas={"intrigue": -1, "patience": -1, "tension": 1}))

    async def decide(count: int, enabled: bool = True) -> pb.DecideGhostResponse:
        return await affinity.stub.DecideGhost(pb.DecideGhostRequest(
            user_id=user_id, session_id=session_id, user_message_count=count, ghosting_enabled=enabled))

    few, ghost, off = await decide(9), await decide(10), await decide(10, enabled=False)
    assert (few.ghost, few.rule, few.judge_ghost_allowed) == (False, "too_few_messages", False)
    assert (ghost.ghost, ghost.rule, ghost.judge_ghost_allowed) == (True, "threshold", True)
    assert ghost.score > ghost.threshold == pytest.approx(0.65)
    assert (off.ghost, off.rule, off.judge_ghost_allowed) == (False, "disabled", False)
    await affinity.stub.RecordGhost(pb.RecordGhostRequest(user_id=user_id, session_id=session_id, turn_id="g"))
    again = await affinity.stub.RecordGhost(pb.RecordGhostRequest(user_id=user_id, session_id=session_id,
                                                                  turn_id="g"))
    assert again.applied is False and again.state.total_ghosts == 1
    after = await decide(11)
    assert (after.ghost, after.rule) == (False, "streak") and after.threshold == pytest.approx(0.85)


# --- the LLM evaluator --------------------------------------------------------------------------------


async def test_llm_evaluator_output_is_capped_and_unusable_output_gives_zero_deltas(
        database_url: str, tmp_path: Path) -> None:
    script = LlmScript(
        ScriptedResponse(kind="json", text='{"warmth": 0.4, "trust": 0.05, "intrigue": 0, "intimacy": 0.01, '
                                            '"tension": -0.02, "reason": "They opened up warmly."}'),
        ScriptedResponse(kind="invalid_json"))
    llm = await serve_llm(build_llm_app("script", script))
    config = tmp_path / "model_config.toml"
    config.write_text('[tasks.affinity_evaluation]\nmodel = "stub/evaluator"\n')
    running = await start_affinity(database_url, MODEL_CONFIG_PATH=str(config), LLM_BASE_URL=llm.base_url)
    try:
        user_id, session_id, _ = await open_session(running.stub)
        first = await running.stub.ApplyTurn(turn(user_id, session_id, "t-1"))
        second = await running.stub.ApplyTurn(turn(user_id, session_id, "t-2"))
        await running.stub.ApplyTurn(turn(user_id, session_id, "t-3", text="ok"))  # skipped: no LLM call
        assert first.reason == "They opened up warmly." and second.applied
        assert len(script.requests) == 2 and script.requests[0].model == "stub/evaluator"
        assert script.requests[0].params["response_format"] == {"type": "json_object"}
        assert PERSONA in script.requests[0].messages[1]["content"]

        events = list(reversed((await running.stub.ListEvents(pb.ListEventsRequest(
            user_id=user_id, session_id=session_id))).events))
        assert events[0].evaluator == "llm:stub/evaluator" and events[0].evaluator_error == ""
        assert dict(events[0].evaluator_deltas) == pytest.approx(
            {"warmth": 0.15, "trust": 0.05, "intrigue": 0.0, "intimacy": 0.01, "tension": -0.02})
        assert events[1].evaluator_error and set(events[1].evaluator_deltas.values()) == {0.0}
        assert events[1].deltas["intrigue"] == pytest.approx(0.02)  # rule deltas still apply
        assert events[2].skipped
    finally:
        await running.stop()
        await llm.stop()


# --- the change feed and deletion -------------------------------------------------------------------


async def test_watchers_on_one_replica_see_writes_made_on_another_until_deletion(database_url: str) -> None:
    replica_a, replica_b = await start_affinity(database_url), await start_affinity(database_url)
    try:
        user_id, session_id, _ = await open_session(replica_b.stub)
        seen: list[pb.WatchAffinityResponse] = []

        async def watch() -> None:
            async for change in replica_a.stub.WatchAffinity(pb.WatchAffinityRequest(user_id=user_id,
                                                                                     session_id=session_id)):
                seen.append(change)

        async def seen_at_least(count: int) -> bool:
            return len(seen) >= count

        watcher = asyncio.create_task(watch())
        await wait_for(lambda: seen_at_least(1))
        gift = await replica_b.stub.ApplyGift(pb.ApplyGiftRequest(user_id=user_id, session_id=session_id,
                                                                  deltas={"warmth": 0.5}, label="tea"))
        applied = await replica_b.stub.ApplyTurn(turn(user_id, session_id, "t-1"))
        await wait_for(lambda: seen_at_least(3))
        assert [c.state.version for c in seen] == [0, 1, 2]
        assert [c.kind for c in seen] == [pb.EVENT_KIND_UNSPECIFIED, pb.EVENT_KIND_GIFT, pb.EVENT_KIND_MESSAGE]
        assert [c.event_id for c in seen[1:]] == [gift.event_id, applied.event_id]
        assert vector_of(seen[2].state.vector) == pytest.approx(vector_of(applied.state.vector), abs=1e-6)

        deleted = await replica_b.stub.DeleteUserData(pb.DeleteUserDataRequest(user_id=user_id))
        assert deleted.deleted == 3  # one vector, two events
        await asyncio.wait_for(watcher, 5)  # the stream ends with the session
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await replica_a.stub.GetState(pb.GetStateRequest(user_id=user_id, session_id=session_id))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await replica_a.stop()
        await replica_b.stop()


async def test_delete_user_data_removes_one_users_data_optionally_per_instance(affinity: Affinity, db) -> None:
    user, keep_instance, drop_instance = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    user_id, kept, _ = await open_session(affinity.stub, user, keep_instance)
    _, dropped, _ = await open_session(affinity.stub, user, drop_instance)
    other_user, other, _ = await open_session(affinity.stub)
    for owner, session in ((user_id, kept), (user_id, dropped), (other_user, other)):
        await affinity.stub.ApplyTurn(turn(owner, session, "t-1"))

    one = await affinity.stub.DeleteUserData(pb.DeleteUserDataRequest(user_id=user_id,
                                                                      instance_id=str(drop_instance)))
    assert one.deleted == 2
    remaining = {r["session_id"] for r in await db.fetch("SELECT session_id FROM affinity.vectors")}
    assert remaining == {uuid.UUID(kept), uuid.UUID(other)}
    everything = await affinity.stub.DeleteUserData(pb.DeleteUserDataRequest(user_id=user_id))
    assert everything.deleted == 2
    assert await db.fetchval("SELECT count(*) FROM affinity.events WHERE user_id = $1", user) == 0
    assert await db.fetchval("SELECT count(*) FROM affinity.events") == 1
