"""Turn rows: state (running → done | failed), the frames a turn produced (exact replay) and what explains
it; a turn's end written with its assistant message and post-process jobs in one transaction."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from . import conversations, new_message_id, outbox
from .replicas import live_replica
from .rows import AssistantMessage, BranchRow, Conn, TurnAttempt, TurnRow, row_to, rows_to

_TURN_COLUMNS = (
    "id, session_id, user_id, client_msg_id, user_message_id, status, frames, explain, error, started_at, "
    "finished_at, branch_id"
)


async def find_turn(conn: Conn, session_id: uuid.UUID, client_msg_id: str) -> TurnRow | None:
    row = await conn.fetchrow(
        f"SELECT {_TURN_COLUMNS} FROM chat.turns WHERE session_id = $1 AND client_msg_id = $2",
        session_id,
        client_msg_id,
    )
    return row_to(TurnRow, row)  # type: ignore[no-any-return]


async def insert_turn(
    conn: Conn,
    *,
    turn_id: str,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    client_msg_id: str,
    user_message_id: str,
    branch_id: uuid.UUID,
) -> bool:
    """A new running turn; False when this session already has a turn with this client_msg_id."""
    inserted = await conn.fetchval(
        """INSERT INTO chat.turns (id, session_id, user_id, client_msg_id, user_message_id, branch_id)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (session_id, client_msg_id) DO NOTHING RETURNING id""",
        turn_id,
        session_id,
        user_id,
        client_msg_id,
        user_message_id,
        branch_id,
    )
    return inserted is not None


async def begin_turn(
    pool: asyncpg.Pool,
    *,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    client_msg_id: str,
    content: str,
    attach: bool = True,
) -> tuple[str, str, bool]:
    """Persist the user message, its turn row and — when `attach` — its place at the head of the active
    branch with its event, in one transaction. → (turn_id, user_message_id, created). A message sent while
    an earlier turn of the session is still answered is attached when its own turn starts
    (`attach_user_message`), so it follows that reply.

    A concurrent or repeated `client_msg_id` finds the existing turn instead (never a duplicate row).
    """
    turn_id = new_message_id()
    message_id = new_message_id()
    async with pool.acquire() as conn, conn.transaction():
        branch = await conversations.active_branch(conn, session_id, lock=True)
        if not await insert_turn(
            conn,
            turn_id=turn_id,
            session_id=session_id,
            user_id=user_id,
            client_msg_id=client_msg_id,
            user_message_id=message_id,
            branch_id=branch.id,
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
        if attach:
            await _attach(conn, session_id, user_id, turn_id, message_id, branch)
        else:
            await conn.execute("UPDATE chat.turns SET attached = false WHERE id = $1", turn_id)
    return turn_id, message_id, True


async def attach_user_message(pool: asyncpg.Pool, turn_id: str) -> None:
    """The turn's user message joins the tree at the head of its session's active branch (if it has not yet)."""
    async with pool.acquire() as conn, conn.transaction():
        turn = await conn.fetchrow(
            "SELECT session_id, user_id, user_message_id FROM chat.turns WHERE id = $1 AND NOT attached FOR UPDATE",
            turn_id,
        )
        if turn is None:
            return
        branch = await conversations.active_branch(conn, turn["session_id"], lock=True)
        await conn.execute("UPDATE chat.turns SET attached = true, branch_id = $2 WHERE id = $1", turn_id, branch.id)
        await _attach(conn, turn["session_id"], turn["user_id"], turn_id, turn["user_message_id"], branch)


async def _attach(
    conn: asyncpg.Connection,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    turn_id: str,
    message_id: str,
    branch: BranchRow,
) -> None:
    await conn.execute("UPDATE chat.messages SET parent_id = $2 WHERE id = $1", message_id, branch.head_id)
    await conversations.set_head(conn, branch.id, message_id)
    await conversations.append_event(
        conn,
        session_id=session_id,
        user_id=user_id,
        kind="user_message",
        actor="user",
        message_id=message_id,
        branch_id=branch.id,
        data={"parent_id": branch.head_id, "role": "user", "turn_id": turn_id},
    )
    await conn.execute(
        """UPDATE chat.sessions SET message_count = message_count + 1,
               user_message_count = user_message_count + 1, last_active_at = now() WHERE id = $1""",
        session_id,
    )


async def begin_answer(
    conn: asyncpg.Connection,
    *,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    user_message_id: str,
    client_msg_id: str,
    actor: str,
) -> tuple[str, bool]:
    """A new answer (an alternative) to a stored user message, with nothing removed: on the active branch
    when that message is its last exchange, else on a new branch from the message, made active (the old
    branch stays whole). → (turn_id, created); an existing turn with this client_msg_id is returned as is."""
    existing = await find_turn(conn, session_id, client_msg_id)
    if existing is not None:
        return existing.id, False
    branch = await conversations.active_branch(conn, session_id, lock=True)
    answers = {node.id for node in await conversations.children_of(conn, session_id, [user_message_id])}
    branch_id = branch.id
    if branch.head_id != user_message_id and branch.head_id not in answers:
        branch_id = await conversations.create_branch(conn, session_id, user_message_id, user_message_id)
        await conversations.activate_branch(conn, session_id, branch_id)
        await conversations.append_event(
            conn,
            session_id=session_id,
            user_id=user_id,
            kind="branched",
            actor=actor,
            branch_id=branch_id,
            data={"from_message_id": user_message_id, "activate": True, "reason": "regenerate"},
        )
        await conversations.recount_session(conn, session_id)
    turn_id = new_message_id()
    await insert_turn(
        conn,
        turn_id=turn_id,
        session_id=session_id,
        user_id=user_id,
        client_msg_id=client_msg_id,
        user_message_id=user_message_id,
        branch_id=branch_id,
    )
    await conversations.append_event(
        conn,
        session_id=session_id,
        user_id=user_id,
        kind="regenerated",
        actor=actor,
        message_id=user_message_id,
        branch_id=branch_id,
        data={"turn_id": turn_id},
    )
    return turn_id, True


async def record_imported_turn(
    conn: asyncpg.Connection,
    *,
    turn_id: str,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    user_message_id: str,
    branch_id: uuid.UUID,
    jobs: Sequence[outbox.OutboxJob],
) -> str:
    """A user message a client's transcript brought in (with the reply it had there): a finished turn with no
    frames, whose post-process jobs run once like any turn's → the turn id."""
    await insert_turn(
        conn,
        turn_id=turn_id,
        session_id=session_id,
        user_id=user_id,
        client_msg_id=f"import-{user_message_id}",
        user_message_id=user_message_id,
        branch_id=branch_id,
    )
    await conn.execute(
        "UPDATE chat.turns SET status = 'done', finished_at = now(), explain = '{\"imported\": true}' WHERE id = $1",
        turn_id,
    )
    await conn.execute("UPDATE chat.messages SET turn_id = $2 WHERE id = $1", user_message_id, turn_id)
    await outbox.insert_jobs(conn, turn_id=turn_id, user_id=user_id, session_id=session_id, jobs=jobs, trace_context={})
    return turn_id


async def restart_turn(conn: Conn, turn_id: str) -> None:
    """A failed turn is generated again: running, with no frames."""
    await conn.execute(
        "UPDATE chat.turns SET status = 'running', frames = '[]', error = NULL, owner = NULL, started_at = now() "
        "WHERE id = $1",
        turn_id,
    )


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
    on_alternative: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> None:
    """Persist the assistant message (under the turn's user message, at the head of the turn's branch), its
    event, the post-process jobs and the turn's frames in ONE transaction. When the reply took the place of
    another answer on its branch (a swipe), `on_alternative` runs in that transaction too."""
    async with pool.acquire() as conn, conn.transaction():
        if assistant is not None:
            turn = await conn.fetchrow("SELECT user_message_id, branch_id FROM chat.turns WHERE id = $1", turn_id)
            await conn.execute(
                """INSERT INTO chat.messages (id, session_id, user_id, role, kind, content, turn_id, model, usage,
                       truncated, parent_id) VALUES ($1, $2, $3, 'assistant', $4, $5, $6, $7, $8, false, $9)""",
                assistant.id,
                session_id,
                user_id,
                assistant.kind,
                assistant.content,
                turn_id,
                assistant.model,
                assistant.usage or {},
                turn["user_message_id"],
            )
            replaced = await _move_head_to_answer(conn, turn["branch_id"], turn["user_message_id"], assistant.id)
            await conversations.append_event(
                conn,
                session_id=session_id,
                user_id=user_id,
                kind="ghost" if assistant.kind == "ghost" else "reply",
                actor="system",
                message_id=assistant.id,
                branch_id=turn["branch_id"],
                data={
                    "parent_id": turn["user_message_id"],
                    "role": "assistant",
                    "message_kind": assistant.kind,
                    "turn_id": turn_id,
                },
            )
            counted = (1 if assistant.kind == "chat" else 0) - (1 if replaced == "chat" else 0)
            if replaced is not None and on_alternative is not None:
                await on_alternative(conn)
            await conn.execute(
                """UPDATE chat.sessions SET message_count = message_count + $2, last_active_at = now(),
                       usage = $3, cost = cost + $4 WHERE id = $1""",
                session_id,
                counted,
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


async def _move_head_to_answer(
    conn: asyncpg.Connection, branch_id: uuid.UUID | None, user_message_id: str, answer_id: str
) -> str | None:
    """The branch's head moves to the new answer when it is at the user message or at another answer to it
    (the alternative it replaces on the branch) → the kind of the answer replaced (None: none)."""
    if branch_id is None:
        return None
    row = await conn.fetchrow(
        """WITH old AS (SELECT b.head_id FROM chat.branches b WHERE b.id = $1 FOR UPDATE)
           UPDATE chat.branches b SET head_id = $3 FROM old
           WHERE b.id = $1 AND (old.head_id = $2 OR old.head_id IN (
               SELECT m.id FROM chat.messages m WHERE m.parent_id = $2 AND m.role = 'assistant' AND m.id <> $3))
           RETURNING old.head_id""",
        branch_id,
        user_message_id,
        answer_id,
    )
    if row is None or row["head_id"] == user_message_id:
        return None
    return await conn.fetchval("SELECT kind FROM chat.messages WHERE id = $1", row["head_id"])  # type: ignore[no-any-return]


async def _summed_usage(conn: asyncpg.Connection, session_id: uuid.UUID, usage: dict[str, Any]) -> dict[str, Any]:
    current = await conn.fetchval("SELECT usage FROM chat.sessions WHERE id = $1 FOR UPDATE", session_id) or {}
    summed = dict(current)
    for key, value in usage.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            summed[key] = summed.get(key, 0) + value
    summed["turns"] = summed.get("turns", 0) + 1
    return summed


async def fail_abandoned_turns(
    conn: Conn, *, replica_id: uuid.UUID, live_turn_ids: Sequence[str], lease_seconds: float
) -> int:
    """Turns left 'running' that nobody runs any more end in a definite state (failed; a retry generates them
    again): those of a replica that stopped or whose heartbeat is older than the lease, those of this replica
    that it no longer runs (their failure could not be recorded), and those never claimed for longer than the
    lease. A live turn of another replica is never touched."""
    result = await conn.execute(
        """UPDATE chat.turns t SET status = 'failed',
               error = 'interrupted: the orchestrator running it stopped', finished_at = now(),
               frames = t.frames || jsonb_build_array(jsonb_build_object('type', 'error', 'code', 'unavailable',
                   'retryable', true, 'message', 'generation interrupted',
                   'user_message', 'The reply was interrupted. Please send your message again.'))
           WHERE t.status = 'running'
             AND ((t.owner IS NULL AND t.started_at < now() - make_interval(secs => $3))
                  OR (t.owner = $1 AND NOT (t.id = ANY($2::text[])))
                  OR (t.owner <> $1 AND NOT """
        + live_replica("t.owner", "$3")
        + "))",
        replica_id,
        list(live_turn_ids),
        lease_seconds,
    )
    return int(result.split()[-1])


async def claim_turn(conn: Conn, turn_id: str, replica_id: uuid.UUID) -> None:
    """This replica runs the turn now (its lease keeps it alive)."""
    await conn.execute("UPDATE chat.turns SET owner = $2 WHERE id = $1", turn_id, replica_id)


async def register_replica(conn: Conn, replica_id: uuid.UUID) -> None:
    await conn.execute("INSERT INTO chat.replicas (id) VALUES ($1) ON CONFLICT (id) DO NOTHING", replica_id)


async def beat(conn: Conn, replica_id: uuid.UUID) -> None:
    await conn.execute("UPDATE chat.replicas SET heartbeat_at = now() WHERE id = $1", replica_id)


async def stop_replica(conn: Conn, replica_id: uuid.UUID) -> None:
    """A replica stopping: its running turns are another's to fail; rows of long-gone replicas are pruned."""
    await conn.execute("UPDATE chat.replicas SET stopped_at = now() WHERE id = $1", replica_id)
    await conn.execute(
        "DELETE FROM chat.replicas r WHERE r.heartbeat_at < now() - interval '7 days' "
        "AND NOT EXISTS (SELECT 1 FROM chat.turns t WHERE t.owner = r.id AND t.status = 'running')"
    )


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
    return rows_to(TurnAttempt, rows)


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
