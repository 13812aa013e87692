"""A small in-process cache whose entries expire: what a credential check said, reused for a bounded time."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass
class TtlCache(Generic[V]):
    """Answers by key for `ttl` seconds (`negative_ttl` for a None answer); at most `max_entries`, oldest
    evicted first. A ttl of 0 caches nothing."""

    ttl: float
    negative_ttl: float = 5.0
    max_entries: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _entries: OrderedDict[str, tuple[float, V | None]] = field(default_factory=OrderedDict)

    def get(self, key: str) -> tuple[bool, V | None]:
        """(known, answer): known is False when the answer must be looked up again."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self.clock():
            return False, None
        return True, entry[1]

    def put(self, key: str, answer: V | None) -> None:
        ttl = self.ttl if answer is not None else min(self.ttl, self.negative_ttl)
        if ttl <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (self.clock() + ttl, answer)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
