"""Spans are recorded only when something exports them; their ids exist either way (servicekit/telemetry.py).

Run in a fresh interpreter: the tracer provider is process-wide and the test session installs one with an
in-memory exporter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, os
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from services.servicekit.telemetry import current_trace_id, setup_telemetry

exported = InMemorySpanExporter()
setup_telemetry("probe", extra_exporter=exported if os.environ.get("PROBE_EXPORT") else None)
tracer = trace.get_tracer("probe")
carrier = {}
recording = []
with tracer.start_as_current_span("turn") as span:
    outer = current_trace_id()
    recording.append(span.is_recording())
    with tracer.start_as_current_span("child") as child:
        inner = current_trace_id()
        recording.append(child.is_recording())
        TraceContextTextMapPropagator().inject(carrier)
# a caller that did not export sent a not-sampled parent: this process records it if it exports
remote = TraceContextTextMapPropagator().extract({"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-00"})
with tracer.start_as_current_span("called", context=remote) as called:
    called_trace = current_trace_id()
    recording.append(called.is_recording())
print(json.dumps({
    "recording": recording,
    "trace_ids": [outer, inner, called_trace],
    "traceparent": carrier.get("traceparent", ""),
    "exported": [s.name for s in exported.get_finished_spans()],
}))
"""


def probe(**env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    output = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return json.loads(output.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_without_an_exporter_spans_are_not_recorded_but_keep_their_trace_ids() -> None:
    result = probe()
    assert result["recording"] == [False, False, False]
    outer, inner, called = result["trace_ids"]  # type: ignore[misc]
    assert len(outer) == 32 and outer != "0" * 32
    assert inner == outer  # the child is in the same trace
    assert called == "ab" * 16  # a caller's trace id is kept
    assert str(result["traceparent"]).startswith(f"00-{outer}-")  # propagated to the services it calls
    assert result["exported"] == []


def test_with_an_exporter_every_span_is_recorded_even_under_a_caller_that_did_not_export() -> None:
    result = probe(PROBE_EXPORT="1")
    assert result["recording"] == [True, True, True]
    assert result["exported"] == ["child", "turn", "called"]
    assert result["trace_ids"][2] == "ab" * 16  # type: ignore[index]


def test_otel_traces_sampler_still_decides_when_exporting() -> None:
    result = probe(PROBE_EXPORT="1", OTEL_TRACES_SAMPLER="always_off")
    assert result["recording"] == [False, False, False]
    assert result["exported"] == []
