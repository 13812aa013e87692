"""Turns in flight: a frame log per turn that any number of listeners can follow, per-session
serialization and the per-user concurrency cap.

Generation runs detached from the caller; a listener that goes away only stops listening.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
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
    pass


@dataclass
class LiveTurns:
    max_per_user: int = 3
    _logs: dict[str, FrameLog] = field(default_factory=dict)
    _session_locks: dict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    _per_user: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def get(self, turn_id: str) -> FrameLog | None:
        return self._logs.get(turn_id)

    def turn_ids(self) -> list[str]:
        """Turns this process runs (or finished a moment ago)."""
        return list(self._logs)

    def admit(self, user_id: str) -> None:
        """Count a new turn for the user, or refuse it (at most `max_per_user` at once)."""
        if self._per_user[user_id] >= self.max_per_user:
            raise TooManyTurns(f"at most {self.max_per_user} turns at once per user")
        self._per_user[user_id] += 1

    def release(self, user_id: str) -> None:
        self._per_user[user_id] = max(0, self._per_user[user_id] - 1)

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
