"""Tracing without an exporter: nothing recorded, the trace still carried (pure, no I/O)."""

from __future__ import annotations

import pytest
from opentelemetry import context, propagate
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.telemetry import make_provider, spans_recorded

PARTNER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _child_of_partner(provider_name: str, exporter: InMemorySpanExporter | None) -> tuple[bool, dict[str, str]]:
    tracer = make_provider(provider_name, exporter).get_tracer("test")
    token = context.attach(propagate.extract({"traceparent": PARTNER}))
    try:
        with tracer.start_as_current_span("intake accept") as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            return span.is_recording(), carrier
    finally:
        context.detach(token)


def test_with_no_exporter_spans_are_not_recorded_but_the_partners_trace_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    recording, carrier = _child_of_partner("intake", None)
    assert not recording
    _, trace_id, span_id, _ = carrier["traceparent"].split("-")
    assert trace_id == "0af7651916cd43dd8448eb211c80319c"  # the partner's trace, continued
    assert span_id != "b7ad6b7169203331"  # by a span of ours


def test_with_an_exporter_spans_are_recorded_and_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    exporter = InMemorySpanExporter()
    recording, carrier = _child_of_partner("intake", exporter)
    assert recording
    [span] = exporter.get_finished_spans()
    assert span.context is not None and f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert carrier["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"


def test_a_sampler_chosen_in_the_environment_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    recording, _ = _child_of_partner("intake", None)
    assert recording


def test_hot_loops_know_whether_spans_are_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    # The consumers skip their per-record spans exactly when nothing would record them.
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    assert not spans_recorded(make_provider("projections", None))
    assert spans_recorded(make_provider("projections", InMemorySpanExporter()))
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    assert spans_recorded(make_provider("projections", None))
