"""The snapshot sweeper against a real Postgres: firings on the schedule in a time zone with an
injected clock, exactly one snapshot per user per firing with two replicas, and start-up
configuration (spec: insight.md, Snapshots)."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.insight.domain import FieldUpdate, merge_profile, queryable_columns
from services.insight.schedule import SnapshotSchedule
from services.insight.snapshots import SnapshotSweeper
from services.servicekit.config import ConfigError, Env
from services.servicekit.db import create_pool
from services.servicekit.service import start_service
from tests.stack import INTERNAL_ENV, wait_for


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=4)
    yield pool
    await pool.close()


async def add_profiles(pool: asyncpg.Pool, count: int) -> list[uuid.UUID]:
    """Profiles written the way the store writes them (JSONB + typed columns)."""
    users = [uuid.uuid4() for _ in range(count)]
    for n, user in enumerate(users):
        profile = merge_profile({}, [FieldUpdate("city", f"City {n}", 0.6, (f"m-{n}",))], datetime.now(UTC))
        columns = queryable_columns(profile)
        await pool.execute("INSERT INTO insight.profiles (user_id, insights, training_level, city) "
                           "VALUES ($1, $2, $3, $4)", user, profile, columns["training_level"], columns["city"])
    return users


async def captured(pool: asyncpg.Pool) -> list[tuple[uuid.UUID, datetime]]:
    rows = await pool.fetch("SELECT user_id, captured_at FROM insight.snapshots ORDER BY captured_at, user_id")
    return [(row["user_id"], row["captured_at"]) for row in rows]


class FakeClock:
    """Wall clock for the loop: `sleep` advances it at once; past `stop_at` it blocks for good."""

    def __init__(self, start: datetime, stop_at: datetime) -> None:
        self.now = start
        self.stop_at = stop_at
        self.sleeps = 0

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if self.now >= self.stop_at:
            await asyncio.Event().wait()
        self.sleeps += 1
        self.now += timedelta(seconds=seconds)
        await asyncio.sleep(0)


async def test_fire_copies_every_profile_once_per_firing(pool: asyncpg.Pool) -> None:
    users = await add_profiles(pool, 3)
    sweeper = SnapshotSweeper(pool, SnapshotSchedule.parse())
    at = sweeper.next_firing(datetime(2025, 1, 1, tzinfo=UTC))
    assert at == datetime(2025, 1, 1, 15, tzinfo=UTC)  # 23:00 in Singapore (UTC+8), the default
    assert await sweeper.fire(at) == 3
    assert await sweeper.fire(at) == 0  # the same firing again writes nothing
    assert sorted(await captured(pool)) == sorted((user, at) for user in users)
    row = await pool.fetchrow("SELECT insights, training_level FROM insight.snapshots WHERE user_id = $1", users[0])
    assert row["insights"]["city"]["value"] == "City 0" and float(row["training_level"]) == 0.05


async def test_two_replicas_firing_together_write_one_snapshot_per_user(pool: asyncpg.Pool,
                                                                       database_url: str) -> None:
    users = await add_profiles(pool, 25)
    other = await create_pool(database_url, max_size=4)  # the second replica has its own pool
    try:
        replicas = [SnapshotSweeper(pool, SnapshotSchedule.parse()), SnapshotSweeper(other, SnapshotSchedule.parse())]
        firings = replicas[0].schedule.firings_between(datetime(2025, 1, 1, tzinfo=UTC),
                                                       datetime(2025, 1, 5, 23, tzinfo=UTC))
        for at in firings:
            written = await asyncio.gather(*(replica.fire(at) for replica in replicas))
            assert sorted(written) == [0, len(users)]
    finally:
        await other.close()
    assert len(firings) == 5
    assert sorted(await captured(pool)) == sorted((user, at) for user in users for at in firings)


async def test_loop_fires_on_the_schedule_in_its_time_zone(pool: asyncpg.Pool) -> None:
    """23:00 in Lisbon across the spring-forward night: 23:00 UTC, then 22:00 UTC (WEST)."""
    [user] = await add_profiles(pool, 1)
    clock = FakeClock(start=datetime(2025, 3, 29, 12, tzinfo=UTC), stop_at=datetime(2025, 3, 31, 22, 30, tzinfo=UTC))
    sweeper = SnapshotSweeper(pool, SnapshotSchedule.parse("0 0 23 * * *", "Europe/Lisbon"), clock=clock,
                              sleep=clock.sleep)
    expected = [datetime(2025, 3, 29, 23, tzinfo=UTC), datetime(2025, 3, 30, 22, tzinfo=UTC),
                datetime(2025, 3, 31, 22, tzinfo=UTC)]
    loop = asyncio.create_task(sweeper.run())
    try:
        await wait_for(lambda: _count(pool, 3))
        await wait_for(lambda: _sleeping_past(clock))
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert await captured(pool) == [(user, at) for at in expected]
    assert sweeper.cursor == expected[-1]
    assert clock.sleeps > 3  # long waits are cut into chunks that re-read the wall clock


async def _count(pool: asyncpg.Pool, wanted: int) -> bool:
    return await pool.fetchval("SELECT count(*) FROM insight.snapshots") >= wanted


async def _sleeping_past(clock: FakeClock) -> bool:
    return clock.now >= clock.stop_at


@pytest.mark.parametrize(("env", "variable"), [
    ({"SNAPSHOT_CRON": "0 0 23 * *"}, "SNAPSHOT_CRON"),  # 5 fields
    ({"SNAPSHOT_CRON": "0 0 25 * * *"}, "SNAPSHOT_CRON"),
    ({"SNAPSHOT_CRON": "0 0 0 30 2 *"}, "SNAPSHOT_CRON"),  # never fires
    ({"SNAPSHOT_TZ": "Mars/Olympus"}, "SNAPSHOT_TZ"),
    ({"SNAPSHOT_TZ": "Mars/Olympus", "SNAPSHOT_DISABLED": "1"}, "SNAPSHOT_TZ"),
    ({"SNAPSHOT_DISABLED": "maybe"}, "SNAPSHOT_DISABLED"),
])
async def test_bad_snapshot_settings_stop_start_up_naming_the_variable(database_url: str, env: dict[str, str],
                                                                       variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        await start_service("insight", Env({"DATABASE_URL": database_url, "BIND_ADDR": "127.0.0.1:0", **INTERNAL_ENV, **env}),
                            pool_size=1)
    assert info.value.variable == variable and variable in str(info.value)


async def test_the_service_runs_the_sweeper_unless_disabled(database_url: str, pool: asyncpg.Pool) -> None:
    await add_profiles(pool, 2)
    base = {"DATABASE_URL": database_url, "BIND_ADDR": "127.0.0.1:0", **INTERNAL_ENV}
    disabled = await start_service("insight", Env({**base, "SNAPSHOT_DISABLED": "1"}), pool_size=1)
    try:
        assert disabled.tasks == []
    finally:
        await disabled.stop(grace=0.1)
    every_second = await start_service("insight", Env({**base, "SNAPSHOT_CRON": "* * * * * *",
                                                       "SNAPSHOT_TZ": "America/New_York"}), pool_size=2)
    try:
        assert len(every_second.tasks) == 1
        await wait_for(lambda: _count(pool, 2), timeout=5)
    finally:
        await every_second.stop(grace=0.1)
    rows = await pool.fetch("SELECT captured_at, count(*) AS n FROM insight.snapshots GROUP BY captured_at")
    assert rows and all(row["n"] == 2 and row["captured_at"].microsecond == 0 for row in rows)
