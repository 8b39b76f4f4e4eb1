"""OpenTelemetry: one trace from the HTTP request through each Kafka hop to the projection.

The exporter follows the standard variables: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console`` or
``none``, the default) and ``OTEL_EXPORTER_OTLP_*``. Span attributes never carry personal data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

_configured = False


def setup_tracing(service_name: str, exporter: SpanExporter | None = None) -> None:
    """Install the tracer provider once per process (tests pass an in-memory exporter)."""
    global _configured
    if _configured:
        return
    trace.set_tracer_provider(make_provider(service_name, exporter))
    _configured = True


def make_provider(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """The provider for ``OTEL_TRACES_EXPORTER`` (or ``exporter``). With nothing to export
    to, spans are not recorded (sampler off, unless ``OTEL_TRACES_SAMPLER`` says otherwise):
    trace and span ids are still made and carried in every hop's headers, so a partner's
    trace continues through the log, but no span object, attribute or event is built for
    nobody: that was a fifth of intake's CPU per single post."""
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "none").lower()
    records = exporter is not None or kind in ("otlp", "console")
    sampler = None if records or os.environ.get("OTEL_TRACES_SAMPLER") else ALWAYS_OFF
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), sampler=sampler)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif kind == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider


def spans_recorded(provider: trace.TracerProvider | None = None) -> bool:
    """False when ``provider`` (the installed one by default) records nothing (no exporter:
    sampler off), so a hot loop can skip building spans that nothing would ever read."""
    chosen = provider if provider is not None else trace.get_tracer_provider()
    return getattr(chosen, "sampler", None) is not ALWAYS_OFF


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def current_trace_headers() -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextmanager
def consumed_span(
    name: str, headers: Mapping[str, str], attributes: Mapping[str, str | int] | None = None
) -> Iterator[trace.Span]:
    """A consumer span that continues the trace carried in the record's headers."""
    parent = propagate.extract(dict(headers))
    token = context.attach(parent)
    try:
        with trace.get_tracer("tnrwatch.kafka").start_as_current_span(
            name, kind=trace.SpanKind.CONSUMER, attributes=dict(attributes or {})
        ) as span:
            yield span
    finally:
        context.detach(token)
