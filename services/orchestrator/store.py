"""asyncpg queries for the `chat` schema: personas, instances, sessions, messages, turns, outbox."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from ulid import ULID


def new_message_id() -> str:
    return str(ULID())


@dataclass(frozen=True)
class SessionRow:
    id: uuid.UUID
    user_id: uuid.UUID
    instance_id: uuid.UUID
    persona_id: uuid.UUID
    persona_name: str
    is_demo: bool
    message_count: int
    user_message_count: int


async def upsert_persona(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    name: str,
    system_prompt: str,
    tip_personality: str,
    art_metadata: dict[str, Any],
    card: dict[str, Any] | None,
    source: str,
) -> tuple[uuid.UUID, bool]:
    """Idempotent upsert by name → (id, created)."""
    row = await conn.fetchrow(
        """INSERT INTO chat.personas (name, system_prompt, tip_personality, art_metadata, card, source)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (name) DO UPDATE SET system_prompt = EXCLUDED.system_prompt,
               tip_personality = EXCLUDED.tip_personality, art_metadata = EXCLUDED.art_metadata,
               card = EXCLUDED.card, source = EXCLUDED.source, updated_at = now()
           RETURNING id, (xmax = 0) AS created""",
        name,
        system_prompt,
        tip_personality,
        art_metadata,
        card,
        source,
    )
    return row["id"], row["created"]


async def list_personas(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM chat.personas ORDER BY name")


async def get_persona(pool: asyncpg.Pool | asyncpg.Connection, persona_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM chat.personas WHERE id = $1", persona_id)


async def ensure_instance(conn: asyncpg.Connection, user_id: uuid.UUID, persona_id: uuid.UUID) -> uuid.UUID:
    return await conn.fetchval(
        """INSERT INTO chat.persona_instances (user_id, persona_id) VALUES ($1, $2)
           ON CONFLICT (user_id, persona_id) DO UPDATE SET user_id = EXCLUDED.user_id RETURNING id""",
        user_id,
        persona_id,
    )


async def instance_owner(conn: asyncpg.Pool, instance_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM chat.persona_instances WHERE id = $1", instance_id)


async def latest_session(conn: asyncpg.Connection, instance_id: uuid.UUID) -> uuid.UUID | None:
    return await conn.fetchval(
        "SELECT id FROM chat.sessions WHERE instance_id = $1 ORDER BY last_active_at DESC, started_at DESC LIMIT 1",
        instance_id,
    )


async def create_session(
    conn: asyncpg.Connection, user_id: uuid.UUID, instance_id: uuid.UUID, is_demo: bool
) -> uuid.UUID:
    return await conn.fetchval(
        "INSERT INTO chat.sessions (user_id, instance_id, is_demo) VALUES ($1, $2, $3) RETURNING id",
        user_id,
        instance_id,
        is_demo,
    )


async def delete_session(conn: asyncpg.Connection | asyncpg.Pool, session_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM chat.sessions WHERE id = $1", session_id)


_SESSION_SELECT = """
    SELECT s.id, s.user_id, s.instance_id, i.persona_id, p.name AS persona_name, s.is_demo, s.message_count,
           s.user_message_count
    FROM chat.sessions s JOIN chat.persona_instances i ON i.id = s.instance_id JOIN chat.personas p ON p.id = i.persona_id
"""


async def get_session(conn: asyncpg.Pool | asyncpg.Connection, session_id: uuid.UUID) -> SessionRow | None:
    row = await conn.fetchrow(_SESSION_SELECT + " WHERE s.id = $1", session_id)
    return SessionRow(**dict(row)) if row else None


async def list_sessions(pool: asyncpg.Pool, user_id: uuid.UUID, limit: int) -> list[asyncpg.Record]:
    return await pool.fetch(
        """SELECT s.*, i.persona_id, p.name AS persona_name
           FROM chat.sessions s JOIN chat.persona_instances i ON i.id = s.instance_id
           JOIN chat.personas p ON p.id = i.persona_id
           WHERE s.user_id = $1 ORDER BY s.last_active_at DESC, s.started_at DESC LIMIT $2""",
        user_id,
        limit,
    )


async def history_page(
    pool: asyncpg.Pool, session_id: uuid.UUID, limit: int, before: str | None
) -> tuple[list[asyncpg.Record], int, bool]:
    """Newest page (older than `before`), returned in chronological order, plus the true total."""
    rows = await pool.fetch(
        """SELECT id, role, kind, content, sent_at, client_msg_id FROM chat.messages
           WHERE session_id = $1 AND ($2::text IS NULL OR id < $2) AND NOT (kind = 'ghost')
           ORDER BY id DESC LIMIT $3""",
        session_id,
        before,
        limit + 1,
    )
    has_more = len(rows) > limit
    rows = rows[:limit]
    total = await pool.fetchval(
        "SELECT count(*) FROM chat.messages WHERE session_id = $1 AND kind <> 'ghost'", session_id
    )
    return list(reversed(rows)), int(total), has_more


async def recent_messages(
    conn: asyncpg.Pool, session_id: uuid.UUID, limit: int, exclude_id: str | None = None
) -> list[asyncpg.Record]:
    rows = await conn.fetch(
        """SELECT id, role, kind, content, sent_at FROM chat.messages
           WHERE session_id = $1 AND kind = 'chat' AND ($2::text IS NULL OR id <> $2)
           ORDER BY id DESC LIMIT $3""",
        session_id,
        exclude_id,
        limit,
    )
    return list(reversed(rows))


async def previous_user_message_at(conn: asyncpg.Pool, session_id: uuid.UUID, before_id: str) -> datetime | None:
    return await conn.fetchval(
        "SELECT max(sent_at) FROM chat.messages WHERE session_id = $1 AND role = 'user' AND id < $2",
        session_id,
        before_id,
    )


async def find_turn(
    conn: asyncpg.Pool | asyncpg.Connection, session_id: uuid.UUID, client_msg_id: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM chat.turns WHERE session_id = $1 AND client_msg_id = $2", session_id, client_msg_id
    )


async def begin_turn(
    pool: asyncpg.Pool, *, session_id: uuid.UUID, user_id: uuid.UUID, client_msg_id: str, content: str
) -> tuple[str, str, bool]:
    """Persist the user message and the turn row in one transaction. → (turn_id, user_message_id, created).

    A concurrent or repeated `client_msg_id` finds the existing turn instead (never a duplicate row).
    """
    turn_id = new_message_id()
    message_id = new_message_id()
    async with pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetchval(
            """INSERT INTO chat.turns (id, session_id, user_id, client_msg_id, user_message_id)
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT (session_id, client_msg_id) DO NOTHING RETURNING id""",
            turn_id,
            session_id,
            user_id,
            client_msg_id,
            message_id,
        )
        if inserted is None:
            existing = await find_turn(conn, session_id, client_msg_id)
            assert existing is not None
            return existing["id"], existing["user_message_id"], False
        await conn.execute(
            """INSERT INTO chat.messages (id, session_id, user_id, role, content, client_msg_id, turn_id)
               VALUES ($1, $2, $3, 'user', $4, $5, $6)""",
            message_id,
            session_id,
            user_id,
            content,
            client_msg_id,
            turn_id,
        )
        await conn.execute(
            """UPDATE chat.sessions SET message_count = message_count + 1,
                   user_message_count = user_message_count + 1, last_active_at = now() WHERE id = $1""",
            session_id,
        )
    return turn_id, message_id, True


@dataclass(frozen=True)
class OutboxJob:
    target: str
    payload: dict[str, Any]


async def finish_turn(
    pool: asyncpg.Pool,
    *,
    turn_id: str,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    assistant: dict[str, Any] | None,
    jobs: Sequence[OutboxJob],
    trace_context: dict[str, str],
    frames: list[dict[str, Any]],
    explain: dict[str, Any],
    usage: dict[str, Any],
    cost: float,
    status: str = "done",
    error: str | None = None,
) -> None:
    """Persist the assistant message, the post-process jobs and the turn's frames in ONE transaction."""
    async with pool.acquire() as conn, conn.transaction():
        if assistant is not None:
            await conn.execute(
                """INSERT INTO chat.messages (id, session_id, user_id, role, kind, content, turn_id, model, usage,
                       truncated) VALUES ($1, $2, $3, 'assistant', $4, $5, $6, $7, $8, $9)""",
                assistant["id"],
                session_id,
                user_id,
                assistant.get("kind", "chat"),
                assistant["content"],
                turn_id,
                assistant.get("model"),
                assistant.get("usage") or {},
                assistant.get("truncated", False),
            )
            await conn.execute(
                """UPDATE chat.sessions SET message_count = message_count + $2, last_active_at = now(),
                       usage = $3, cost = cost + $4 WHERE id = $1""",
                session_id,
                1 if assistant.get("kind", "chat") == "chat" else 0,
                await _summed_usage(conn, session_id, usage),
                cost,
            )
        for job in jobs:
            await conn.execute(
                """INSERT INTO chat.outbox (turn_id, target, payload, trace_context) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (turn_id, target) DO NOTHING""",
                turn_id,
                job.target,
                job.payload,
                trace_context,
            )
        await conn.execute(
            """UPDATE chat.turns SET status = $2, frames = $3, explain = $4, error = $5, finished_at = now()
               WHERE id = $1""",
            turn_id,
            status,
            frames,
            explain,
            error,
        )


async def _summed_usage(conn: asyncpg.Connection, session_id: uuid.UUID, usage: dict[str, Any]) -> dict[str, Any]:
    current = await conn.fetchval("SELECT usage FROM chat.sessions WHERE id = $1 FOR UPDATE", session_id) or {}
    summed = dict(current)
    for key, value in usage.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            summed[key] = summed.get(key, 0) + value
    summed["turns"] = summed.get("turns", 0) + 1
    return summed


async def fail_abandoned_turns(pool: asyncpg.Pool) -> int:
    """At start-up: turns left 'running' by a crashed process end in a definite state (failed)."""
    result = await pool.execute(
        """UPDATE chat.turns SET status = 'failed', error = 'interrupted: the orchestrator stopped during generation',
               finished_at = now(),
               frames = frames || jsonb_build_array(jsonb_build_object('type', 'error', 'code', 'internal',
                   'retryable', true, 'message', 'generation interrupted by a restart',
                   'user_message', 'The reply was interrupted. Please send your message again.'))
           WHERE status = 'running'"""
    )
    return int(result.split()[-1])


async def record_gift_message(pool: asyncpg.Pool, session: SessionRow, label: str, applied: dict[str, float]) -> str:
    """A gift shows in the session's history as an event message."""
    message_id = new_message_id()
    await pool.execute(
        """INSERT INTO chat.messages (id, session_id, user_id, role, kind, content, usage)
           VALUES ($1, $2, $3, 'event', 'gift', $4, $5)""",
        message_id,
        session.id,
        session.user_id,
        label,
        {"applied_deltas": applied},
    )
    await pool.execute("UPDATE chat.sessions SET last_active_at = now() WHERE id = $1", session.id)
    return message_id


async def turn_for_message(pool: asyncpg.Pool, session_id: uuid.UUID, message_id: str) -> asyncpg.Record | None:
    """The turn that produced (or was started by) a message of this session."""
    return await pool.fetchrow(
        """SELECT t.* FROM chat.turns t
           WHERE t.session_id = $1 AND (t.user_message_id = $2 OR t.id = (
               SELECT m.turn_id FROM chat.messages m WHERE m.id = $2 AND m.session_id = $1))""",
        session_id,
        message_id,
    )


async def export_chat(pool: asyncpg.Pool, user_id: uuid.UUID) -> dict[str, Any]:
    sessions = await pool.fetch(
        """SELECT s.id, p.name AS persona_name, s.started_at, s.last_active_at, s.is_demo, s.usage, s.cost
           FROM chat.sessions s JOIN chat.persona_instances i ON i.id = s.instance_id
           JOIN chat.personas p ON p.id = i.persona_id WHERE s.user_id = $1 ORDER BY s.started_at""",
        user_id,
    )
    messages = await pool.fetch(
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


async def delete_chat(pool: asyncpg.Pool, user_id: uuid.UUID) -> int:
    async with pool.acquire() as conn, conn.transaction():
        result = await conn.execute("DELETE FROM chat.persona_instances WHERE user_id = $1", user_id)
        await conn.execute("DELETE FROM chat.sessions WHERE user_id = $1", user_id)
    return int(result.split()[-1])
