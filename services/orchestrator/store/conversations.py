"""The conversation's event log and its projection: the message tree (parents), branches (heads), the
active branch of each session. Every change appends its event in the same transaction as the rows it
changes (domain/conversation.py is the reference projection those rows are checked against)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from . import new_message_id
from .rows import BranchRow, Conn, EventRow, MessageRow, TreeNode, TurnLink, row_to, rows_to

_MESSAGE_COLUMNS = "id, role, kind, content, sent_at, client_msg_id, parent_id, deleted_at, turn_id, model"


async def append_event(
    conn: Conn,
    *,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    kind: str,
    actor: str,
    message_id: str | None = None,
    branch_id: uuid.UUID | None = None,
    data: dict[str, Any] | None = None,
) -> str:
    event_id = new_message_id()
    await conn.execute(
        """INSERT INTO chat.events (id, session_id, user_id, kind, actor, message_id, branch_id, data)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        event_id,
        session_id,
        user_id,
        kind,
        actor,
        message_id,
        branch_id,
        data or {},
    )
    return event_id


async def events_page(conn: Conn, session_id: uuid.UUID, after_seq: int, limit: int) -> list[EventRow]:
    rows = await conn.fetch(
        """SELECT seq, id, kind, actor, message_id, branch_id, data, created_at FROM chat.events
           WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3""",
        session_id,
        after_seq,
        limit,
    )
    return rows_to(EventRow, rows)


async def all_events(conn: Conn, session_id: uuid.UUID) -> list[EventRow]:
    rows = await conn.fetch(
        "SELECT seq, id, kind, actor, message_id, branch_id, data, created_at FROM chat.events "
        "WHERE session_id = $1 ORDER BY seq",
        session_id,
    )
    return rows_to(EventRow, rows)


# -- branches ---------------------------------------------------------------------------------------


async def create_branch(conn: Conn, session_id: uuid.UUID, head_id: str | None, forked_from: str | None) -> uuid.UUID:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO chat.branches (session_id, head_id, forked_from) VALUES ($1, $2, $3) RETURNING id",
        session_id,
        head_id,
        forked_from,
    )


async def get_branch(conn: Conn, branch_id: uuid.UUID) -> BranchRow | None:
    row = await conn.fetchrow(
        "SELECT id, session_id, head_id, forked_from, created_at FROM chat.branches WHERE id = $1", branch_id
    )
    return row_to(BranchRow, row)  # type: ignore[no-any-return]


async def active_branch(conn: Conn, session_id: uuid.UUID, *, lock: bool = False) -> BranchRow:
    """The session's active branch (created, empty, for a session that has none yet)."""
    row = await conn.fetchrow(
        """SELECT b.id, b.session_id, b.head_id, b.forked_from, b.created_at FROM chat.sessions s
           JOIN chat.branches b ON b.id = s.active_branch_id WHERE s.id = $1"""
        + (" FOR UPDATE OF b" if lock else ""),
        session_id,
    )
    if row is not None:
        return row_to(BranchRow, row)  # type: ignore[no-any-return]
    # A session is created with its first branch (`first_branch`); this only repairs one that has none.
    await conn.execute("SELECT 1 FROM chat.sessions WHERE id = $1 FOR UPDATE", session_id)
    if await conn.fetchval("SELECT active_branch_id FROM chat.sessions WHERE id = $1", session_id) is None:
        await first_branch(conn, session_id)
    return await active_branch(conn, session_id, lock=lock)


async def first_branch(conn: Conn, session_id: uuid.UUID) -> uuid.UUID:
    """A new session's branch, empty and active."""
    branch_id = await create_branch(conn, session_id, None, None)
    await conn.execute("UPDATE chat.sessions SET active_branch_id = $2 WHERE id = $1", session_id, branch_id)
    return branch_id


async def list_branches(conn: Conn, session_id: uuid.UUID) -> list[BranchRow]:
    rows = await conn.fetch(
        "SELECT id, session_id, head_id, forked_from, created_at FROM chat.branches WHERE session_id = $1 "
        "ORDER BY created_at, id",
        session_id,
    )
    return rows_to(BranchRow, rows)


async def set_head(conn: Conn, branch_id: uuid.UUID, head_id: str | None) -> None:
    await conn.execute("UPDATE chat.branches SET head_id = $2 WHERE id = $1", branch_id, head_id)


async def activate_branch(conn: Conn, session_id: uuid.UUID, branch_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE chat.sessions SET active_branch_id = $2, last_active_at = now() WHERE id = $1", session_id, branch_id
    )


# -- the tree ---------------------------------------------------------------------------------------


async def get_message(conn: Conn, session_id: uuid.UUID, message_id: str) -> MessageRow | None:
    row = await conn.fetchrow(
        f"SELECT {_MESSAGE_COLUMNS} FROM chat.messages WHERE session_id = $1 AND id = $2", session_id, message_id
    )
    return row_to(MessageRow, row)  # type: ignore[no-any-return]


async def path_to(conn: Conn, head_id: str | None, *, max_depth: int | None = None) -> list[MessageRow]:
    """Root → head (or only the last `max_depth` messages of that path), erased messages included."""
    if head_id is None:
        return []
    rows = await conn.fetch(
        f"""WITH RECURSIVE path AS (
                SELECT {_MESSAGE_COLUMNS}, 1 AS depth FROM chat.messages WHERE id = $1
                UNION ALL
                SELECT {", ".join("m." + c.strip() for c in _MESSAGE_COLUMNS.split(","))}, path.depth + 1
                FROM chat.messages m JOIN path ON m.id = path.parent_id
                WHERE $2::int IS NULL OR path.depth < $2::int)
            SELECT {_MESSAGE_COLUMNS} FROM path ORDER BY depth DESC""",
        head_id,
        max_depth,
    )
    return rows_to(MessageRow, rows)


async def session_tree(conn: Conn, session_id: uuid.UUID) -> list[TreeNode]:
    """Every message of the session with its parent (the shape of the tree, no text)."""
    rows = await conn.fetch(
        "SELECT id, parent_id, role, kind, deleted_at IS NOT NULL AS deleted, turn_id, "
        "CASE WHEN kind = 'gift' THEN usage->>'affinity_event_id' END AS gift_event FROM chat.messages "
        "WHERE session_id = $1 ORDER BY id",
        session_id,
    )
    return rows_to(TreeNode, rows)


async def children_of(conn: Conn, session_id: uuid.UUID, parent_ids: Sequence[str]) -> list[TreeNode]:
    rows = await conn.fetch(
        "SELECT id, parent_id, role, kind, deleted_at IS NOT NULL AS deleted, turn_id FROM chat.messages "
        "WHERE session_id = $1 AND parent_id = ANY($2::text[]) ORDER BY id",
        session_id,
        list(parent_ids),
    )
    return rows_to(TreeNode, rows)


async def erase_messages(conn: asyncpg.Connection, session_id: uuid.UUID, message_ids: Sequence[str]) -> None:
    """A surgical delete: the messages' text is erased (id, place in the tree and the fact stay), and so is
    every copy of it the orchestrator keeps — its turns' frames and explanation, the judge's audit, the
    post-process requests (pending ones are dropped: they would recreate what is erased)."""
    ids = list(message_ids)
    await conn.execute(
        "UPDATE chat.messages SET content = '', usage = NULL, deleted_at = now() "
        "WHERE session_id = $1 AND id = ANY($2::text[])",
        session_id,
        ids,
    )
    turn_ids = [
        row["id"]
        for row in await conn.fetch(
            """SELECT t.id FROM chat.turns t WHERE t.session_id = $1 AND (t.user_message_id = ANY($2::text[])
                   OR t.id IN (SELECT m.turn_id FROM chat.messages m WHERE m.id = ANY($2::text[])
                               AND m.turn_id IS NOT NULL))""",
            session_id,
            ids,
        )
    ]
    if turn_ids:
        await conn.execute(
            "UPDATE chat.turns SET frames = '[]', explain = jsonb_build_object('erased', true) "
            "WHERE id = ANY($1::text[])",
            turn_ids,
        )
        await conn.execute(
            "UPDATE chat.decision_events SET inputs = '{}', output = '{}' WHERE turn_id = ANY($1::text[])", turn_ids
        )
        await conn.execute("DELETE FROM chat.outbox WHERE turn_id = ANY($1::text[]) AND status = 'pending'", turn_ids)
        await conn.execute(
            "UPDATE chat.outbox SET request = NULL, payload = NULL WHERE turn_id = ANY($1::text[])", turn_ids
        )


async def count_history(conn: Conn, head_id: str | None) -> tuple[int, int]:
    """(chat messages, user messages) on the path to `head_id`, erased ones left out."""
    if head_id is None:
        return 0, 0
    row = await conn.fetchrow(
        """WITH RECURSIVE path AS (
               SELECT id, parent_id, role, kind, deleted_at FROM chat.messages WHERE id = $1
               UNION ALL
               SELECT m.id, m.parent_id, m.role, m.kind, m.deleted_at FROM chat.messages m
               JOIN path ON m.id = path.parent_id)
           SELECT count(*) FILTER (WHERE kind = 'chat' AND role IN ('user', 'assistant') AND deleted_at IS NULL)
                      AS messages,
                  count(*) FILTER (WHERE role = 'user' AND deleted_at IS NULL) AS user_messages
           FROM path""",
        head_id,
    )
    return int(row["messages"]), int(row["user_messages"])


async def set_counts(conn: Conn, session_id: uuid.UUID, *, messages: int, user_messages: int) -> None:
    await conn.execute(
        "UPDATE chat.sessions SET message_count = $2, user_message_count = $3, last_active_at = now() WHERE id = $1",
        session_id,
        messages,
        user_messages,
    )


async def recount_session(conn: Conn, session_id: uuid.UUID) -> None:
    """The session's counters are those of its active branch."""
    branch = await active_branch(conn, session_id)
    messages, user_messages = await count_history(conn, branch.head_id)
    await conn.execute(
        "UPDATE chat.sessions SET message_count = $2, user_message_count = $3, last_active_at = now() WHERE id = $1",
        session_id,
        messages,
        user_messages,
    )


async def turn_links(conn: Conn, session_id: uuid.UUID) -> list[TurnLink]:
    """Every turn of the session: which user message it answers, its state."""
    rows = await conn.fetch(
        "SELECT id AS turn_id, user_message_id, status FROM chat.turns WHERE session_id = $1 ORDER BY id", session_id
    )
    return rows_to(TurnLink, rows)


async def branch_made_by_request(conn: Conn, session_id: uuid.UUID, client_request_id: str) -> uuid.UUID | None:
    """The branch a CreateBranch with this client request id made (its idempotency)."""
    return await conn.fetchval(  # type: ignore[no-any-return]
        "SELECT branch_id FROM chat.events WHERE session_id = $1 AND kind = 'branched' "
        "AND data->>'client_request_id' = $2",
        session_id,
        client_request_id,
    )
