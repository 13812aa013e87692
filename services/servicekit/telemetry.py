"""OpenTelemetry set-up from the standard OTEL_* variables only.

A tracer provider always exists (so trace ids reach the `final` frame and the explain endpoint);
spans are exported only when an exporter is configured (`OTEL_TRACES_EXPORTER` or
`OTEL_EXPORTER_OTLP_ENDPOINT`). No exporter configured -> no export, no error, and no span is recorded:
every span still gets its trace and span ids (propagated to the other services, shown to the user), but
its attributes, events and end are not kept for nobody — about a seventh of a turn's CPU across the stack
(docs/benchmarks.md, "Performance budget").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, Sampler, SamplingResult
from opentelemetry.sdk.trace.sampling import _get_from_env_or_default as configured_sampler  # the SDK's env reading
from opentelemetry.util.types import Attributes

log = logging.getLogger("rapport.telemetry")
_configured = False


class RecordWhenExported(Sampler):
    """Spans are recorded only while something exports them; otherwise they are dropped, keeping their ids.

    When exporting, `OTEL_TRACES_SAMPLER` decides if it is set; if not, every span is recorded, also under a
    caller that did not export (and so sent a not-sampled parent): not parent-based on purpose."""

    def __init__(self) -> None:
        self.exporting = False
        self.when_exporting = configured_sampler() if os.environ.get("OTEL_TRACES_SAMPLER") else ALWAYS_ON

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if not self.exporting:
            return SamplingResult(Decision.DROP)
        return self.when_exporting.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"RecordWhenExported{{{self.when_exporting.get_description()}}}"


SAMPLER = RecordWhenExported()


def _exporter_from_env() -> SpanExporter | None:
    kind = (os.environ.get("OTEL_TRACES_EXPORTER") or "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if kind in ("none",):
        return None
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if kind == "otlp" or (not kind and endpoint):
        protocol = (os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").lower()
        if protocol.startswith("http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

            return HttpExporter()  # type: ignore[no-any-return]
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if kind:
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console, none); not exporting", kind)
    return None


def _setup_metrics(resource: Resource) -> None:
    """OTel metrics, exported over OTLP only when an endpoint or `OTEL_METRICS_EXPORTER=otlp` is configured."""
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider

    kind = (os.environ.get("OTEL_METRICS_EXPORTER") or "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    readers = []
    if kind == "otlp" or (not kind and endpoint):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))


def meter(name: str):  # type: ignore[no-untyped-def]
    from opentelemetry import metrics

    return metrics.get_meter(name)


def setup_telemetry(service_name: str, extra_exporter: SpanExporter | None = None) -> TracerProvider:
    """Install the process-wide tracer provider once and instrument asyncpg.

    `extra_exporter` is for tests (an in-memory exporter, exported synchronously).
    """
    global _configured
    provider = trace.get_tracer_provider()
    if not _configured:
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or f"rapport-{service_name}"})
        provider = TracerProvider(resource=resource, sampler=SAMPLER)
        exporter = _exporter_from_env()
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
            SAMPLER.exporting = True
        trace.set_tracer_provider(provider)
        _setup_metrics(resource)
        try:
            from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

            AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
        except Exception:  # instrumentation is optional: never stop a service for it
            log.warning("asyncpg instrumentation unavailable", exc_info=True)
        _configured = True
    if extra_exporter is not None and isinstance(provider, TracerProvider):
        provider.add_span_processor(SimpleSpanProcessor(extra_exporter))
        SAMPLER.exporting = True
    assert isinstance(provider, TracerProvider)
    return provider


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""
