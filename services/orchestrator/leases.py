"""Turn ownership by lease (issue 13): this orchestrator process is a replica with an id and a heartbeat; a turn
it runs carries its id. Every `BEAT_SECONDS` it beats and sweeps: turns of replicas that stopped or stopped
beating for `LEASE_SECONDS`, and its own turns it no longer runs (a failure that could not be recorded during a
database outage), end failed — a retry then generates them again. Two replicas never fail each other's live
turns, so a restarting replica cannot cause a duplicate reply."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

import asyncpg

from .live_turns import LiveTurns
from .store import turns

log = logging.getLogger("rapport.leases")

BEAT_SECONDS = 2.0
LEASE_SECONDS = 10.0


@dataclass
class TurnLeases:
    pool: asyncpg.Pool
    live: LiveTurns
    replica_id: uuid.UUID = field(default_factory=uuid.uuid4)
    beat_seconds: float = BEAT_SECONDS
    lease_seconds: float = LEASE_SECONDS

    async def start(self) -> None:
        await turns.register_replica(self.pool, self.replica_id)
        await self.sweep()

    async def sweep(self) -> int:
        swept = await turns.fail_abandoned_turns(
            self.pool, replica_id=self.replica_id, live_turn_ids=self.live.turn_ids(), lease_seconds=self.lease_seconds
        )
        if swept:
            log.warning("%d turns nobody runs any more were marked failed (a retry generates them again)", swept)
        return swept

    async def run(self) -> None:
        """Beat and sweep until cancelled; a database outage is waited out (the next beat tries again)."""
        while True:
            await asyncio.sleep(self.beat_seconds)
            try:
                await turns.beat(self.pool, self.replica_id)
                await self.sweep()
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as error:
                log.warning("turn lease: the database is unavailable (%s); trying again", error)

    async def claim(self, turn_id: str) -> None:
        await turns.claim_turn(self.pool, turn_id, self.replica_id)

    async def stop(self) -> None:
        try:
            await turns.stop_replica(self.pool, self.replica_id)
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as error:
            log.warning("could not record that this replica stops (%s): its turns expire with the lease", error)
