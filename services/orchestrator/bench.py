"""The old import path of `rapport bench turn`'s code, which is now tools/bench/turn.py (a source
checkout only: the benchmarks are not installed). Tests written before the move import from here."""

from tools.bench.turn import (
    BenchReport,
    BenchTarget,
    LevelResult,
    PathFigures,
    capacity_note,
    cpu_seconds,
    machine_description,
    merge_section,
    percentile,
    render_section,
    render_table,
    run_bench,
)

__all__ = [
    "BenchReport",
    "BenchTarget",
    "LevelResult",
    "PathFigures",
    "capacity_note",
    "cpu_seconds",
    "machine_description",
    "merge_section",
    "percentile",
    "render_section",
    "render_table",
    "run_bench",
]
