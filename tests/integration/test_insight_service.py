"""The insight service over gRPC against a real Postgres: extraction (rules and the two-stage LLM
task, served by the scriptable OpenAI-compatible stub), merge rules in the store, concurrency,
idempotency, rendering, QueryProfiles, snapshots listing and deletion (spec: insight.md)."""
from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from rapport.insight.v1 import insight_pb2 as pb
from rapport.insight.v1 import insight_pb2_grpc as pb_grpc
from services.insight import store
from services.insight.domain import ProfileQuery
from services.insight.schedule import SnapshotSchedule
from services.insight.snapshots import SnapshotSweeper
from services.offline_llm.server import LlmScript, ScriptedResponse, build_llm_app, serve_llm
from services.servicekit.config import Env
from services.servicekit.db import create_pool
from services.servicekit.service import RunningService, start_service
from tests.stack import INTERNAL_ENV, internal_channel

EXTRACTOR_MODEL = "test/insight-extractor"
OCCURRED_AT = datetime(2025, 5, 4, 10, 30, tzinfo=UTC)


@dataclass
class Insight:
    service: RunningService
    channel: grpc.aio.Channel
    stub: pb_grpc.InsightServiceStub

    async def extract(self, user: uuid.UUID, text: str, *, turn: str | None = None, message: str | None = None,
                      reply: str = "That sounds lovely.", persona: str = "Mara") -> pb.ExtractTurnResponse:
        request = pb.ExtractTurnRequest(turn_id=turn or f"turn-{uuid.uuid4().hex}", user_id=str(user),
                                        session_id=str(uuid.uuid4()), user_message_id=message or new_message_id(),
                                        user_text=text, reply_text=reply, persona_name=persona)
        request.occurred_at.FromDatetime(OCCURRED_AT)
        return await self.stub.ExtractTurn(request)

    async def profile(self, user: uuid.UUID, mode: int = pb.RENDER_MODE_FULL) -> pb.GetProfileResponse:
        return await self.stub.GetProfile(pb.GetProfileRequest(user_id=str(user), mode=mode))

    async def values(self, user: uuid.UUID) -> dict[str, Any]:
        return MessageToDict((await self.profile(user)).profile.insights)

    async def provenance(self, user: uuid.UUID) -> dict[str, Any]:
        return MessageToDict((await self.profile(user)).profile.provenance)


def new_message_id() -> str:
    return f"msg-{uuid.uuid4().hex}"


StartInsight = Callable[..., Awaitable[Insight]]


@pytest.fixture
async def start_insight(database_url: str) -> AsyncIterator[StartInsight]:
    """Starts the real insight service (port 0) with extra env; stopped after the test."""
    started: list[Insight] = []

    async def start(**env: str) -> Insight:
        service = await start_service("insight", Env({"DATABASE_URL": database_url, "BIND_ADDR": "127.0.0.1:0", **INTERNAL_ENV,
                                                      "SNAPSHOT_DISABLED": "1", **env}), pool_size=5)
        channel = internal_channel(service.address)
        started.append(Insight(service, channel, pb_grpc.InsightServiceStub(channel)))
        return started[-1]

    yield start
    for insight in started:
        await insight.channel.close()
        await insight.service.stop(grace=0.5)


@pytest.fixture
async def insight(start_insight: StartInsight) -> Insight:
    return await start_insight()


@dataclass
class LlmStub:
    script: LlmScript
    env: dict[str, str]


@pytest.fixture
async def llm_stub(tmp_path: Path) -> AsyncIterator[LlmStub]:
    """The scriptable OpenAI-compatible server, and the env that points insight_extraction at it."""
    script = LlmScript()
    server = await serve_llm(build_llm_app("script", script))
    config = tmp_path / "model_config.toml"
    config.write_text(f'[tasks.insight_extraction]\nmodel = "{EXTRACTOR_MODEL}"\n')
    yield LlmStub(script, {"MODEL_CONFIG_PATH": str(config), "LLM_BASE_URL": server.base_url,
                           "LLM_API_KEY": "sk-test"})
    script.release_stalls()
    await server.stop()


def answer(payload: object) -> ScriptedResponse:
    return ScriptedResponse(kind="json", text=json.dumps(payload))


async def events_of(db: Any, turn: str) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT stage, status, payload, model, usage FROM insight.extraction_events "
                          "WHERE turn_id = $1 ORDER BY created_at, stage", turn)
    return [{**dict(row), "payload": json.loads(row["payload"]), "usage": json.loads(row["usage"])} for row in rows]


# ---------------------------------------------------------------------------
# rule-based extraction, provenance, merge rules


async def test_rule_extraction_merges_fields_with_provenance_and_indexed_columns(insight: Insight, db) -> None:
    user = uuid.uuid4()
    reply = await insight.extract(user, "Hi! I live in Lisbon and I work as a nurse. I love hiking and jazz.",
                                  turn="t-1", message="m-1")
    assert reply.applied is True
    assert set(reply.updated_fields) == {"city", "occupation", "interests"}
    assert reply.training_level == pytest.approx(0.2)

    profile = (await insight.profile(user)).profile
    assert MessageToDict(profile.insights) == {"city": "Lisbon", "occupation": "nurse", "interests": ["hiking", "jazz"]}
    provenance = MessageToDict(profile.provenance)
    assert set(provenance) == {"city", "occupation", "interests"}
    for entry in provenance.values():
        assert entry == {"sources": ["m-1"], "confidence": 0.6, "updated_at": OCCURRED_AT.isoformat()}
    assert profile.training_level == pytest.approx(0.2)
    assert profile.updated_at.ToDatetime(tzinfo=UTC) > OCCURRED_AT

    row = await db.fetchrow("SELECT city, occupation, mbti, interests, training_level FROM insight.profiles "
                            "WHERE user_id = $1", user)
    assert dict(row) == {"city": "lisbon", "occupation": "nurse", "mbti": None, "interests": ["hiking", "jazz"],
                         "training_level": Decimal("0.200")}
    events = await events_of(db, "t-1")
    assert [(e["stage"], e["status"], e["model"]) for e in events] == [("rules", "ok", "rules")]
    assert events[0]["payload"]["fields"]["city"] == {"value": "Lisbon", "confidence": 0.6, "correction": False}


async def test_statements_about_others_are_recorded_as_empty_runs(insight: Insight, db) -> None:
    user = uuid.uuid4()
    reply = await insight.extract(user, "You live in Paris, right? My sister lives in Rome.", turn="t-other")
    assert reply.applied is True and list(reply.updated_fields) == [] and reply.training_level == 0
    assert await insight.values(user) == {}
    assert [(e["stage"], e["status"]) for e in await events_of(db, "t-other")] == [("rules", "empty")]
    assert await db.fetchval("SELECT count(*) FROM insight.profiles") == 0


async def test_a_redelivered_turn_is_applied_once(insight: Insight, db) -> None:
    user = uuid.uuid4()
    first = await insight.extract(user, "I live in Porto.", turn="t-dup", message="m-1")
    again = await insight.extract(user, "I love chess.", turn="t-dup", message="m-1")
    racing = await asyncio.gather(*(insight.extract(user, "I love jazz.", turn="t-race", message="m-2")
                                    for _ in range(5)))
    assert first.applied is True and again.applied is False
    assert again.training_level == pytest.approx(0.05) and list(again.updated_fields) == []
    assert sorted(r.applied for r in racing) == [False] * 4 + [True]
    assert await insight.values(user) == {"city": "Porto", "interests": ["jazz"]}
    counts = await db.fetchrow("SELECT (SELECT count(*) FROM insight.extraction_events) AS events, "
                               "(SELECT count(*) FROM insight.extracted_turns) AS turns")
    assert dict(counts) == {"events": 2, "turns": 2}


async def test_merge_rules_confidence_correction_confirmation_union_and_nested(insight: Insight, db) -> None:
    user = uuid.uuid4()

    async def city_after(text: str, message: str) -> tuple[str, list[str], float]:
        await insight.extract(user, text, message=message)
        entry = (await insight.provenance(user))["city"]
        return (await insight.values(user))["city"], entry["sources"], entry["confidence"]

    assert await city_after("I live in Porto.", "m-1") == ("Porto", ["m-1"], 0.6)
    assert await city_after("I live in Braga.", "m-2") == ("Braga", ["m-2"], 0.6)  # equal confidence replaces
    assert await city_after("Actually I moved to Lisbon.", "m-3") == ("Lisbon", ["m-3"], 0.9)  # a correction
    assert await city_after("I live in Faro.", "m-4") == ("Lisbon", ["m-3"], 0.9)  # lower confidence: ignored
    assert await city_after("I live in lisbon", "m-5") == ("Lisbon", ["m-3", "m-5"], 0.9)  # a confirmation
    assert await db.fetchval("SELECT city FROM insight.profiles WHERE user_id = $1", user) == "lisbon"

    await insight.extract(user, "I love jazz and chess.", message="m-6")
    await insight.extract(user, "I enjoy hiking and Jazz.", message="m-7")
    await insight.extract(user, "I'm looking for a woman between 25 and 35.", message="m-8")
    await insight.extract(user, "Smoking is a dealbreaker for me.", message="m-9")
    values, provenance = await insight.values(user), await insight.provenance(user)
    assert values["interests"] == ["chess", "hiking", "jazz"]  # unioned, deduplicated, most recent last
    assert provenance["interests"]["sources"] == ["m-6", "m-7"]
    assert values["matching_preferences"] == {"preferred_gender": "female", "age_range": [25, 35],
                                              "deal_breakers": ["Smoking"]}  # merged key by key
    assert provenance["matching_preferences"]["sources"] == ["m-8", "m-9"]
    assert await db.fetchval("SELECT interests FROM insight.profiles WHERE user_id = $1", user) == [
        "chess", "hiking", "jazz"]


INTERESTS = ("chess", "jazz", "hiking", "surfing", "baking", "pottery", "climbing", "cycling", "swimming", "painting",
             "poetry", "gardening", "knitting", "karaoke", "sailing", "skiing", "fishing", "camping", "yoga", "tennis")


async def test_twenty_concurrent_turns_of_one_user_lose_no_update(insight: Insight, db) -> None:
    user = uuid.uuid4()
    replies = await asyncio.gather(*(insight.extract(user, f"I love {interest}.", message=f"m-{n}")
                                     for n, interest in enumerate(INTERESTS)))
    assert all(r.applied for r in replies)
    values, provenance = await insight.values(user), await insight.provenance(user)
    assert sorted(values["interests"]) == sorted(INTERESTS)
    assert sorted(provenance["interests"]["sources"]) == sorted(f"m-{n}" for n in range(len(INTERESTS)))
    assert sorted(await db.fetchval("SELECT interests FROM insight.profiles WHERE user_id = $1", user)) == sorted(
        INTERESTS)


BAD_EXTRACTS = [
    ({"user_id": "not-a-uuid"}, "user_id"),
    ({"turn_id": "  "}, "turn_id"),
    ({"turn_id": "t" * 129}, "turn_id"),
    ({"user_message_id": ""}, "user_message_id"),
    ({"user_text": "I live in Lisbon. " * 1000}, "user_text"),
]


async def test_bad_extract_requests_are_invalid_argument_and_persist_nothing(insight: Insight, db) -> None:
    for change, field in BAD_EXTRACTS:
        request = pb.ExtractTurnRequest(**{"turn_id": "t-bad", "user_id": str(uuid.uuid4()), "user_message_id": "m-1",
                                           "user_text": "I live in Lisbon.", **change})
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await insight.stub.ExtractTurn(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in info.value.details()
        assert ("rapport-field", field) in tuple(info.value.trailing_metadata() or ())
    for table in ("profiles", "extraction_events", "extracted_turns"):
        assert await db.fetchval(f"SELECT count(*) FROM insight.{table}") == 0


# ---------------------------------------------------------------------------
# the two-stage LLM task


async def test_llm_extraction_runs_facts_then_validated_fields(start_insight: StartInsight, llm_stub: LlmStub,
                                                               db) -> None:
    insight = await start_insight(**llm_stub.env)
    user = uuid.uuid4()
    llm_stub.script.add(answer({"facts": ["The user lives in Porto."]}),
                        answer({"fields": {"city": {"value": "Porto", "confidence": 0.6}}}))
    await insight.extract(user, "I live in Porto.", turn="t-0", message="m-0")
    llm_stub.script.requests.clear()
    llm_stub.script.add(
        answer({"facts": ["The user lives in Lisbon now.", "The user is a nurse.", "The user plans everything."]}),
        answer({"fields": {"city": {"value": "Lisbon", "confidence": 0.8, "correction": True},
                           "occupation": {"value": "nurse", "confidence": 0.7},
                           "mbti_guess": {"value": "infj", "confidence": 0.5, "evidence": "plans everything"}}}))
    reply = await insight.extract(user, "I moved to Lisbon, I'm a nurse and I plan everything.", turn="t-1",
                                  message="m-1", reply="Lisbon suits you.", persona="Mara")
    assert reply.applied is True and set(reply.updated_fields) == {"city", "occupation", "mbti_guess"}
    assert await insight.values(user) == {"city": "Lisbon", "occupation": "nurse", "mbti_guess": "INFJ"}
    provenance = await insight.provenance(user)
    assert provenance["city"]["sources"] == ["m-1"] and provenance["city"]["confidence"] == 0.8
    assert provenance["mbti_guess"]["evidence"] == "plans everything"

    facts, fields = llm_stub.script.requests
    assert facts.model == fields.model == EXTRACTOR_MODEL
    assert facts.params["response_format"] == {"type": "json_object"}
    assert "Mara" in facts.messages[0]["content"] and "Never record anything about Mara" in facts.messages[0]["content"]
    assert "I moved to Lisbon" in facts.messages[1]["content"] and "Lisbon suits you." in facts.messages[1]["content"]
    assert "The user is a nurse." in fields.messages[1]["content"]
    assert '"city": "Porto"' in fields.messages[1]["content"]  # stage 2 sees the current profile

    events = await events_of(db, "t-1")
    assert [(e["stage"], e["status"], e["model"]) for e in events] == [
        ("facts", "ok", EXTRACTOR_MODEL), ("fields", "ok", EXTRACTOR_MODEL)]
    assert events[0]["payload"] == {"facts": ["The user lives in Lisbon now.", "The user is a nurse.",
                                              "The user plans everything."]}
    assert events[1]["payload"]["fields"]["mbti_guess"]["value"] == "INFJ"
    assert all(e["usage"].get("total_tokens", 0) > 0 for e in events)


async def test_llm_output_that_fails_validation_is_recorded_and_not_merged(
        start_insight: StartInsight, llm_stub: LlmStub, db) -> None:
    insight = await start_insight(**llm_stub.env)
    user = uuid.uuid4()
    llm_stub.script.add(
        ScriptedResponse(kind="invalid_json"),  # t-1, stage 1
        answer({"facts": ["The user lives in Lisbon."]}),  # t-2, stage 1
        answer({"fields": {"city": {"value": "Lisbon", "confidence": 0.9},
                           "mbti_guess": {"value": "ABCD", "confidence": 0.9}}}),  # t-2, stage 2: one bad field
        answer({"facts": []}),  # t-3: nothing about the user
    )
    for turn in ("t-1", "t-2", "t-3"):
        reply = await insight.extract(user, "I live in Lisbon, you know.", turn=turn)
        assert reply.applied is True and list(reply.updated_fields) == []
    assert await insight.values(user) == {}
    assert len(llm_stub.script.requests) == 4
    assert [(e["stage"], e["status"]) for e in await events_of(db, "t-1")] == [("facts", "parse_error")]
    t2 = await events_of(db, "t-2")
    assert [(e["stage"], e["status"]) for e in t2] == [("facts", "ok"), ("fields", "parse_error")]
    assert "mbti_guess" in t2[1]["payload"]["error"] and "ABCD" in t2[1]["payload"]["raw"]
    assert [(e["stage"], e["status"]) for e in await events_of(db, "t-3")] == [("facts", "empty")]


async def test_llm_upstream_error_is_recorded_and_the_turn_retried(start_insight: StartInsight, llm_stub: LlmStub,
                                                                   db) -> None:
    insight = await start_insight(**llm_stub.env)
    user = uuid.uuid4()
    llm_stub.script.add(
        ScriptedResponse(kind="fail", status=503, text="overloaded"),
        answer({"facts": ["The user lives in Lisbon."]}),
        answer({"fields": {"city": {"value": "Lisbon", "confidence": 0.8}}}))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await insight.extract(user, "I live in Lisbon.", turn="t-1", message="m-1")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the outbox retries it
    assert await db.fetchval("SELECT count(*) FROM insight.extracted_turns") == 0
    reply = await insight.extract(user, "I live in Lisbon.", turn="t-1", message="m-1")
    assert reply.applied is True and list(reply.updated_fields) == ["city"]
    events = await events_of(db, "t-1")
    assert [(e["stage"], e["status"]) for e in events] == [
        ("facts", "upstream_error"), ("facts", "ok"), ("fields", "ok")]
    assert "overloaded" in events[0]["payload"]["error"]


# ---------------------------------------------------------------------------
# GetProfile rendering, QueryProfiles


async def test_get_profile_renders_full_and_neutral(insight: Insight) -> None:
    user = uuid.uuid4()
    await insight.extract(user, "I live in Lisbon and I work as a nurse. I love jazz. I value honesty and kindness.")
    full = await insight.profile(user, pb.RENDER_MODE_FULL)
    assert full.rendering.splitlines() == ["- City: Lisbon", "- Occupation: nurse", "- Interests: jazz",
                                           "- Relationship values: honesty, kindness"]
    assert list(full.fields_used) == ["city", "occupation", "interests", "love_values"]
    assert full.profile.training_level == pytest.approx(0.35)
    for mode in (pb.RENDER_MODE_NEUTRAL, pb.RENDER_MODE_UNSPECIFIED):
        neutral = await insight.profile(user, mode)
        assert neutral.rendering == "- City: Lisbon\n- Occupation: nurse"
        assert list(neutral.fields_used) == ["city", "occupation"]
        assert neutral.profile.insights == full.profile.insights  # the profile itself is complete

    nobody = await insight.profile(uuid.uuid4())
    assert nobody.rendering == "" and list(nobody.fields_used) == [] and nobody.profile.training_level == 0
    assert MessageToDict(nobody.profile.insights) == {} and not nobody.profile.HasField("updated_at")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await insight.stub.GetProfile(pb.GetProfileRequest(user_id=str(user), mode=7))  # type: ignore[arg-type]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "mode" in info.value.details()


PEOPLE = {
    "ana": "I live in Lisbon and I work as a nurse. I love jazz and hiking. I'm an INFJ.",  # 0.35
    "bruno": "I live in Lisbon and I work as a teacher. I love hiking.",  # 0.2
    "carla": "I live in Porto and I work as a nurse. I love Jazz and hiking.",  # 0.2
    "dora": "I live in LISBON. I love JAZZ. I'm an ENFP.",  # 0.3
}


QUERIES = [  # (filters, the people who match, most complete first)
    ({"city": "Lisbon", "interests_all": ["jazz"]}, ["ana", "dora"]),
    ({"city": " lisbon ", "interests_all": ["Jazz"], "mbti": "infj"}, ["ana"]),
    ({"interests_all": ["hiking"]}, ["ana", "bruno", "carla"]),
    ({"interests_all": ["hiking", "jazz"]}, ["ana", "carla"]),
    ({"occupation": "Nurse"}, ["ana", "carla"]),
    ({"min_training_level": 0.3}, ["ana", "dora"]),
    ({"interests_all": ["hiking"], "limit": 1}, ["ana"]),
    ({"city": "Berlin"}, []),
    ({}, ["ana", "dora", "bruno", "carla"]),
]
BAD_QUERIES = [
    ({"mbti": "ABCD"}, "mbti"),
    ({"limit": -1}, "limit"),
    ({"limit": 201}, "limit"),
    ({"min_training_level": 1.5}, "min_training_level"),
    ({"min_training_level": -0.5}, "min_training_level"),
    ({"city": "   "}, "city"),
    ({"occupation": "x" * 101}, "occupation"),
    ({"interests_all": ["jazz", " "]}, "interests_all"),
    ({"interests_all": [f"i{n}" for n in range(11)]}, "interests_all"),
]


async def test_query_profiles_returns_exactly_the_matching_users(insight: Insight) -> None:
    users = {name: uuid.uuid4() for name in PEOPLE}
    for name, text in PEOPLE.items():
        await insight.extract(users[name], text)
    names = {str(user): name for name, user in users.items()}
    for query, expected in QUERIES:
        reply = await insight.stub.QueryProfiles(pb.QueryProfilesRequest(**query))
        found = [names[p.user_id] for p in reply.profiles]
        assert found[:1] == expected[:1] and sorted(found) == sorted(expected), query
        assert all(p.training_level > 0 and MessageToDict(p.provenance) for p in reply.profiles)


async def test_query_profiles_rejects_bad_filters(insight: Insight) -> None:
    for query, field in BAD_QUERIES:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await insight.stub.QueryProfiles(pb.QueryProfilesRequest(**query))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, query
        assert ("rapport-field", field) in tuple(info.value.trailing_metadata() or ()), query


async def test_query_profiles_sql_can_use_the_indexes(db) -> None:
    """With sequential scans discouraged (the test table is tiny), the planner reaches for the indexes."""
    await db.execute("SET enable_seqscan = off")
    for query, index in ((ProfileQuery(city="Lisbon"), "profiles_city_idx"),
                         (ProfileQuery(interests_all=("jazz", "hiking")), "profiles_interests_idx"),
                         (ProfileQuery(mbti="INFJ"), "profiles_mbti_idx")):
        sql, args = store.profile_query_sql(query.validate())
        plan = "\n".join(row[0] for row in await db.fetch(f"EXPLAIN {sql}", *args))
        assert index in plan, plan


# ---------------------------------------------------------------------------
# snapshots listing, deletion


async def test_list_snapshots_newest_first_with_values_and_provenance(insight: Insight, database_url: str) -> None:
    user = uuid.uuid4()
    pool = await create_pool(database_url, max_size=2)
    sweeper = SnapshotSweeper(pool, SnapshotSchedule.parse())
    first, second = datetime(2025, 5, 1, 15, tzinfo=UTC), datetime(2025, 5, 2, 15, tzinfo=UTC)
    try:
        await insight.extract(user, "I live in Porto.", message="m-1")
        await sweeper.fire(first)
        await insight.extract(user, "Actually I moved to Lisbon. I love jazz.", message="m-2")
        await sweeper.fire(second)
    finally:
        await pool.close()
    reply = await insight.stub.ListSnapshots(pb.ListSnapshotsRequest(user_id=str(user)))
    assert [s.captured_at.ToDatetime(tzinfo=UTC) for s in reply.snapshots] == [second, first]
    assert [MessageToDict(s.insights) for s in reply.snapshots] == [
        {"city": "Lisbon", "interests": ["jazz"]}, {"city": "Porto"}]
    assert MessageToDict(reply.snapshots[1].provenance)["city"]["sources"] == ["m-1"]
    assert [s.training_level for s in reply.snapshots] == pytest.approx([0.15, 0.05])
    limited = await insight.stub.ListSnapshots(pb.ListSnapshotsRequest(user_id=str(user), limit=1))
    assert len(limited.snapshots) == 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await insight.stub.ListSnapshots(pb.ListSnapshotsRequest(user_id=str(user), limit=-1))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_delete_user_data_removes_everything_about_that_user_only(insight: Insight, db,
                                                                       database_url: str) -> None:
    gone, kept = uuid.uuid4(), uuid.uuid4()
    for user in (gone, kept):
        await insight.extract(user, "I live in Lisbon. I love jazz.")
        await insight.extract(user, "I work as a nurse.")
    pool = await create_pool(database_url, max_size=2)
    try:
        await SnapshotSweeper(pool, SnapshotSchedule.parse()).fire(datetime(2025, 5, 1, 15, tzinfo=UTC))
    finally:
        await pool.close()

    reply = await insight.stub.DeleteUserData(pb.DeleteUserDataRequest(user_id=str(gone)))
    assert reply.deleted == 1 + 1 + 2 + 2  # profile, snapshot, two events, two extracted turns
    for table in ("profiles", "snapshots", "extraction_events", "extracted_turns"):
        rows = await db.fetch(f"SELECT DISTINCT user_id FROM insight.{table}")
        assert [row["user_id"] for row in rows] == [kept], table
    assert await insight.values(gone) == {}
    assert (await insight.stub.QueryProfiles(pb.QueryProfilesRequest(city="Lisbon"))).profiles[0].user_id == str(kept)
