"""Turn rows: state (running → done | failed), the frames a turn produced (exact replay) and what explains
it; a turn's end written with its assistant message and post-process jobs in one transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from . import new_message_id, outbox
from .rows import AssistantMessage, Conn, TurnAttempt, TurnRow, row_to

_TURN_COLUMNS = (
    "id, session_id, user_id, client_msg_id, user_message_id, status, frames, explain, error, started_at, finished_at"
)


async def find_turn(conn: Conn, session_id: uuid.UUID, client_msg_id: str) -> TurnRow | None:
    row = await conn.fetchrow(
        f"SELECT {_TURN_COLUMNS} FROM chat.turns WHERE session_id = $1 AND client_msg_id = $2",
        session_id,
        client_msg_id,
    )
    return row_to(TurnRow, row)  # type: ignore[no-any-return]


async def insert_turn(
    conn: Conn, *, turn_id: str, session_id: uuid.UUID, user_id: uuid.UUID, client_msg_id: str, user_message_id: str
) -> bool:
    """A new running turn; False when this session already has a turn with this client_msg_id."""
    inserted = await conn.fetchval(
        """INSERT INTO chat.turns (id, session_id, user_id, client_msg_id, user_message_id)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (session_id, client_msg_id) DO NOTHING RETURNING id""",
        turn_id,
        session_id,
        user_id,
        client_msg_id,
        user_message_id,
    )
    return inserted is not None


async def begin_turn(
    pool: asyncpg.Pool, *, session_id: uuid.UUID, user_id: uuid.UUID, client_msg_id: str, content: str
) -> tuple[str, str, bool]:
    """Persist the user message and the turn row in one transaction. → (turn_id, user_message_id, created).

    A concurrent or repeated `client_msg_id` finds the existing turn instead (never a duplicate row).
    """
    turn_id = new_message_id()
    message_id = new_message_id()
    async with pool.acquire() as conn, conn.transaction():
        if not await insert_turn(
            conn,
            turn_id=turn_id,
            session_id=session_id,
            user_id=user_id,
            client_msg_id=client_msg_id,
            user_message_id=message_id,
        ):
            existing = await find_turn(conn, session_id, client_msg_id)
            assert existing is not None
            return existing.id, existing.user_message_id, False
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


async def restart_turn(conn: Conn, turn_id: str) -> None:
    """A failed turn is generated again: running, with no frames."""
    await conn.execute("UPDATE chat.turns SET status = 'running', frames = '[]', error = NULL WHERE id = $1", turn_id)


async def finish_turn(
    pool: asyncpg.Pool,
    *,
    turn_id: str,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    assistant: AssistantMessage | None,
    jobs: Sequence[outbox.OutboxJob],
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
                       truncated) VALUES ($1, $2, $3, 'assistant', $4, $5, $6, $7, $8, false)""",
                assistant.id,
                session_id,
                user_id,
                assistant.kind,
                assistant.content,
                turn_id,
                assistant.model,
                assistant.usage or {},
            )
            await conn.execute(
                """UPDATE chat.sessions SET message_count = message_count + $2, last_active_at = now(),
                       usage = $3, cost = cost + $4 WHERE id = $1""",
                session_id,
                1 if assistant.kind == "chat" else 0,
                await _summed_usage(conn, session_id, usage),
                cost,
            )
        await outbox.insert_jobs(
            conn, turn_id=turn_id, user_id=user_id, session_id=session_id, jobs=jobs, trace_context=trace_context
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
        if isinstance(value, int | float) and not isinstance(value, bool):
            summed[key] = summed.get(key, 0) + value
    summed["turns"] = summed.get("turns", 0) + 1
    return summed


async def fail_abandoned_turns(conn: Conn) -> int:
    """At start-up: turns left 'running' by a crashed process end in a definite state (failed)."""
    result = await conn.execute(
        """UPDATE chat.turns SET status = 'failed', error = 'interrupted: the orchestrator stopped during generation',
               finished_at = now(),
               frames = frames || jsonb_build_array(jsonb_build_object('type', 'error', 'code', 'internal',
                   'retryable', true, 'message', 'generation interrupted by a restart',
                   'user_message', 'The reply was interrupted. Please send your message again.'))
           WHERE status = 'running'"""
    )
    return int(result.split()[-1])


async def turn_for_message(conn: Conn, session_id: uuid.UUID, message_id: str) -> TurnRow | None:
    """The turn that produced (or was started by) a message of this session."""
    row = await conn.fetchrow(
        f"""SELECT {_TURN_COLUMNS} FROM chat.turns t
           WHERE t.session_id = $1 AND (t.user_message_id = $2 OR t.id = (
               SELECT m.turn_id FROM chat.messages m WHERE m.id = $2 AND m.session_id = $1))""",
        session_id,
        message_id,
    )
    return row_to(TurnRow, row)  # type: ignore[no-any-return]


async def turns_answering(conn: Conn, session_id: uuid.UUID, user_message_id: str) -> list[TurnAttempt]:
    """Every turn that answered (or is answering) one user message, oldest first."""
    rows = await conn.fetch(
        """SELECT t.client_msg_id, t.status,
                  EXISTS (SELECT 1 FROM chat.outbox o WHERE o.turn_id = t.id) AS post_processed
           FROM chat.turns t WHERE t.session_id = $1 AND t.user_message_id = $2 ORDER BY t.id""",
        session_id,
        user_message_id,
    )
    return [row_to(TurnAttempt, row) for row in rows]


async def other_turn_running(conn: Conn, session_id: uuid.UUID, except_turn: str = "") -> bool:
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM chat.turns WHERE session_id = $1 AND status = 'running' AND id <> $2 LIMIT 1",
            session_id,
            except_turn,
        )
    )


async def record_judge_decision(
    conn: Conn,
    *,
    run_id: str,
    turn_id: str,
    session_id: uuid.UUID,
    status: str,
    proposed_action: str | None,
    final_action: str,
    inputs: dict[str, Any],
    output: dict[str, Any],
    model: str,
    usage: dict[str, Any],
) -> None:
    """The audit of one PDE judge call."""
    await conn.execute(
        """INSERT INTO chat.decision_events (run_id, turn_id, session_id, status, proposed_action, final_action,
               inputs, output, model, usage) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
        run_id,
        turn_id,
        session_id,
        status,
        proposed_action,
        final_action,
        inputs,
        output,
        model,
        usage,
    )
