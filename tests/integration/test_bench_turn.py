"""`rapport bench turn`'s measurement code on a tiny run: real services, real Postgres, the offline LLM
served over HTTP; both paths measured, the report shaped as docs/benchmarks.md expects."""
from __future__ import annotations

import asyncio
import math
import os
from datetime import UTC, datetime

from services.offline_llm.server import build_llm_app, serve_llm
from tools.bench.turn import (  # the benchmark moved to tools/ (issue 9)
    BenchReport,
    BenchTarget,
    LevelResult,
    TurnOutcome,
    PathFigures,
    capacity_note,
    cpu_seconds,
    drive_paced,
    level_rate,
    machine_description,
    merge_section,
    percentile,
    render_section,
    render_table,
    run_bench,
)

from ..stack import start_stack


async def test_a_tiny_run_measures_both_paths_and_the_post_process(database_url: str) -> None:
    llm = await serve_llm(build_llm_app("offline"))
    stack = await start_stack(database_url, extra_env={"LLM_BASE_URL": llm.base_url, "LLM_API_KEY": "offline",
                                                       "LLM_OFFLINE": "1"})
    try:
        target = BenchTarget(gateway_url=stack.url, llm_base_url=llm.base_url, database_url=database_url,
                             mint_token=stack.token)
        report = await run_bench(target, [1, 2], turns=2, warmup=1, drain_timeout=20)
    finally:
        await stack.stop()
        await llm.stop()

    assert [level.sessions for level in report.levels] == [1, 2]
    for level in report.levels:
        measured = level.sessions * 2
        for path in (level.direct, level.gateway):
            assert (path.errors, path.first_error) == (0, None)
            assert path.turns == measured
            assert path.p50 > 0 and path.p99 >= path.p50
            assert path.seconds > 0 and path.turns_per_second > 0
        assert len(level.direct.ttft_ms) == measured
        assert len(level.gateway.ttft_ms) + level.gateway.ghosts == measured
        assert not math.isnan(level.added_p50) and not math.isnan(level.added_p99)
        assert level.lag is not None
        assert level.lag.pending == 0 and level.lag.dead == 0
        assert level.lag.jobs >= 3 * (measured - level.gateway.ghosts)  # affinity, memory, insight per reply
        assert level.lag.p95_ms is not None and level.lag.p95_ms > 0
    assert report.seconds > 0

    table = render_table(report)
    assert table.splitlines()[0].split()[:2] == ["sessions", "measured"]
    assert len(table.splitlines()) == 2 + len(report.levels)

    section = render_section(report, machine_description(), "rapport bench turn --sessions 1,2 --turns 2 --warmup 1",
                             datetime(2030, 1, 2, 3, 4, tzinfo=UTC))
    lines = section.splitlines()
    assert lines[0] == "## Turn latency"
    assert "on 2030-01-02 03:04 UTC" in section
    rows = [line for line in lines if line.startswith(("| 1 |", "| 2 |"))]
    assert [row.split("|")[2].strip() for row in rows] == ["2", "4"]  # measured turns per level
    assert "not measured (no level with 16 sessions" in section  # the goal is judged at 16 sessions only
    assert "rapport bench turn --sessions 1,2 --turns 2 --warmup 1" in section


def test_the_turn_section_replaces_only_itself() -> None:
    others = "# Benchmarks\n\nintro\n\n## Memory recall\n\nrecall figures\n"
    appended = merge_section(others, "## Turn latency\n\nnew\n")
    assert appended == others + "\n## Turn latency\n\nnew\n"

    document = others + "\n## Turn latency\n\nold figures\n\n## Cost growth\n\nflat\n"
    replaced = merge_section(document, "## Turn latency\n\nnew\n")
    assert replaced == others + "\n## Turn latency\n\nnew\n\n## Cost growth\n\nflat\n"
    assert merge_section(replaced, "## Turn latency\n\nnew\n") == replaced  # idempotent

    created = merge_section(None, "## Turn latency\n\nnew\n")
    assert created.startswith("# Benchmarks\n") and created.endswith("## Turn latency\n\nnew\n")


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 100) == 5.0
    assert math.isclose(percentile(list(range(1, 101)), 99), 99.01)
    assert math.isnan(percentile([], 50))


def test_cpu_time_is_read_per_named_process_and_for_the_bench_itself() -> None:
    sum(i * i for i in range(200_000))  # spend some CPU so the counters have moved
    usage = cpu_seconds({"this process": os.getpid(), "gone": 2**22 + 12345})
    assert set(usage) == {"this process", "bench client"}  # a process that does not exist is left out
    assert usage["this process"] > 0 and usage["bench client"] > 0


def test_the_capacity_note_names_the_cpu_limit_and_a_saturated_goal_level() -> None:
    def level(sessions: int, turns_per_second: float, ttft_direct: float, ttft_gateway: float) -> LevelResult:
        direct = PathFigures(ttft_ms=[ttft_direct], turns=1, seconds=1.0)
        gateway = PathFigures(ttft_ms=[ttft_gateway], turns=int(turns_per_second * 10), seconds=10.0)
        return LevelResult(sessions, direct, gateway, cpu_ms_per_turn={"memory": 120.0, "orchestrator": 80.0})

    report = BenchReport(turns=10, warmup=1, levels=[level(1, 4.0, 8.0, 68.0), level(16, 9.0, 50.0, 900.0)])
    note = capacity_note(report, cpus=2)
    assert note.startswith("At 16 sessions a turn costs 200 ms of CPU across all processes (memory: 120 ms), "
                           "so 2 CPUs serve at most 10.0 turns/s.")
    assert "saturated" in note and "without waiting for a CPU: +60.0 ms at p50" in note

    report.levels[1] = level(16, 3.0, 50.0, 90.0)  # far below the limit: no saturation claimed
    assert "saturated" not in capacity_note(report, cpus=2)


async def test_a_paced_session_waits_its_think_time_between_messages(monkeypatch) -> None:
    """One session offered 0.5 turns/s sends every 2 s. The measured turns' schedule started from a start time the
    sessions could read before it was set (0.0), so a lone session ran closed loop (8 turns/s "paced at 0.5").
    A fake clock: the bench's sleeps advance it, nothing waits for real."""
    import tools.bench.turn as bench

    now = [1000.0]
    sent: list[float] = []
    yield_to_loop = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:
        now[0] += seconds
        await yield_to_loop(0)

    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(bench.asyncio, "sleep", fake_sleep)

    class Session:
        async def send(self, text: str) -> TurnOutcome:
            sent.append(now[0])
            now[0] += 0.1  # the reply takes 100 ms
            return TurnOutcome(ttft_ms=10.0)

    figures = await drive_paced([Session()], warmup=1, turns=3, rate=0.5)
    measured = sent[1:]
    assert [round(b - a, 3) for a, b in zip(measured, measured[1:])] == [2.0, 2.0]
    assert figures.turns == 3 and round(figures.seconds, 3) == 4.1


def test_a_smaller_paced_level_keeps_the_think_time_of_the_goal_level() -> None:
    """The paced rate is what 16 sessions offer together; one session offering all of it alone sent every
    0.15 s — closed loop again, its query always colliding with its own last post-process."""
    assert level_rate(6.4, 16) == 6.4
    assert level_rate(6.4, 1) == 0.4  # the same 2.5 s between a session's messages
    assert level_rate(6.4, 64) == 6.4  # a larger level shares the rate (the goal level's is the reference)
