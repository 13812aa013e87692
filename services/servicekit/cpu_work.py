"""CPU-bound work (sentiment scoring, rule-based extraction) off the event loop, on one worker thread.

Pure-Python analysis holds the GIL, so more threads add no throughput, only contention: with N threads
busy, the event loop waits for the GIL about N switch intervals (5 ms each) at every step, and a read
that takes a few steps is slowed by tens to hundreds of milliseconds. One worker per process keeps that
wait at one interval however many users send pathological text at once; the work queues instead
(measured in docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rapport-cpu")


async def run_cpu_bound(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`function(*args, **kwargs)` on the CPU worker thread, awaited without blocking the loop."""
    return await asyncio.get_running_loop().run_in_executor(_WORKER, functools.partial(function, *args, **kwargs))
