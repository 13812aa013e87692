"""Recall counters (written in the background after Recall): they never deadlock with a concurrent
merge of the same user's memories, and a failure of background work is logged, not lost."""
from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from services.memory import store
from tests.integration.test_memory_fixtures import ids, start_memory  # noqa: F401
from tests.stack import wait_for


async def test_counting_recalls_does_not_deadlock_with_a_merge_of_the_same_rows(database_url: str, db) -> None:
    client = await start_memory(database_url)
    try:
        user, instance, session = ids()
        await client.ingest(user, instance, session, "I live in Lisbon.")
        await client.ingest(user, instance, session, "I love jazz.")
    finally:
        await client.close()
    first, second = sorted(r["id"] for r in await db.fetch("SELECT id FROM memory.memories WHERE instance_id IS NULL"))
    # The counter update meets the rows in the order of its scan: the writer takes them the other way round.
    order = [r["id"] for r in await db.fetch(
        "SELECT id FROM memory.memories WHERE user_id = $1 AND id = ANY($2::uuid[])", user, [first, second])]
    first, second = order
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
    writer = await asyncpg.connect(database_url)
    try:
        # A write of the user (as IngestTurn's merge does): holds the user's lock and one row …
        transaction = writer.transaction()
        await transaction.start()
        await store.lock_user(writer, user)
        await writer.execute("UPDATE memory.memories SET importance = importance WHERE id = $1", second)
        counting = asyncio.create_task(store.mark_recalled(pool, user, [first, second]))

        async def counting_waits() -> bool:
            return bool(await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"))

        await wait_for(counting_waits)
        # … and goes on to the other row: before the fix the counter update held it → deadlock.
        await writer.execute("UPDATE memory.memories SET importance = importance WHERE id = $1", first)
        await transaction.commit()
        await asyncio.wait_for(counting, 10)
    finally:
        await writer.close()
        await pool.close()
    counts = await db.fetch("SELECT recall_count FROM memory.memories WHERE id = ANY($1)", [first, second])
    assert [r["recall_count"] for r in counts] == [1, 1]


async def test_a_failed_background_recall_count_is_logged(database_url: str, db,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    client = await start_memory(database_url, MEMORY_RECALL_TOP="3")
    try:
        user, instance, session = ids()
        await client.ingest(user, instance, session, "I live in Lisbon.")
        await db.execute("""CREATE FUNCTION memory.refuse() RETURNS trigger LANGUAGE plpgsql AS
                            $$ BEGIN RAISE EXCEPTION 'counting refused'; END $$""")
        await db.execute("CREATE TRIGGER refuse BEFORE UPDATE OF recall_count ON memory.memories "
                         "FOR EACH ROW EXECUTE FUNCTION memory.refuse()")
        with caplog.at_level(logging.WARNING, logger="rapport.memory"):
            await client.recall(user, instance, "where do I live")

            async def logged() -> bool:
                return any("background recall count update failed" in r.getMessage() for r in caplog.records)

            await wait_for(logged)
    finally:
        await client.close()
    assert any("counting refused" in r.getMessage() for r in caplog.records if "retrying" in r.getMessage())
    assert await db.fetchval("SELECT sum(recall_count) FROM memory.memories") == 0
