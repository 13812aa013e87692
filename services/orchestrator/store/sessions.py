"""Sessions (user × persona conversations) and their messages."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg
from ulid import ULID

from . import new_message_id
from .rows import Conn, MessageRow, SessionListing, SessionRow, row_to

_SESSION_SELECT = """
    SELECT s.id, s.user_id, s.instance_id, i.persona_id, p.name AS persona_name, s.is_demo, s.message_count,
           s.user_message_count
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
    return await conn.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO chat.sessions (user_id, instance_id, is_demo) VALUES ($1, $2, $3) RETURNING id",
        user_id,
        instance_id,
        is_demo,
    )


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
    return [row_to(SessionListing, row) for row in rows]


async def touch_session(conn: Conn, session_id: uuid.UUID) -> None:
    await conn.execute("UPDATE chat.sessions SET last_active_at = now() WHERE id = $1", session_id)


# -- the OpenAI-compatible API: conversations named by the client ------------------------------------


async def session_by_client_key(conn: Conn, instance_id: uuid.UUID, key: str) -> uuid.UUID | None:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "SELECT id FROM chat.sessions WHERE instance_id = $1 AND client_key = $2", instance_id, key
    )


async def create_client_session(conn: Conn, user_id: uuid.UUID, instance_id: uuid.UUID, key: str) -> uuid.UUID | None:
    """A session named by the client's conversation key; None when a concurrent request created it first."""
    return await conn.fetchval(  # type: ignore[no-any-return]
        """INSERT INTO chat.sessions (user_id, instance_id, client_key) VALUES ($1, $2, $3)
           ON CONFLICT (instance_id, client_key) WHERE client_key IS NOT NULL DO NOTHING RETURNING id""",
        user_id,
        instance_id,
        key,
    )


async def fingerprinted_session_holding(conn: Conn, instance_id: uuid.UUID, first_user: str) -> uuid.UUID | None:
    """The most recently active fingerprinted session of the instance that holds this (normalized) user message."""
    return await conn.fetchval(  # type: ignore[no-any-return]
        r"""SELECT s.id FROM chat.sessions s
            WHERE s.instance_id = $1 AND s.client_key LIKE 'fingerprint:%' AND EXISTS (
                SELECT 1 FROM chat.messages m WHERE m.session_id = s.id AND m.role = 'user'
                AND regexp_replace(btrim(m.content), '\s+', ' ', 'g') = $2)
            ORDER BY s.last_active_at DESC LIMIT 1""",
        instance_id,
        first_user,
    )


async def lock_session(conn: asyncpg.Connection, session_id: uuid.UUID) -> None:
    """The session's row lock: transcript reconciliations of one session run one at a time."""
    await conn.execute("SELECT 1 FROM chat.sessions WHERE id = $1 FOR UPDATE", session_id)


# -- messages ---------------------------------------------------------------------------------------


async def history_page(
    conn: Conn, session_id: uuid.UUID, limit: int, before: str | None
) -> tuple[list[MessageRow], int, bool]:
    """Newest page (older than `before`), returned in chronological order, plus the true total."""
    rows = await conn.fetch(
        """SELECT id, role, kind, content, sent_at, client_msg_id FROM chat.messages
           WHERE session_id = $1 AND ($2::text IS NULL OR id < $2) AND NOT (kind = 'ghost')
           ORDER BY id DESC LIMIT $3""",
        session_id,
        before,
        limit + 1,
    )
    has_more = len(rows) > limit
    rows = rows[:limit]
    total = await conn.fetchval(
        "SELECT count(*) FROM chat.messages WHERE session_id = $1 AND kind <> 'ghost'", session_id
    )
    return [row_to(MessageRow, row) for row in reversed(rows)], int(total), has_more


async def recent_messages(
    conn: Conn, session_id: uuid.UUID, limit: int, exclude_id: str | None = None
) -> list[MessageRow]:
    """The session's last `limit` chat messages (user and assistant, no ghosts or events), oldest first."""
    rows = await conn.fetch(
        """SELECT id, role, kind, content, sent_at FROM chat.messages
           WHERE session_id = $1 AND kind = 'chat' AND ($2::text IS NULL OR id <> $2)
           ORDER BY id DESC LIMIT $3""",
        session_id,
        exclude_id,
        limit,
    )
    return [row_to(MessageRow, row) for row in reversed(rows)]


async def message_sent_at(conn: Conn, message_id: str) -> datetime | None:
    return await conn.fetchval("SELECT sent_at FROM chat.messages WHERE id = $1", message_id)  # type: ignore[no-any-return]


async def previous_user_message_at(conn: Conn, session_id: uuid.UUID, before_id: str) -> datetime | None:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "SELECT max(sent_at) FROM chat.messages WHERE session_id = $1 AND role = 'user' AND id < $2",
        session_id,
        before_id,
    )


async def record_gift_message(conn: Conn, session: SessionRow, label: str, applied: dict[str, float]) -> str:
    """A gift shows in the session's history as an event message."""
    message_id = new_message_id()
    await conn.execute(
        """INSERT INTO chat.messages (id, session_id, user_id, role, kind, content, usage)
           VALUES ($1, $2, $3, 'event', 'gift', $4, $5)""",
        message_id,
        session.id,
        session.user_id,
        label,
        {"applied_deltas": applied},
    )
    await touch_session(conn, session.id)
    return message_id


async def stored_transcript(conn: Conn, session_id: uuid.UUID) -> list[MessageRow]:
    """The session's user and assistant messages (ghosts included), oldest first."""
    rows = await conn.fetch(
        """SELECT id, role, kind, content, sent_at FROM chat.messages
           WHERE session_id = $1 AND role IN ('user', 'assistant') ORDER BY id""",
        session_id,
    )
    return [row_to(MessageRow, row) for row in rows]


async def last_chat_message_id(conn: Conn, session_id: uuid.UUID) -> str | None:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "SELECT max(id) FROM chat.messages WHERE session_id = $1 AND role IN ('user', 'assistant')", session_id
    )


async def delete_messages_from(
    conn: asyncpg.Connection, session_id: uuid.UUID, boundary: str, *, inclusive: bool
) -> int:
    """Remove the session's user/assistant messages from `boundary` on (or after it), the turns of the
    removed user messages and their post-process jobs not yet delivered."""
    operator = ">=" if inclusive else ">"
    removed = await conn.fetch(
        f"""DELETE FROM chat.messages WHERE session_id = $1 AND id {operator} $2 AND role IN ('user', 'assistant')
            RETURNING id, role""",
        session_id,
        boundary,
    )
    user_ids = [row["id"] for row in removed if row["role"] == "user"]
    if user_ids:
        turn_ids = [
            row["id"]
            for row in await conn.fetch(
                "DELETE FROM chat.turns WHERE session_id = $1 AND user_message_id = ANY($2::text[]) RETURNING id",
                session_id,
                user_ids,
            )
        ]
        await conn.execute("DELETE FROM chat.outbox WHERE turn_id = ANY($1::text[]) AND status = 'pending'", turn_ids)
    return len(removed)


def ids_after(after: str | None, count: int) -> list[str]:
    """`count` increasing message ids, all after `after`, all before any id minted from now on."""
    start = int(ULID.from_timestamp(time.time() - 0.002))
    if after is not None:
        start = max(start, int(ULID.from_str(after)) + 1)
    return [str(ULID.from_int(start + index)) for index in range(count)]


async def import_messages(
    conn: asyncpg.Connection, session: SessionRow, messages: Sequence[tuple[str, str]], after: str | None
) -> str:
    """Append (role, content) messages from a client's transcript as they are (no turn) → the last id used."""
    ids = ids_after(after, len(messages))
    await conn.executemany(
        """INSERT INTO chat.messages (id, session_id, user_id, role, content, imported)
           VALUES ($1, $2, $3, $4, $5, true)""",
        [
            (message_id, session.id, session.user_id, role, content)
            for message_id, (role, content) in zip(ids, messages, strict=True)
        ],
    )
    return ids[-1]


async def recount_session(conn: Conn, session_id: uuid.UUID) -> None:
    """The session's message counters after messages were removed or imported."""
    await conn.execute(
        """UPDATE chat.sessions SET
               message_count = (SELECT count(*) FROM chat.messages WHERE session_id = $1 AND kind = 'chat'
                                AND role IN ('user', 'assistant')),
               user_message_count = (SELECT count(*) FROM chat.messages WHERE session_id = $1 AND role = 'user'),
               last_active_at = now()
           WHERE id = $1""",
        session_id,
    )
