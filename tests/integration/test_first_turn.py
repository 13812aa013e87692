"""The first turn end to end through the gateway: personas, start, stream, history, post-process."""
from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.stack import Stack, new_client_msg_id, reply_text, wait_for


async def test_turn_streams_frames_persists_both_messages_and_runs_post_process(stack: Stack, db) -> None:
    user = uuid.uuid4()
    personas = await stack.personas(user)
    assert len(personas) >= 3 and all({"id", "name"} <= set(p) for p in personas)
    chat = await stack.start_chat(user)
    assert chat["is_new"] is True and chat["persona_name"]

    frames = await stack.send(user, chat["session_id"], "Hi! I live in Lisbon and I work as a nurse.")
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "meta" and kinds[-2:] == ["done", "final"]
    assert set(kinds[1:-2]) == {"delta"}
    meta, done = frames[0], frames[-2]
    assert meta["action_type"] == "reply" and meta["model"] == "rapport-offline-responder"
    assert done["message_id"] == meta["message_id"] and done["truncated"] is False
    assert frames[-1]["degraded"] == [] and len(frames[-1]["trace_id"]) == 32
    text = reply_text(frames)
    assert text.strip()

    history = (await stack.client.get(f"/comp/chat/{chat['session_id']}/history",
                                      headers=stack.headers(user))).json()
    assert history["total"] == 2
    assert [(m["role"], m["content"]) for m in history["messages"]] == [
        ("user", "Hi! I live in Lisbon and I work as a nurse."), ("assistant", text)]
    assert history["messages"][1]["id"] == meta["message_id"]

    async def post_processed() -> bool:
        rows = await db.fetch("SELECT target, status FROM chat.outbox")
        return len(rows) == 3 and all(r["status"] == "done" for r in rows)

    await wait_for(post_processed)
    assert await db.fetchval("SELECT count(*) FROM affinity.events WHERE kind = 'message'") == 1
    assert await db.fetchval("SELECT count(*) FROM memory.ingested_turns") == 1


async def test_resuming_returns_the_same_session_unless_force_new(stack: Stack) -> None:
    user = uuid.uuid4()
    first = await stack.start_chat(user)
    again = await stack.start_chat(user)
    fresh = await stack.start_chat(user, force_new=True)
    assert again["session_id"] == first["session_id"] and again["is_new"] is False
    assert fresh["session_id"] != first["session_id"] and fresh["is_new"] is True
    assert fresh["instance_id"] == first["instance_id"]


@pytest.mark.parametrize("body, field", [
    ({"content": "hello"}, "client_msg_id"),
    ({"content": "x" * 4097, "client_msg_id": "c" * 26}, "content"),
    ({"content": "", "client_msg_id": "c" * 26}, "content"),
    ({"content": "hi", "client_msg_id": "short"}, "client_msg_id"),
    ({"content": "hi", "client_msg_id": "has spaces in it 0123456789"}, "client_msg_id"),
    ({"content": "nul \u0000 inside", "client_msg_id": "c" * 26}, None),
    ({"content": "lone \ud800 surrogate", "client_msg_id": "c" * 26}, None),
])
async def test_bad_messages_get_400_and_persist_nothing(stack: Stack, db, body: dict, field: str | None) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    response = await stack.client.post(f"/comp/chat/{chat['session_id']}/message/stream",
                                       content=json.dumps(body).encode(),  # ASCII escapes, lone surrogates included
                                       headers={**stack.headers(user), "content-type": "application/json"})
    assert response.status_code == 400
    payload = response.json()
    assert payload["code"] == "invalid_payload" and payload.get("field") == field
    assert set(payload) >= {"code", "message", "user_message"}
    assert await db.fetchval("SELECT count(*) FROM chat.messages") == 0
    assert await db.fetchval("SELECT count(*) FROM chat.turns") == 0


async def test_error_contract_for_auth_json_and_unknown_things(stack: Stack, db) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    cases = [
        (stack.client.get("/comp/personas"), 401, "unauthorized"),
        (stack.client.get("/comp/personas", headers={"Authorization": "Bearer not-a-jwt"}), 401, "unauthorized"),
        (stack.client.post("/comp/chat/start", content=b"{nope", headers={**stack.headers(user),
                                                                            "content-type": "application/json"}),
         400, "invalid_payload"),
        (stack.client.post("/comp/chat/start", json={"persona_id": str(uuid.uuid4())}, headers=stack.headers(user)),
         404, "not_found"),
        (stack.client.post("/comp/chat/start", json={"persona_id": "not-a-uuid"}, headers=stack.headers(user)),
         400, "invalid_payload"),
        (stack.client.get(f"/comp/chat/{uuid.uuid4()}/history", headers=stack.headers(user)), 404, "not_found"),
        (stack.client.get(f"/comp/chat/{chat['session_id']}/history", headers=stack.headers(uuid.uuid4())),
         403, "forbidden"),
        (stack.client.post("/comp/chat/start", content=b"persona", headers={**stack.headers(user),
                                                                              "content-type": "text/plain"}),
         415, "unsupported_media_type"),
        (stack.client.post("/comp/chat/start", content=b"{" + b" " * 70000 + b"}",
                           headers={**stack.headers(user), "content-type": "application/json"}), 413, "too_large"),
    ]
    for request, status, code in cases:
        response: httpx.Response = await request
        assert response.status_code == status, response.text
        body = response.json()
        assert body["code"] == code and body["message"] and body["user_message"]
    other = uuid.uuid4()
    response = await stack.client.post(f"/comp/chat/{chat['session_id']}/message/stream",
                                       json={"content": "hi", "client_msg_id": new_client_msg_id()},
                                       headers=stack.headers(other))
    assert response.status_code == 403
    assert await db.fetchval("SELECT count(*) FROM chat.messages") == 0


async def test_repeating_a_finished_turn_replays_identical_frames_without_new_rows(stack: Stack, db) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    client_msg_id = new_client_msg_id()
    first = await stack.send(user, chat["session_id"], "Tell me about the stars tonight.", client_msg_id)
    second = await stack.send(user, chat["session_id"], "Tell me about the stars tonight.", client_msg_id)
    assert second == first
    assert await db.fetchval("SELECT count(*) FROM chat.messages") == 2


async def test_readyz_reports_every_peer(stack: Stack) -> None:
    response = await stack.client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["peers"] == {name: "SERVING" for name in ("orchestrator", "affinity", "memory", "insight")}
    await stack.services["insight"].grpc.set_serving(False)
    response = await stack.client.get("/readyz")
    assert response.status_code == 503 and response.json()["peers"]["insight"] == "NOT_SERVING"
