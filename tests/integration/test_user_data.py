"""Take out / erase everything about a user through the gateway: every service answers for its own
schema, another user's data is untouched, and another user cannot do it for you."""
from __future__ import annotations

import uuid

from tests.stack import Stack, wait_for


async def _chat_with_memories(stack: Stack, db, user: uuid.UUID) -> str:  # type: ignore[no-untyped-def]
    chat = await stack.start_chat(user)
    await stack.send(user, chat["session_id"], "I live in Lisbon and I work as a nurse.")
    await stack.send(user, chat["session_id"], "I love hiking on weekends.")

    async def post_processed() -> bool:
        pending = await db.fetchval("SELECT count(*) FROM chat.outbox WHERE status <> 'done'")
        return pending == 0 and await db.fetchval("SELECT count(*) FROM chat.outbox") >= 6

    await wait_for(post_processed, timeout=20)
    return chat["session_id"]


async def test_export_then_delete_everything_about_a_user(stack: Stack, db) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    session = await _chat_with_memories(stack, db, alice)
    await _chat_with_memories(stack, db, bob)

    assert (await stack.client.get(f"/comp/user/{alice}/export", headers=stack.headers(bob))).status_code == 403
    exported = (await stack.client.get(f"/comp/user/{alice}/export", headers=stack.headers(alice))).json()
    assert [s["session_id"] for s in exported["sessions"]] == [session]
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant", "user", "assistant"]
    assert exported["memories"] and all(m["user_id"] == str(alice) for m in exported["memories"])
    assert exported["profile"]["insights"]["city"] == "Lisbon"
    assert exported["affinity"][0]["events"]

    assert (await stack.client.delete(f"/comp/user/{alice}/data", headers=stack.headers(bob))).status_code == 403
    response = await stack.client.delete(f"/comp/user/{alice}/data", headers=stack.headers(alice))
    assert response.status_code == 200
    deleted = response.json()["deleted"]
    assert deleted["chat"] >= 1 and deleted["memory"] >= 1 and deleted["insight"] >= 1 and deleted["affinity"] >= 1

    for table, column in (("chat.sessions", "user_id"), ("chat.messages", "user_id"), ("memory.memories", "user_id"),
                          ("insight.profiles", "user_id"), ("affinity.vectors", "user_id")):
        assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", alice) == 0, table
        assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", bob) > 0, table
    memories = (await stack.client.get(f"/comp/user/{alice}/memories", headers=stack.headers(alice))).json()
    assert memories["memories"] == []
    profile = (await stack.client.get(f"/comp/user/{alice}/profile", headers=stack.headers(alice))).json()
    assert profile["insights"] == {} and profile["training_level"] == 0
