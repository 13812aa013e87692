"""The snapshot sweeper: copies every profile into insight.snapshots at each firing of SNAPSHOT_CRON
(spec: insight.md, Snapshots).

`captured_at` is the scheduled firing time, not the moment the copy ran, so replicas agree on it and
the store writes exactly one snapshot per user per firing. The clock and the sleep are injected:
tests drive `fire(at=...)` and `next_firing(now)` directly, or run the loop on a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg

from services.insight import store
from services.insight.schedule import DEFAULT_SNAPSHOT_CRON, DEFAULT_SNAPSHOT_TZ, ScheduleError, SnapshotSchedule
from services.servicekit.config import ConfigError, Env

log = logging.getLogger("rapport.insight.snapshots")

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]
MAX_SLEEP_SECONDS = 300.0  # re-read the wall clock at least this often (it can jump; sleep is monotonic)


def utc_now() -> datetime:
    return datetime.now(UTC)


def schedule_from_env(env: Env) -> SnapshotSchedule | None:
    """The sweeper's schedule, or None with SNAPSHOT_DISABLED. SNAPSHOT_CRON and SNAPSHOT_TZ are
    validated even when disabled: a bad value stops start-up with a ConfigError naming it."""
    disabled = env.bool("SNAPSHOT_DISABLED", False)
    try:
        schedule = SnapshotSchedule.parse(
            env.str("SNAPSHOT_CRON", DEFAULT_SNAPSHOT_CRON) or DEFAULT_SNAPSHOT_CRON,
            env.str("SNAPSHOT_TZ", DEFAULT_SNAPSHOT_TZ) or DEFAULT_SNAPSHOT_TZ,
        )
    except ScheduleError as error:
        raise ConfigError(error.variable, error.expected, error.got) from None
    return None if disabled else schedule


class SnapshotSweeper:
    """Fires on the schedule; each firing copies every profile once (see store.capture_snapshots)."""

    def __init__(
        self, pool: asyncpg.Pool, schedule: SnapshotSchedule, *, clock: Clock = utc_now, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.pool = pool
        self.schedule = schedule
        self.clock = clock
        self.sleep = sleep
        self.cursor: datetime | None = None  # the last firing done (or start time); survives a loop restart

    def next_firing(self, now: datetime) -> datetime:
        return self.schedule.next_firing(now)

    async def fire(self, at: datetime) -> int:
        """Snapshot every profile for the firing `at`; returns the snapshots written (0 if another
        replica already wrote this firing)."""
        written = await store.capture_snapshots(self.pool, at)
        log.info("snapshot firing %s: %d profiles captured", at.isoformat(), written)
        return written

    async def _wait_until(self, at: datetime) -> None:
        while (delay := (at - self.clock()).total_seconds()) > 0:
            await self.sleep(min(delay, MAX_SLEEP_SECONDS))

    async def run(self) -> None:
        """The background loop. A failed firing raises (the supervisor restarts the loop) and is
        retried on restart, since the cursor only moves past a firing once it is written; firings
        missed while the process was busy or suspended are skipped."""
        if self.cursor is None:
            self.cursor = self.clock()
        while True:
            at = self.next_firing(self.cursor)
            await self._wait_until(at)
            await self.fire(at)
            self.cursor = max(at, self.clock())
