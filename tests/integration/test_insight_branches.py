"""The profile follows the conversation's active branch (issue 10), against real Postgres over gRPC: a field
whose every source message is hidden is left out of GetProfile, its rendering and QueryProfiles until a source is
visible again; a late extraction into a hidden message stays hidden; erasing removes fields for good (after a dry
run that changes nothing) and keeps the typed query columns consistent; owners only; deleting the user's data
removes the new tables too."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from rapport.insight.v1 import insight_pb2 as pb
from rapport.insight.v1 import insight_pb2_grpc as pb_grpc
from services.insight.schedule import SnapshotSchedule
from services.insight.snapshots import SnapshotSweeper
from services.servicekit.config import Env
from services.servicekit.db import create_pool
from services.servicekit.service import start_service
from tests.stack import INTERNAL_ENV, internal_channel
from tests.integration.test_insight_service import Insight


@pytest.fixture(name="insight")
async def insight_service(database_url: str) -> AsyncIterator[Insight]:
    service = await start_service("insight", Env({"DATABASE_URL": database_url, "BIND_ADDR": "127.0.0.1:0",
                                                  "SNAPSHOT_DISABLED": "1", **INTERNAL_ENV}), pool_size=5)
    channel = internal_channel(service.address)
    try:
        yield Insight(service, channel, pb_grpc.InsightServiceStub(channel))
    finally:
        await channel.close()
        await service.stop(grace=0.5)


async def hide(insight: Insight, user: uuid.UUID, session: uuid.UUID, *message_ids: str) -> list[str]:
    reply = await insight.stub.SetHiddenMessages(pb.SetHiddenMessagesRequest(
        user_id=str(user), session_id=str(session), hidden_message_ids=list(message_ids)))
    return sorted(reply.hidden_fields)


async def erase(insight: Insight, user: uuid.UUID, *message_ids: str, dry_run: bool = False) -> tuple[list, list]:
    reply = await insight.stub.EraseMessages(pb.EraseMessagesRequest(user_id=str(user), message_ids=list(message_ids),
                                                                     dry_run=dry_run))
    return sorted(reply.removed_fields), sorted(reply.updated_fields)


async def found_by_city(insight: Insight, city: str) -> list[str]:
    reply = await insight.stub.QueryProfiles(pb.QueryProfilesRequest(city=city))
    return [p.user_id for p in reply.profiles]


async def test_a_field_whose_sources_are_all_hidden_leaves_the_profile_until_one_is_visible(insight: Insight) -> None:
    user, session = uuid.uuid4(), uuid.uuid4()
    await insight.extract(user, "I live in Lisbon and I work as a nurse.", message="m1")
    await insight.extract(user, "I love jazz.", message="m2")
    full = await insight.profile(user)
    assert set(MessageToDict(full.profile.insights)) == {"city", "occupation", "interests"}

    assert await hide(insight, user, session, "m1") == ["city", "occupation"]
    hidden = await insight.profile(user)
    assert MessageToDict(hidden.profile.insights) == {"interests": ["jazz"]}
    assert set(MessageToDict(hidden.profile.provenance)) == {"interests"}
    assert "Lisbon" not in hidden.rendering and "nurse" not in hidden.rendering and "jazz" in hidden.rendering
    assert list(hidden.fields_used) == ["interests"]
    assert hidden.profile.training_level == pytest.approx(0.10)  # the visible fields' weights
    assert await found_by_city(insight, "Lisbon") == []
    occupation = await insight.stub.QueryProfiles(pb.QueryProfilesRequest(occupation="nurse"))
    assert list(occupation.profiles) == []
    interests = await insight.stub.QueryProfiles(pb.QueryProfilesRequest(interests_all=["jazz"]))
    assert [MessageToDict(p.insights) for p in interests.profiles] == [{"interests": ["jazz"]}]

    assert await hide(insight, user, session) == []
    back = await insight.profile(user)
    assert MessageToDict(back.profile.insights) == MessageToDict(full.profile.insights)
    assert back.rendering == full.rendering and back.profile.training_level == full.profile.training_level
    assert await found_by_city(insight, "Lisbon") == [str(user)]


async def test_a_field_stays_while_any_source_is_visible_in_any_session(insight: Insight) -> None:
    user, first, second = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await insight.extract(user, "I love jazz.", message="a1")
    await insight.extract(user, "I love chess.", message="b1")
    assert MessageToDict((await insight.profile(user)).profile.provenance)["interests"]["sources"] == ["a1", "b1"]
    assert await hide(insight, user, first, "a1") == []
    assert MessageToDict((await insight.profile(user)).profile.insights)["interests"] == ["jazz", "chess"]
    assert await hide(insight, user, second, "b1") == ["interests"]
    assert "interests" not in MessageToDict((await insight.profile(user)).profile.insights)
    assert await hide(insight, user, first) == []
    assert "interests" in MessageToDict((await insight.profile(user)).profile.insights)


async def test_a_late_extraction_into_a_hidden_message_stays_hidden(insight: Insight) -> None:
    user, session = uuid.uuid4(), uuid.uuid4()
    await hide(insight, user, session, "late")
    reply = await insight.extract(user, "I live in Porto.", message="late")
    assert reply.applied and list(reply.updated_fields) == ["city"] and reply.training_level == 0.0
    assert MessageToDict((await insight.profile(user)).profile.insights) == {}
    assert await found_by_city(insight, "Porto") == []
    assert await hide(insight, user, session) == []
    assert await found_by_city(insight, "Porto") == [str(user)]


async def test_erasing_removes_fields_for_good_after_a_dry_run_and_keeps_the_query_columns(
        insight: Insight, db, database_url: str) -> None:
    user, session = uuid.uuid4(), uuid.uuid4()
    await insight.extract(user, "I live in Lisbon. I love jazz.", message="m1")
    await insight.extract(user, "I love chess.", message="m2")
    await hide(insight, user, session, "m1", "m2")
    pool = await create_pool(database_url, max_size=2)
    try:
        await SnapshotSweeper(pool, SnapshotSchedule.parse()).fire(datetime(2025, 5, 1, 15, tzinfo=UTC))
    finally:
        await pool.close()
    await hide(insight, user, session)
    stored = await db.fetchrow("SELECT insights, city, interests FROM insight.profiles WHERE user_id = $1", user)

    assert await erase(insight, user, "m1", dry_run=True) == (["city"], ["interests"])
    assert await db.fetchrow("SELECT insights, city, interests FROM insight.profiles WHERE user_id = $1",
                             user) == stored
    assert await db.fetchval("SELECT count(*) FROM insight.hidden_messages") == 0
    assert await db.fetchval("SELECT count(*) FROM insight.erased_messages") == 0

    assert await erase(insight, user, "m1") == (["city"], ["interests"])
    profile = await insight.profile(user)
    assert MessageToDict(profile.profile.insights) == {"interests": ["jazz", "chess"]}  # values are not split
    assert MessageToDict(profile.profile.provenance)["interests"]["sources"] == ["m2"]
    assert await found_by_city(insight, "Lisbon") == []
    row = await db.fetchrow("SELECT city, interests, training_level FROM insight.profiles WHERE user_id = $1", user)
    assert row["city"] is None and row["interests"] == ["jazz", "chess"] and float(row["training_level"]) == 0.1
    snapshot = await insight.stub.ListSnapshots(pb.ListSnapshotsRequest(user_id=str(user)))
    assert [MessageToDict(s.insights) for s in snapshot.snapshots] == [{"interests": ["jazz", "chess"]}]
    assert snapshot.snapshots[0].training_level == pytest.approx(0.1)

    # A late extraction of the erased message merges nothing; other messages still do.
    late = await insight.extract(user, "I live in Lisbon.", message="m1")
    assert late.applied and list(late.updated_fields) == []
    assert "city" not in MessageToDict((await insight.profile(user)).profile.insights)
    await insight.extract(user, "I live in Porto.", message="m3")
    assert await found_by_city(insight, "Porto") == [str(user)]


async def test_another_user_can_neither_hide_nor_erase_a_users_profile(insight: Insight, db) -> None:
    alice, mallory, session = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await insight.extract(alice, "I live in Lisbon.", message="m1")
    before = await db.fetchrow("SELECT insights, city FROM insight.profiles WHERE user_id = $1", alice)
    assert await hide(insight, mallory, session, "m1") == []
    assert await erase(insight, mallory, "m1", dry_run=True) == ([], [])
    assert await erase(insight, mallory, "m1") == ([], [])
    assert await db.fetchrow("SELECT insights, city FROM insight.profiles WHERE user_id = $1", alice) == before
    assert await found_by_city(insight, "Lisbon") == [str(alice)]
    await insight.extract(alice, "I love jazz.", message="m2")  # alice's messages are not erased for her
    assert set(MessageToDict((await insight.profile(alice)).profile.insights)) == {"city", "interests"}


@pytest.mark.parametrize("rpc, fields, field", [
    ("SetHiddenMessages", {"user_id": "x"}, "user_id"),
    ("SetHiddenMessages", {"session_id": "nope"}, "session_id"),
    ("SetHiddenMessages", {"hidden_message_ids": [""]}, "hidden_message_ids[0]"),
    ("SetHiddenMessages", {"hidden_message_ids": ["ok", "x" * 129]}, "hidden_message_ids[1]"),
    ("EraseMessages", {"user_id": ""}, "user_id"),
    ("EraseMessages", {"message_ids": []}, "message_ids"),
    ("EraseMessages", {"message_ids": [" "]}, "message_ids[0]"),
])
async def test_bad_branch_requests_are_invalid_argument_and_change_nothing(insight: Insight, db, rpc: str,
                                                                          fields: dict, field: str) -> None:
    user = uuid.uuid4()
    await insight.extract(user, "I live in Lisbon.", message="m1")
    if rpc == "SetHiddenMessages":
        request = pb.SetHiddenMessagesRequest(**{"user_id": str(user), "session_id": str(uuid.uuid4()),
                                                 "hidden_message_ids": ["m1"], **fields})
    else:
        request = pb.EraseMessagesRequest(**{"user_id": str(user), "message_ids": ["m1"], **fields})
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await getattr(insight.stub, rpc)(request)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (failure.value.details() or "")
    assert await found_by_city(insight, "Lisbon") == [str(user)]
    assert await db.fetchval("SELECT count(*) FROM insight.hidden_messages") == 0


async def test_delete_user_data_removes_the_hidden_sets_and_tombstones(insight: Insight, db) -> None:
    user, session = uuid.uuid4(), uuid.uuid4()
    await insight.extract(user, "I live in Lisbon.", message="m1")
    await hide(insight, user, session, "m1")
    await erase(insight, user, "gone")
    reply = await insight.stub.DeleteUserData(pb.DeleteUserDataRequest(user_id=str(user)))
    assert reply.deleted == 5  # profile, extraction event, extracted turn, hidden message, erased message
    for table in ("profiles", "hidden_messages", "erased_messages", "extracted_turns"):
        assert await db.fetchval(f"SELECT count(*) FROM insight.{table}") == 0, table
