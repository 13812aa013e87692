"""Conversations as an append-only event log (issue 10), through the gateway with the real services: swipe,
rewind and branch, state following the branch (affinity, memory), surgical delete with its impact preview.
The offline responder answers; every wait is on a condition (the outbox delivering), never a sleep."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from rapport.memory.v1 import memory_pb2, memory_pb2_grpc
from tests.stack import Stack, internal_channel, new_client_msg_id, reply_text, sse_frames, wait_for

AXES = ("warmth", "trust", "intimacy", "intrigue", "patience", "tension")
TURNS = [
    "Hi! I'm Sam and I live in Lisbon.",
    "Thank you so much, you are wonderful and I really trust you.",
    "I adopted a dog named Rex last week.",
    "Rex loves chasing pigeons in the park.",
    "My sister Marta is visiting in June.",
    "I work night shifts as a nurse.",
]


async def history(stack: Stack, user: uuid.UUID, session_id: str) -> dict[str, Any]:
    response = await stack.client.get(f"/comp/chat/{session_id}/history", params={"limit": 50},
                                      headers=stack.headers(user))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def settled(db: Any) -> None:
    """Every outbox job delivered (post-process and the state that follows a branch)."""
    async def done() -> bool:
        rows = await db.fetch("SELECT status, last_error FROM chat.outbox")
        assert not [r for r in rows if r["status"] == "dead"], rows
        return bool(rows) and all(r["status"] == "done" for r in rows)

    await wait_for(done, timeout=30)


async def vector(db: Any, session_id: str) -> dict[str, float]:
    row = await db.fetchrow(f"SELECT {', '.join(AXES)} FROM affinity.vectors WHERE session_id = $1",
                            uuid.UUID(session_id))
    return {axis: row[axis] for axis in AXES}


def close(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(abs(a[axis] - b[axis]) < 1e-4 for axis in AXES)


async def regenerate(stack: Stack, user: uuid.UUID, session_id: str, message_id: str) -> list[dict[str, Any]]:
    frames = []
    async with stack.client.stream("POST", f"/comp/chat/{session_id}/messages/{message_id}/regenerate",
                                   json={"client_msg_id": new_client_msg_id()}, headers=stack.headers(user)) as r:
        assert r.status_code == 200, await r.aread()
        async for frame in sse_frames(r.aiter_lines()):
            frames.append(frame)
    return frames


async def recall(stack: Stack, user: uuid.UUID, instance_id: str, query: str) -> list[memory_pb2.RecalledMemory]:
    async with internal_channel(stack.address("memory")) as channel:
        reply = await memory_pb2_grpc.MemoryServiceStub(channel).Recall(memory_pb2.RecallRequest(
            user_id=str(user), instance_id=instance_id, query=query, memory_scope="full", top=20))
    return [*reply.profile, *reply.relationship]


async def test_swipe_branch_state_follows_the_branch_and_the_old_branch_comes_back_whole(stack: Stack, db) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    session, instance = chat["session_id"], chat["instance_id"]
    after_turn: list[dict[str, float]] = []
    for text in TURNS:
        frames = await stack.send(user, session, text)
        assert reply_text(frames)
        await settled(db)
        after_turn.append(await vector(db, session))
    six = (await history(stack, user, session))["messages"]
    assert len(six) == 12 and all(m["parent_id"] == (six[i - 1]["id"] if i else None) for i, m in enumerate(six))

    # regenerate turn 6 twice: three alternatives, one post-process
    last_reply = six[-1]
    jobs_before = await db.fetchval("SELECT count(*) FROM chat.outbox WHERE call = 'post_process'")
    for _ in range(2):
        assert reply_text(await regenerate(stack, user, session, last_reply["id"]))
    await settled(db)
    swiped = (await history(stack, user, session))["messages"]
    assert [m["id"] for m in swiped[:11]] == [m["id"] for m in six[:11]]
    assert len(swiped[-1]["alternatives"]) == 3 and swiped[-1]["alternative_index"] == 2
    assert swiped[-1]["alternatives"][0] == last_reply["id"]
    assert await db.fetchval("SELECT count(*) FROM chat.outbox WHERE call = 'post_process'") == jobs_before
    old_vector = await vector(db, session)
    old_ids = [m["id"] for m in swiped]
    rex = [m for m in await recall(stack, user, instance, "Rex the dog chasing pigeons") if "Rex" in m.content]
    assert rex, "the turns about Rex made memories"
    later_ids = {m["id"] for m in six[4:]}
    assert all(set(m.source_message_ids) <= later_ids for m in rex)

    # branch from message 4: the history is messages 1–4, affinity is as after turn 2, Rex is not recalled
    response = await stack.client.post(f"/comp/chat/{session}/branches", json={"from_message_id": six[3]["id"]},
                                       headers=stack.headers(user))
    assert response.status_code == 200, response.text
    branch = response.json()["branch_id"]
    await settled(db)
    shown = await history(stack, user, session)
    assert shown["branch_id"] == branch and [m["id"] for m in shown["messages"]] == [m["id"] for m in six[:4]]
    assert close(await vector(db, session), after_turn[1])
    assert not [m for m in await recall(stack, user, instance, "Rex the dog chasing pigeons") if m.id in
                {r.id for r in rex}]

    # two new turns on the branch
    for text in ("Let's talk about books instead.", "My favourite is Piranesi."):
        assert reply_text(await stack.send(user, session, text))
    await settled(db)
    on_branch = (await history(stack, user, session))["messages"]
    assert len(on_branch) == 8 and on_branch[4]["parent_id"] == six[3]["id"]

    # the old branch, activated again: its 12 messages, its vector and its memories, exactly
    branches = (await stack.client.get(f"/comp/chat/{session}/branches", headers=stack.headers(user))).json()
    old = next(b for b in branches["branches"] if b["branch_id"] != branch)
    assert old["message_count"] == 12 and not old["active"]
    response = await stack.client.post(f"/comp/chat/{session}/branches/{old['branch_id']}/activate",
                                       headers=stack.headers(user))
    assert response.status_code == 200, response.text
    await settled(db)
    assert [m["id"] for m in (await history(stack, user, session))["messages"]] == old_ids
    assert close(await vector(db, session), old_vector)
    back = {m.id for m in await recall(stack, user, instance, "Rex the dog chasing pigeons")}
    assert {m.id for m in rex} <= back


async def test_a_surgical_delete_previews_then_erases_everywhere(stack: Stack, db) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    session, instance = chat["session_id"], chat["instance_id"]
    for text in ("Hello there, how are you today?", "Thank you so much, you are wonderful and I really trust you.",
                 "I adopted a dog named Rex last week."):
        await stack.send(user, session, text)
        await settled(db)
    messages = (await history(stack, user, session))["messages"]
    target = messages[4]  # "I adopted a dog named Rex last week."
    assert target["role"] == "user" and "Rex" in target["content"]
    before = await vector(db, session)

    url = f"/comp/chat/{session}/messages/{target['id']}"
    preview = await stack.client.delete(url, params={"dry_run": "true"}, headers=stack.headers(user))
    assert preview.status_code == 200, preview.text
    impact = preview.json()
    assert impact["dry_run"] and impact["unavailable"] == []
    assert impact["erased_message_ids"] == [target["id"], messages[5]["id"]]  # the message and its reply
    assert impact["leaving_active_branch"] == impact["erased_message_ids"]
    assert any("Rex" in m["content"] for m in impact["memories"])
    assert impact["affinity_before"] and impact["affinity_after"]
    assert any(abs(impact["affinity_before"][a] - impact["affinity_after"][a]) > 1e-6 for a in AXES)
    assert await db.fetchval("SELECT content FROM chat.messages WHERE id = $1", target["id"]) == target["content"]

    applied = await stack.client.delete(url, headers=stack.headers(user))
    assert applied.status_code == 200 and applied.json()["dry_run"] is False
    await settled(db)
    row = await db.fetchrow("SELECT content, deleted_at FROM chat.messages WHERE id = $1", target["id"])
    assert row["content"] == "" and row["deleted_at"] is not None  # the tombstone keeps its id and place
    assert [m["id"] for m in (await history(stack, user, session))["messages"]] == [m["id"] for m in messages[:4]]
    memory_ids = [m["id"] for m in impact["memories"]]
    assert await db.fetchval("SELECT count(*) FROM memory.memories WHERE id = ANY($1::uuid[])", memory_ids) == 0
    assert not [m for m in await recall(stack, user, instance, "Rex the dog") if "Rex" in m.content]
    now = await vector(db, session)
    assert close(now, {a: impact["affinity_after"][a] for a in AXES}) and not close(now, before)
    texts = " ".join(str(r[0]) for r in await db.fetch(
        "SELECT frames::text FROM chat.turns UNION ALL SELECT explain::text FROM chat.turns "
        "UNION ALL SELECT content FROM chat.messages UNION ALL SELECT coalesce(encode(request, 'escape'), '') "
        "FROM chat.outbox UNION ALL SELECT reason FROM affinity.events UNION ALL SELECT content FROM memory.memories"))
    assert "Rex" not in texts, "the deleted message's words survive somewhere"
    events = (await stack.client.get(f"/comp/chat/{session}/events", headers=stack.headers(user))).json()["events"]
    deleted = [e for e in events if e["kind"] == "message_deleted"]
    assert len(deleted) == 1 and deleted[0]["data"]["message_ids"] == impact["erased_message_ids"]

    again = await stack.client.delete(url, headers=stack.headers(user))
    assert again.status_code == 404


async def test_the_event_log_api_refuses_other_users_and_unknown_ids(stack: Stack, db) -> None:
    user, stranger = uuid.uuid4(), uuid.uuid4()
    chat = await stack.start_chat(user)
    session = chat["session_id"]
    await stack.send(user, session, "Hello!")
    message = (await history(stack, user, session))["messages"][0]["id"]
    calls = [
        ("POST", f"/comp/chat/{session}/messages/{message}/select", None),
        ("POST", f"/comp/chat/{session}/branches", {"from_message_id": message}),
        ("GET", f"/comp/chat/{session}/branches", None),
        ("GET", f"/comp/chat/{session}/events", None),
        ("DELETE", f"/comp/chat/{session}/messages/{message}?dry_run=true", None),
    ]
    for method, url, body in calls:
        response = await stack.client.request(method, url, json=body, headers=stack.headers(stranger))
        assert response.status_code == 403, (url, response.text)
        assert message not in response.text and "Hello" not in response.text
    unknown = await stack.client.post(f"/comp/chat/{session}/branches", json={"from_message_id": "nope"},
                                      headers=stack.headers(user))
    assert unknown.status_code == 404
    missing = await stack.client.post(f"/comp/chat/{session}/branches/{uuid.uuid4()}/activate",
                                      headers=stack.headers(user))
    assert missing.status_code == 404
    retry_id = "branch-request-1"
    first = await stack.client.post(f"/comp/chat/{session}/branches",
                                    json={"from_message_id": message, "client_request_id": retry_id},
                                    headers=stack.headers(user))
    second = await stack.client.post(f"/comp/chat/{session}/branches",
                                     json={"from_message_id": message, "client_request_id": retry_id},
                                     headers=stack.headers(user))
    assert first.json() == second.json()  # idempotent by the client's request id
    assert await db.fetchval("SELECT count(*) FROM chat.branches WHERE session_id = $1", uuid.UUID(session)) == 2


@pytest.mark.parametrize("what", ["branch", "delete"])
async def test_branching_from_or_deleting_a_message_being_answered_is_409(stack: Stack, db, what: str) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    session = chat["session_id"]
    await stack.send(user, session, "Hello!")
    message = (await history(stack, user, session))["messages"][0]["id"]
    # a turn that is still running on the session (as if its reply were being streamed)
    await db.execute("UPDATE chat.turns SET status = 'running' WHERE session_id = $1", uuid.UUID(session))
    if what == "branch":
        response = await stack.client.post(f"/comp/chat/{session}/branches", json={"from_message_id": message},
                                           headers=stack.headers(user))
    else:
        response = await stack.client.delete(f"/comp/chat/{session}/messages/{message}", headers=stack.headers(user))
    assert response.status_code == 409 and response.json()["code"] == "conflict"


async def test_a_branch_from_the_very_start_says_the_first_message_differently(stack: Stack, db) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    session = chat["session_id"]
    await stack.send(user, session, "Hi! I'm Sma.")
    old = [m["id"] for m in (await history(stack, user, session))["messages"]]
    response = await stack.client.post(f"/comp/chat/{session}/branches", json={}, headers=stack.headers(user))
    assert response.status_code == 200, response.text
    assert (await history(stack, user, session))["messages"] == []
    await stack.send(user, session, "Hi! I'm Sam.")
    shown = (await history(stack, user, session))["messages"]
    assert shown[0]["content"] == "Hi! I'm Sam." and shown[0]["parent_id"] is None and len(shown) == 2
    branches = (await stack.client.get(f"/comp/chat/{session}/branches", headers=stack.headers(user))).json()
    old_branch = next(b for b in branches["branches"] if not b["active"])
    await stack.client.post(f"/comp/chat/{session}/branches/{old_branch['branch_id']}/activate",
                            headers=stack.headers(user))
    assert [m["id"] for m in (await history(stack, user, session))["messages"]] == old
