"""`rapport bench event-log` runs (it silently could not, once the services required the internal credential)."""
from __future__ import annotations

from tools.bench.event_log import run


async def test_a_tiny_run_measures_events_and_branch_switches() -> None:
    figures = await run(turn_count=10, switches=2)
    assert set(figures) >= {"event_p50", "call_long_p50", "call_short_p50", "switch_long_p50", "switch_short_p50"}
    assert all(value > 0 for value in figures.values())
    assert figures["switch_long_p50"] >= figures["call_long_p50"]  # the switch includes the call
