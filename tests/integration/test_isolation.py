"""Isolation: for every route, user A with B's ids gets 403/404 and learns nothing about B."""
from __future__ import annotations

import uuid

from tests.stack import Stack, new_client_msg_id, wait_for


async def test_every_route_refuses_another_users_ids(stack: Stack, db) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    chat = await stack.start_chat(bob)
    frames = await stack.send(bob, chat["session_id"], "My secret: I live in Reykjavik and I'm a pilot.")

    async def bob_remembered() -> bool:
        return await db.fetchval("SELECT count(*) FROM memory.memories WHERE user_id = $1", bob) > 0

    await wait_for(bob_remembered, timeout=20)
    memory_id = await db.fetchval("SELECT id FROM memory.memories WHERE user_id = $1 LIMIT 1", bob)
    sid, message_id = chat["session_id"], frames[0]["message_id"]
    as_alice = stack.headers(alice)
    requests = [
        ("GET", f"/comp/chat/{sid}/history", None),
        ("POST", f"/comp/chat/{sid}/message/stream", {"content": "hi", "client_msg_id": new_client_msg_id()}),
        ("GET", f"/comp/chat/{bob}/sessions", None),
        ("GET", f"/comp/user/{bob}/profile", None),
        ("POST", f"/comp/chat/{sid}/event/gift", {"deltas": {"warmth": 0.1}}),
        ("GET", f"/comp/chat/{sid}/gifts", None),
        ("GET", f"/comp/user/{bob}/memories", None),
        ("DELETE", f"/comp/user/{bob}/memories/{memory_id}", None),
        ("DELETE", f"/comp/user/{alice}/memories/{memory_id}", None),
        ("GET", f"/comp/user/{bob}/export", None),
        ("DELETE", f"/comp/user/{bob}/data", None),
        ("GET", f"/comp/chat/{sid}/messages/{message_id}/explain", None),
        ("POST", "/comp/chat/start", {"instance_id": chat["instance_id"]}),
    ]
    for method, path, body in requests:
        response = await stack.client.request(method, path, json=body, headers=as_alice)
        assert response.status_code in (403, 404), (method, path, response.status_code, response.text)
        text = response.text
        assert "Reykjavik" not in text and "pilot" not in text, (method, path)
    assert await db.fetchval("SELECT count(*) FROM memory.memories WHERE user_id = $1 AND deleted_at IS NULL",
                             bob) > 0
    assert await db.fetchval("SELECT count(*) FROM chat.messages WHERE user_id = $1", bob) == 2
    assert await db.fetchval("SELECT count(*) FROM chat.messages WHERE user_id = $1", alice) == 0
