"""A user's chat data: taken out (export) or erased (delete my data)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from . import outbox
from .rows import Conn


async def export_chat(conn: Conn, user_id: uuid.UUID) -> dict[str, Any]:
    sessions = await conn.fetch(
        """SELECT s.id, p.name AS persona_name, s.started_at, s.last_active_at, s.is_demo, s.usage, s.cost
           FROM chat.sessions s JOIN chat.persona_instances i ON i.id = s.instance_id
           JOIN chat.personas p ON p.id = i.persona_id WHERE s.user_id = $1 ORDER BY s.started_at""",
        user_id,
    )
    messages = await conn.fetch(
        "SELECT id, session_id, role, kind, content, sent_at, model FROM chat.messages WHERE user_id = $1 ORDER BY id",
        user_id,
    )
    return {
        "sessions": [
            {
                "session_id": str(r["id"]),
                "persona_name": r["persona_name"],
                "started_at": r["started_at"].isoformat(),
                "last_active_at": r["last_active_at"].isoformat(),
                "is_demo": r["is_demo"],
                "usage": r["usage"],
                "cost": r["cost"],
            }
            for r in sessions
        ],
        "messages": [
            {
                "id": r["id"],
                "session_id": str(r["session_id"]),
                "role": r["role"],
                "kind": r["kind"],
                "content": r["content"],
                "sent_at": r["sent_at"].isoformat(),
                "model": r["model"],
            }
            for r in messages
        ],
    }


async def delete_pending_jobs(conn: Conn, user_id: uuid.UUID) -> None:
    """First step of "delete my data": pending post-process jobs would recreate what is erased."""
    await outbox.delete_pending_for_user(conn, user_id)


async def delete_chat(pool: asyncpg.Pool, user_id: uuid.UUID) -> int:
    """Erase the user's instances, sessions (their messages, turns, events, branches and judge audits cascade),
    API keys and every post-process job → instances removed."""
    async with pool.acquire() as conn, conn.transaction():
        result = await conn.execute("DELETE FROM chat.persona_instances WHERE user_id = $1", user_id)
        await conn.execute("DELETE FROM chat.sessions WHERE user_id = $1", user_id)  # messages, turns, events…
        await conn.execute("DELETE FROM chat.api_keys WHERE user_id = $1", user_id)
        await outbox.delete_for_user(conn, user_id)  # delivered jobs too: their requests hold the user's words
    return int(result.split()[-1])
