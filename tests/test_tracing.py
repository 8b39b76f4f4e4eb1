"""One trace from the partner's HTTP request through each Kafka hop to the projection write."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from tests.conftest import SPANS, Stack
from tests.harness import wait_for
from tests.test_end_to_end import STRUCTURED, kidnapping_report


def _spans_of(trace_id: int) -> list[ReadableSpan]:
    return [s for s in SPANS.get_finished_spans() if s.context is not None and s.context.trace_id == trace_id]


async def test_one_trace_spans_intake_classifier_and_projections(stack: Stack, partner_key: str) -> None:
    auth = {"authorization": f"Bearer {partner_key}"}
    response = await stack.intake.post("/v1/events", json=kidnapping_report("trace-1"), headers={**auth, **STRUCTURED})
    assert response.status_code == 202, response.text
    incident_id = response.json()["accepted"][0]["incident_id"]

    async def projected() -> dict[str, Any] | None:
        r = await stack.projections.get(f"/v1/incidents/{incident_id}", headers=auth)
        return r.json() if r.status_code == 200 and r.json().get("classification") else None

    await wait_for(projected, what="the classified incident")

    def chain() -> tuple[ReadableSpan, list[str]] | None:
        """The classified event's projection span, and the span names up to the trace's root."""
        for post in (s for s in SPANS.get_finished_spans() if s.name == "POST /v1/events"):
            assert post.context is not None
            spans = _spans_of(post.context.trace_id)
            by_id = {s.context.span_id: s for s in spans if s.context is not None}
            for leaf in spans:
                if leaf.name != "projections process" or leaf.attributes is None:
                    continue
                if leaf.attributes.get("cloudevents.event_type") != "org.tnrwatch.incident.classified.v1":
                    continue
                names = []
                node: ReadableSpan | None = leaf
                while node is not None:
                    names.append(node.name)
                    node = by_id.get(node.parent.span_id) if node.parent else None
                # Other tests' stacks trace into the same exporter: keep this stack's trace.
                if f"send {stack.settings.topic_prefix}.incidents.v1" in names:
                    return leaf, names
        return None

    async def found() -> tuple[ReadableSpan, list[str]] | None:
        return chain()

    leaf, names = await wait_for(found, what="a span chain HTTP -> intake send -> classifier -> projections")
    wanted = [
        "projections process",
        "classifier process",
        f"send {stack.settings.topic_prefix}.incidents.v1",
        "POST /v1/events",
    ]
    assert [n for n in names if n in wanted] == wanted, names
    assert names[-1] == "POST /v1/events"
    # The batch's database transaction is linked to the record's span, so the write is in the trace.
    batch_spans = [
        s for s in SPANS.get_finished_spans()
        if s.name == "projections apply batch"
        and any(link.context.span_id == leaf.context.span_id for link in s.links)
    ]
    assert batch_spans, "the projection write is not linked to the trace"
    # No personal data in any span.
    for span in SPANS.get_finished_spans():
        assert "Person Kappa" not in str(span.attributes) and "1990-01-01" not in str(span.attributes)
