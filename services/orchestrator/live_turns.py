"""Turns in flight: a frame log per turn that any number of listeners can follow, per-session
serialization and the per-user concurrency cap.

Generation runs detached from the caller; a listener that goes away only stops listening.

The cap (`MAX_TURNS_PER_USER`, 3): at most that many turns of one user generate at once — different
conversations in parallel, the turns of one session one after another. Beyond the cap, a turn of the
OpenAI-compatible API (whose clients fan requests out and often do not retry) waits in the user's queue,
first come first served (a freed place goes to the longest waiter, never to a newcomer), for up to
`TURN_QUEUE_WAIT_SECS` (10 s); a turn of the browser API, or one still without a place after the wait,
is refused at once (429 with Retry-After). A newcomer never passes a turn that is waiting.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from services.contracts.frames import Frame


@dataclass
class FrameLog:
    """Frames of one turn, appended by the generator, replayed from the start to each listener."""

    frames: list[Frame] = field(default_factory=list)
    closed: bool = False
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def publish(self, frame: Frame) -> None:
        async with self._changed:
            self.frames.append(frame)
            self._changed.notify_all()

    async def close(self) -> None:
        async with self._changed:
            self.closed = True
            self._changed.notify_all()

    async def follow(self) -> AsyncIterator[Frame]:
        index = 0
        while True:

            def more(seen: int = index) -> bool:
                return seen < len(self.frames) or self.closed

            async with self._changed:
                await self._changed.wait_for(more)
                pending = self.frames[index:]
                finished = self.closed
            for frame in pending:
                yield frame
            index += len(pending)
            if finished and index >= len(self.frames):
                return


class TooManyTurns(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds


@dataclass
class LiveTurns:
    max_per_user: int = 3
    queue_wait: float = 10.0  # how long a queued turn beyond the cap may wait for a place, in seconds
    _logs: dict[str, FrameLog] = field(default_factory=dict)
    _session_locks: dict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    _per_user: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _waiting: dict[str, deque[asyncio.Future[None]]] = field(default_factory=dict)  # per user, oldest first
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def get(self, turn_id: str) -> FrameLog | None:
        return self._logs.get(turn_id)

    def turn_ids(self) -> list[str]:
        """Turns this process is running now. A finished one whose log is still kept for replay is not: if
        the database still says it runs (its end could not be written during an outage), the lease sweep
        ends it at once instead of a retry getting 409 for the minute the log is kept."""
        return [turn_id for turn_id, log in self._logs.items() if not log.closed]

    async def admit(self, user_id: str, *, queue: bool = False) -> None:
        """Count a new turn for the user: at once while the user has fewer than `max_per_user` and nobody
        waits; else, with `queue`, after the turns queued before it, when a place frees up within
        `queue_wait` seconds; else TooManyTurns."""
        if self._per_user[user_id] < self.max_per_user and not self._waiting.get(user_id):
            self._per_user[user_id] += 1
            return
        if not queue or self.queue_wait <= 0:
            raise TooManyTurns(f"at most {self.max_per_user} turns at once per user", retry_after=2)
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(user_id, deque()).append(place)
        try:
            await asyncio.wait_for(asyncio.shield(place), self.queue_wait)
        except TimeoutError:
            if self._leave_queue(user_id, place):
                return  # the place came just as the wait ran out
            raise TooManyTurns(
                f"at most {self.max_per_user} turns at once per user (waited {self.queue_wait:g} s for a place)",
                retry_after=max(1, math.ceil(self.queue_wait)),
            ) from None
        except asyncio.CancelledError:
            if self._leave_queue(user_id, place):
                self.release(user_id)  # handed a place while being cancelled: hand it on
            raise

    def _leave_queue(self, user_id: str, place: asyncio.Future[None]) -> bool:
        """Stop waiting; True when the place had been handed over meanwhile (it is taken)."""
        if place.done() and not place.cancelled():
            return True
        place.cancel()
        queue = self._waiting[user_id]
        queue.remove(place)
        if not queue:
            del self._waiting[user_id]
        return False

    def release(self, user_id: str) -> None:
        """A turn of the user ended: its place goes to the first turn waiting, if any."""
        queue = self._waiting.get(user_id)
        while queue:
            place = queue.popleft()
            if not queue:
                del self._waiting[user_id]
            if not place.done():
                place.set_result(None)  # the count stays: the place changes hands
                return
        self._per_user[user_id] = max(0, self._per_user[user_id] - 1)
        if not self._per_user[user_id]:
            del self._per_user[user_id]

    def session_lock(self, session_id: str) -> asyncio.Lock:
        return self._session_locks[session_id]

    def start(self, turn_id: str, work: Any) -> FrameLog:
        """Register the frame log and run `work(log)` as a detached task."""
        log = FrameLog()
        self._logs[turn_id] = log

        async def runner() -> None:
            try:
                await work(log)
            finally:
                await log.close()
                # Keep the finished log briefly so late attachers replay from memory; the DB has it too.
                asyncio.get_running_loop().call_later(60, self._logs.pop, turn_id, None)

        task = asyncio.create_task(runner(), name=f"turn-{turn_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return log

    async def drain(self, timeout: float) -> None:
        """Wait for turns in flight (graceful stop), then cancel what is left."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
