"""The per-user cap on turns in flight and its fair, bounded queue (live_turns.LiveTurns)."""
from __future__ import annotations

import asyncio

import pytest

from services.orchestrator.live_turns import LiveTurns, TooManyTurns


async def started(coroutine) -> asyncio.Task:  # type: ignore[no-untyped-def,type-arg]
    task = asyncio.ensure_future(coroutine)
    await asyncio.sleep(0)  # let it reach its wait
    return task


async def test_beyond_the_cap_queued_turns_get_freed_places_first_come_first_served() -> None:
    live = LiveTurns(max_per_user=2, queue_wait=30)
    await live.admit("u")
    await live.admit("u")
    first = await started(live.admit("u", queue=True))
    second = await started(live.admit("u", queue=True))
    assert not first.done() and not second.done()
    with pytest.raises(TooManyTurns):  # an unqueued turn is refused at once, and never passes the queue
        await live.admit("u")
    await live.admit("someone else")  # the cap is per user
    live.release("u")
    await asyncio.wait_for(first, 1)
    assert not second.done()
    live.release("u")
    await asyncio.wait_for(second, 1)
    for _ in range(2):
        live.release("u")
    await live.admit("u")  # the two queued turns ended: places are free again
    await live.admit("u")


async def test_a_queued_turn_is_refused_after_the_wait_with_retry_after() -> None:
    live = LiveTurns(max_per_user=1, queue_wait=0.05)
    await live.admit("u")
    with pytest.raises(TooManyTurns) as refused:
        await live.admit("u", queue=True)
    assert refused.value.retry_after >= 1
    live.release("u")
    await live.admit("u", queue=True)  # nothing was left behind in the queue


async def test_a_cancelled_waiter_leaves_the_queue_and_its_place_goes_on() -> None:
    live = LiveTurns(max_per_user=1, queue_wait=30)
    await live.admit("u")
    gone = await started(live.admit("u", queue=True))
    waiting = await started(live.admit("u", queue=True))
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    live.release("u")
    await asyncio.wait_for(waiting, 1)
    with pytest.raises(TooManyTurns):
        await live.admit("u")


async def test_a_finished_turn_is_not_running_though_its_log_is_kept_for_replay() -> None:
    """Found by SIGKILLing PostgreSQL under `rapport up`: a turn whose end could not be written stayed `running`
    for a minute (its retries got 409), because the lease sweep took every turn with a kept log as live."""
    live = LiveTurns()
    finish = asyncio.Event()

    async def work(log) -> None:  # type: ignore[no-untyped-def]
        await finish.wait()

    log = live.start("t1", work)
    assert live.turn_ids() == ["t1"]
    finish.set()
    await live.drain(timeout=1)
    assert log.closed and live.get("t1") is log  # kept: a late attacher replays it
    assert live.turn_ids() == []
