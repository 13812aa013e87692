"""`rapport bench recall|turn` (recall.py, turn.py): figures for docs/benchmarks.md, from a source checkout."""
