"""Migration 004 (issue 10): sessions stored as mutable message lists become single-branch event logs with no
loss — every message kept, chained in its order, on one active branch ending at its last message, one event
each; the history read through the new store equals the old chronological one."""

from __future__ import annotations

import uuid

import asyncpg

from services.orchestrator.store import conversations, sessions
from services.servicekit.db import create_pool, load_migrations
from tests.conftest import _with_database


async def test_existing_sessions_become_single_branch_logs(postgres_admin_url: str) -> None:
    name = f"mig_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = _with_database(postgres_admin_url, name)
    conn = await asyncpg.connect(url)
    try:
        migrations = load_migrations("orchestrator")
        for migration in migrations:
            if migration.version < 4:
                await conn.execute(migration.sql)
        user = uuid.uuid4()
        persona = await conn.fetchval(
            "INSERT INTO chat.personas (name, system_prompt) VALUES ('Elena', 'You are Elena.') RETURNING id")
        instance = await conn.fetchval(
            "INSERT INTO chat.persona_instances (user_id, persona_id) VALUES ($1, $2) RETURNING id", user, persona)
        stored: dict[uuid.UUID, list[tuple[str, str, str, str]]] = {}
        for session_number in range(2):
            session = await conn.fetchval(
                "INSERT INTO chat.sessions (user_id, instance_id, message_count, user_message_count) "
                "VALUES ($1, $2, 5, 3) RETURNING id", user, instance)
            rows = [("user", "chat", f"hello {session_number}"), ("assistant", "chat", "hi"),
                    ("event", "gift", "a rose"), ("user", "chat", "still there?"), ("assistant", "ghost", ""),
                    ("user", "chat", "ok"), ("assistant", "chat", "yes")]
            stored[session] = []
            for index, (role, kind, content) in enumerate(rows):
                message_id = f"01J{session_number}{index:02d}" + "0" * 20
                await conn.execute(
                    "INSERT INTO chat.messages (id, session_id, user_id, role, kind, content) "
                    "VALUES ($1, $2, $3, $4, $5, $6)", message_id, session, user, role, kind, content)
                stored[session].append((message_id, role, kind, content))
            await conn.execute(
                "INSERT INTO chat.turns (id, session_id, user_id, client_msg_id, user_message_id, status) "
                "VALUES ($1, $2, $3, 'cm-1', $4, 'done')", f"turn-{session_number}", session, user,
                stored[session][0][0])
        await conn.execute(next(m.sql for m in migrations if m.version == 4))
    finally:
        await conn.close()

    pool = await create_pool(url, max_size=2)
    try:
        for session, messages in stored.items():
            branches = await conversations.list_branches(pool, session)
            assert len(branches) == 1 and branches[0].head_id == messages[-1][0]
            assert (await conversations.active_branch(pool, session)).id == branches[0].id
            path = await conversations.path_to(pool, branches[0].head_id)
            assert [(m.id, m.role, m.kind, m.content) for m in path] == messages  # all of it, in order
            page, total, _ = await sessions.history_page(pool, session, 50, None)
            assert [m.id for m in page] == [m[0] for m in messages if m[2] != "ghost"] and total == 6
            events = await conversations.all_events(pool, session)
            assert [e.message_id for e in events] == [m[0] for m in messages]
            assert [e.kind for e in events] == ["user_message", "reply", "gift", "user_message", "ghost",
                                                "user_message", "reply"]
            assert all(e.actor == "system" and e.data["migrated"] for e in events)
            turn = await pool.fetchrow("SELECT branch_id, attached FROM chat.turns WHERE session_id = $1", session)
            assert turn["branch_id"] == branches[0].id and turn["attached"]
    finally:
        await pool.close()
        admin = await asyncpg.connect(postgres_admin_url)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
