"""Sessions (user × persona conversations) and their messages."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg
from ulid import ULID

from . import conversations, new_message_id
from .rows import Conn, MessageRow, SessionListing, SessionRow, row_to, rows_to

_SESSION_SELECT = """
    SELECT s.id, s.user_id, s.instance_id, i.persona_id, p.name AS persona_name, s.is_demo, s.message_count,
           s.user_message_count, s.active_branch_id
    FROM chat.sessions s JOIN chat.persona_instances i ON i.id = s.instance_id JOIN chat.personas p ON p.id = i.persona_id
"""


async def get_session(conn: Conn, session_id: uuid.UUID) -> SessionRow | None:
    return row_to(SessionRow, await conn.fetchrow(_SESSION_SELECT + " WHERE s.id = $1", session_id))  # type: ignore[no-any-return]


async def latest_session(conn: Conn, instance_id: uuid.UUID) -> uuid.UUID | None:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "SELECT id FROM chat.sessions WHERE instance_id = $1 ORDER BY last_active_at DESC, started_at DESC LIMIT 1",
        instance_id,
    )


async def create_session(conn: Conn, user_id: uuid.UUID, instance_id: uuid.UUID, is_demo: bool) -> uuid.UUID:
    """A new session with its first (empty, active) branch; call it in a transaction."""
    session_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO chat.sessions (user_id, instance_id, is_demo) VALUES ($1, $2, $3) RETURNING id",
        user_id,
        instance_id,
        is_demo,
    )
    await conversations.first_branch(conn, session_id)
    return session_id


async def delete_session(conn: Conn, session_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM chat.sessions WHERE id = $1", session_id)


async def list_sessions(conn: Conn, user_id: uuid.UUID, limit: int) -> list[SessionListing]:
    rows = await conn.fetch(
        """SELECT s.id, s.instance_id, i.persona_id, p.name AS persona_name, s.message_count, s.is_demo,
                  s.started_at, s.last_active_at, s.usage, s.cost
           FROM chat.sessions s JOIN chat.persona_instances i ON i.id = s.instance_id
           JOIN chat.personas p ON p.id = i.persona_id
           WHERE s.user_id = $1 ORDER BY s.last_active_at DESC, s.started_at DESC LIMIT $2""",
        user_id,
        limit,
    )
    return rows_to(SessionListing, rows)


async def touch_session(conn: Conn, session_id: uuid.UUID) -> None:
    await conn.execute("UPDATE chat.sessions SET last_active_at = now() WHERE id = $1", session_id)


# -- the OpenAI-compatible API: conversations named by the client ------------------------------------


async def session_by_client_key(conn: Conn, instance_id: uuid.UUID, key: str) -> uuid.UUID | None:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "SELECT id FROM chat.sessions WHERE instance_id = $1 AND client_key = $2", instance_id, key
    )


async def create_client_session(conn: Conn, user_id: uuid.UUID, instance_id: uuid.UUID, key: str) -> uuid.UUID | None:
    """A session named by the client's conversation key, with its first branch; None when a concurrent request
    created it first."""
    session_id: uuid.UUID | None = await conn.fetchval(
        """INSERT INTO chat.sessions (user_id, instance_id, client_key) VALUES ($1, $2, $3)
           ON CONFLICT (instance_id, client_key) WHERE client_key IS NOT NULL DO NOTHING RETURNING id""",
        user_id,
        instance_id,
        key,
    )
    if session_id is not None:
        await conversations.first_branch(conn, session_id)
    return session_id


async def fingerprinted_session_holding(conn: Conn, instance_id: uuid.UUID, texts: Sequence[str]) -> uuid.UUID | None:
    """The most recently active fingerprinted session of the instance that holds one of these (normalized)
    chat messages."""
    return await conn.fetchval(  # type: ignore[no-any-return]
        r"""SELECT s.id FROM chat.sessions s
            WHERE s.instance_id = $1 AND s.client_key LIKE 'fingerprint:%' AND EXISTS (
                SELECT 1 FROM chat.messages m WHERE m.session_id = s.id AND m.role IN ('user', 'assistant')
                AND m.deleted_at IS NULL AND regexp_replace(btrim(m.content), '\s+', ' ', 'g') = ANY($2::text[]))
            ORDER BY s.last_active_at DESC LIMIT 1""",
        instance_id,
        list(texts),
    )


async def post_history(conn: Conn, session_id: uuid.UUID) -> str | None:
    """The system text a client sent after its last message on the conversation's last turn."""
    return await conn.fetchval("SELECT post_history FROM chat.sessions WHERE id = $1", session_id)  # type: ignore[no-any-return]


async def remember_post_history(conn: Conn, session_id: uuid.UUID, text: str) -> None:
    await conn.execute("UPDATE chat.sessions SET post_history = $2 WHERE id = $1", session_id, text)


async def lock_session(conn: asyncpg.Connection, session_id: uuid.UUID) -> None:
    """The session's row lock: transcript reconciliations of one session run one at a time."""
    await conn.execute("SELECT 1 FROM chat.sessions WHERE id = $1 FOR UPDATE", session_id)


# -- messages: the active branch's path (store.conversations keeps the tree) ---------------------------


async def history_page(
    conn: Conn, session_id: uuid.UUID, limit: int, before: str | None
) -> tuple[list[MessageRow], int, bool]:
    """The active branch's newest messages (older than `before`, a message on it), oldest first, without
    ghosts or erased messages; plus how many the branch shows in all and whether there are older ones."""
    branch = await conversations.active_branch(conn, session_id)
    shown = [m for m in await conversations.path_to(conn, branch.head_id) if _shown(m)]
    end = next((i for i, m in enumerate(shown) if m.id == before), len(shown)) if before else len(shown)
    page = shown[max(0, end - limit) : end]
    return page, len(shown), end - limit > 0


def _shown(message: MessageRow) -> bool:
    return message.kind != "ghost" and message.deleted_at is None


async def recent_messages(
    conn: Conn, session_id: uuid.UUID, limit: int, *, until: str | None = None
) -> list[MessageRow]:
    """The last `limit` chat messages (user and assistant replies, no ghosts, events or erased messages) of
    the path that ends at `until` (default: the active branch's head), oldest first."""
    head_id = until if until is not None else (await conversations.active_branch(conn, session_id)).head_id
    path = await conversations.path_to(conn, head_id, max_depth=limit * 3 + 8)
    chat = [m for m in path if m.kind == "chat" and m.role in ("user", "assistant") and m.deleted_at is None]
    if len(chat) < limit and path and path[0].parent_id is not None:  # gifts and ghosts filled the window
        path = await conversations.path_to(conn, head_id)
        chat = [m for m in path if m.kind == "chat" and m.role in ("user", "assistant") and m.deleted_at is None]
    return chat[-limit:]


async def message_sent_at(conn: Conn, message_id: str) -> datetime | None:
    return await conn.fetchval("SELECT sent_at FROM chat.messages WHERE id = $1", message_id)  # type: ignore[no-any-return]


async def previous_user_message_at(conn: Conn, user_message_id: str) -> datetime | None:
    """When the user last wrote before this message, on its path."""
    return await conn.fetchval(  # type: ignore[no-any-return]
        """WITH RECURSIVE path AS (
               SELECT parent_id, NULL::text AS role, NULL::timestamptz AS sent_at FROM chat.messages WHERE id = $1
               UNION ALL
               SELECT m.parent_id, m.role, m.sent_at FROM chat.messages m JOIN path ON m.id = path.parent_id
               WHERE path.role IS DISTINCT FROM 'user')
           SELECT sent_at FROM path WHERE role = 'user' LIMIT 1""",
        user_message_id,
    )


async def record_gift_message(
    pool: asyncpg.Pool, session: SessionRow, label: str, applied: dict[str, float], affinity_event_id: str
) -> str:
    """A gift shows on the active branch as an event message (its affinity event travels with the branch)."""
    message_id = new_message_id()
    async with pool.acquire() as conn, conn.transaction():
        branch = await conversations.active_branch(conn, session.id, lock=True)
        await conn.execute(
            """INSERT INTO chat.messages (id, session_id, user_id, role, kind, content, usage, parent_id)
               VALUES ($1, $2, $3, 'event', 'gift', $4, $5, $6)""",
            message_id,
            session.id,
            session.user_id,
            label,
            {"applied_deltas": applied, "affinity_event_id": affinity_event_id},
            branch.head_id,
        )
        await conversations.set_head(conn, branch.id, message_id)
        await conversations.append_event(
            conn,
            session_id=session.id,
            user_id=session.user_id,
            kind="gift",
            actor="user",
            message_id=message_id,
            branch_id=branch.id,
            data={
                "parent_id": branch.head_id,
                "role": "event",
                "message_kind": "gift",
                "affinity_event_id": affinity_event_id,
            },
        )
        await touch_session(conn, session.id)
    return message_id


async def import_messages(
    conn: asyncpg.Connection,
    session: SessionRow,
    messages: Sequence[tuple[str, str]],
    *,
    parent_id: str | None,
    branch_id: uuid.UUID,
) -> list[str]:
    """Append (role, content) messages from a client's transcript after `parent_id` on a branch, as they are
    (no turn); one `imported` event each → their ids."""
    ids = ids_after(parent_id, len(messages))
    parent = parent_id
    for message_id, (role, content) in zip(ids, messages, strict=True):
        await conn.execute(
            """INSERT INTO chat.messages (id, session_id, user_id, role, content, imported, parent_id)
               VALUES ($1, $2, $3, $4, $5, true, $6)""",
            message_id,
            session.id,
            session.user_id,
            role,
            content,
            parent,
        )
        await conversations.append_event(
            conn,
            session_id=session.id,
            user_id=session.user_id,
            kind="imported",
            actor="client",
            message_id=message_id,
            branch_id=branch_id,
            data={"parent_id": parent, "role": role},
        )
        parent = message_id
    if ids:
        await conversations.set_head(conn, branch_id, ids[-1])
    return ids


def ids_after(after: str | None, count: int) -> list[str]:
    """`count` increasing message ids, all after `after`, all before any id minted from now on."""
    start = int(ULID.from_timestamp(time.time() - 0.002))
    if after is not None:
        start = max(start, int(ULID.from_str(after)) + 1)
    return [str(ULID.from_int(start + index)) for index in range(count)]
