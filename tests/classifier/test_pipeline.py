"""The pure step's fast path writes exactly what the general path writes, and refuses what the
general path refuses, with the same reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.classifier.pipeline import (
    Headers,
    Output,
    Poison,
    Skip,
    _classified_fast,
    _process_general,
    classify_incident,
    process_record,
)
from shared.events import EventType, IncidentFacts, IncidentRecorded, IncidentRetracted, new_event
from shared.serialization import to_record
from tests.classifier.helpers import recorded, retracted

DATA = Path(__file__).resolve().parent.parent / "data"


def _labelled_reports() -> list[IncidentRecorded]:
    out = []
    for name in ("incidents.jsonl", "classifier_hard_cases.jsonl", "classifier_holdout.jsonl"):
        for n, line in enumerate((DATA / name).read_text(encoding="utf-8").splitlines()):
            data = json.loads(line)["event"]["data"]
            data.get("target", {}).pop("identity", None)
            out.append(IncidentRecorded(
                incident_id=f"{name}-{n}", target_ref=f"t-{n}", partner="p", source="urn:p", subject=f"s-{n}",
                report_id=f"r-{n}", received_at=datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
                facts=IncidentFacts.model_validate(data),
            ))
    return out


def _without_time(headers: Headers) -> Headers:
    return [(name, value) for name, value in headers if name != "ce_time"]


@pytest.mark.parametrize("event_type", [EventType.INCIDENT_REPORTED, EventType.INCIDENT_AMENDED])
def test_fast_path_writes_the_general_paths_record_byte_for_byte(event_type: EventType) -> None:
    reports = _labelled_reports()
    assert len(reports) > 150
    for report in reports:
        rec = to_record(new_event(event_type, report, event_id=report.report_id), key=report.target_ref)
        fast = _classified_fast(rec.value, rec.headers, classify_incident)
        general = _process_general(rec.value, rec.headers, classify_incident)
        assert isinstance(fast, Output) and isinstance(general, Output)
        assert (fast.key, fast.value, fast.event_type) == (general.key, general.value, general.event_type)
        assert _without_time(fast.headers) == _without_time(general.headers)
        assert [name for name, _ in fast.headers] == [name for name, _ in general.headers]


def _headers(event_type: str, **extra: bytes) -> Headers:
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"x1"), ("ce_source", b"urn:x"), ("ce_type", event_type.encode())]
    return headers + [(f"ce_{name}", value) for name, value in extra.items()]


REPORTED = EventType.INCIDENT_REPORTED.value
GOOD = to_record(new_event(EventType.INCIDENT_REPORTED, recorded("ok")), key="t").value


@pytest.mark.parametrize(("value", "headers", "reason"), [
    (b"\x00\xffnot json at all", _headers(REPORTED), "not JSON"),
    (b'{"anything": 1}', _headers("org.tnrwatch.incident.reported.v9"), "unknown event type"),
    (b'{"anything": 1}', _headers(REPORTED), "data invalid at"),
    (None, _headers(REPORTED), "no value"),
    (GOOD, _headers(REPORTED)[1:], "missing CloudEvents header ce_specversion"),
    (GOOD, _headers(REPORTED, time=b"yesterday"), "invalid CloudEvents attributes"),
    (GOOD, [*_headers(REPORTED), ("ce_subject", b"\xff")], "not UTF-8"),
])
def test_what_the_fast_path_refuses_is_poison_with_the_general_reason(
    value: bytes | None, headers: Headers, reason: str
) -> None:
    assert _classified_fast(value, headers, classify_incident) is None
    outcome = process_record(value, headers)
    assert isinstance(outcome, Poison) and reason in outcome.reason


def test_a_classifier_error_is_poison_with_the_error() -> None:
    def broken(incident: IncidentRecorded) -> object:
        raise RuntimeError("rule table broken")

    outcome = process_record(GOOD, _headers(REPORTED), broken)  # type: ignore[arg-type]
    assert isinstance(outcome, Poison) and "classifier error: RuntimeError: rule table broken" in outcome.reason


def test_retractions_and_erasures_take_the_general_path() -> None:
    gone: IncidentRetracted = retracted(recorded("r"))
    rec = to_record(new_event(EventType.INCIDENT_RETRACTED, gone, event_id="e1"), key=gone.target_ref)
    outcome = process_record(rec.value, rec.headers)
    assert isinstance(outcome, Output) and outcome.event_type == EventType.INCIDENT_RETRACTED.value
    erased = b'{"target_ref": "t", "received_at": "2024-01-01T00:00:00Z"}'
    assert isinstance(process_record(erased, _headers(EventType.SUBJECT_ERASED.value)), Skip)
