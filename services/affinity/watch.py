"""Fan-out of committed affinity changes to WatchAffinity streams, across replicas.

Every write NOTIFYs `affinity_changes` with the new state inside its transaction (store.py). One
LISTEN connection per process (`AffinityChanges.listen`, a supervised background loop) hands each
notification to the subscribers of that session. After a reconnect — or when a slow subscriber's
queue overflows — subscribers get a `RESYNC` marker and re-read the state, so nothing is silently
lost; versions let them drop duplicates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.affinity.store import CHANGES_CHANNEL, SessionAffinity

log = logging.getLogger("rapport.affinity.watch")

KEEPALIVE_SECONDS = 30.0
QUEUE_SIZE = 256


@dataclass(frozen=True)
class StateChange:
    """One committed change of a session; `state` is None when the session was deleted."""

    session_id: uuid.UUID
    state: SessionAffinity | None
    kind: str
    event_id: str


class Resync:
    """Marker: notifications may have been missed; re-read the state."""


RESYNC = Resync()
WatchItem = StateChange | Resync


def parse_notification(payload: str) -> StateChange:
    data: dict[str, Any] = json.loads(payload)
    if data.get("deleted"):
        return StateChange(uuid.UUID(data["session_id"]), None, "deleted", "")
    state = SessionAffinity.from_json(data["state"])
    return StateChange(state.session_id, state, data.get("kind", ""), data.get("event_id", ""))


class AffinityChanges:
    """The process's LISTEN connection and the subscribers per session."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._subscribers: dict[uuid.UUID, set[asyncio.Queue[WatchItem]]] = {}
        self._listening = asyncio.Event()

    async def wait_listening(self, timeout: float) -> bool:
        """True once the LISTEN connection is up (a subscriber must not start reading before)."""
        try:
            await asyncio.wait_for(self._listening.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @contextmanager
    def subscribe(self, session_id: uuid.UUID) -> Iterator[asyncio.Queue[WatchItem]]:
        queue: asyncio.Queue[WatchItem] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._subscribers.setdefault(session_id, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._subscribers.get(session_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._subscribers[session_id]

    def _offer(self, queue: asyncio.Queue[WatchItem], item: WatchItem) -> None:
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:  # a stalled reader: drop the backlog, make it re-read
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(RESYNC)

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            change = parse_notification(payload)
        except (ValueError, KeyError, TypeError):
            log.exception("unreadable affinity notification: %.200s", payload)
            return
        for queue in list(self._subscribers.get(change.session_id, ())):
            self._offer(queue, change)

    def _resync_all(self) -> None:
        for queues in self._subscribers.values():
            for queue in list(queues):
                self._offer(queue, RESYNC)

    async def listen(self) -> None:
        """Background loop: LISTEN until the connection fails (the supervisor restarts it)."""
        conn = await asyncpg.connect(self.dsn)
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _conn: closed.set())
        try:
            await conn.add_listener(CHANGES_CHANNEL, self._on_notification)
            self._resync_all()  # anything between a lost connection and now
            self._listening.set()
            while not closed.is_set():
                try:
                    await asyncio.wait_for(closed.wait(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    await conn.fetchval("SELECT 1")  # raises if the connection silently died
            raise ConnectionError("affinity LISTEN connection closed")
        finally:
            self._listening.clear()
            if not conn.is_closed():
                await conn.close(timeout=2)
