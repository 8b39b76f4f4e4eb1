"""What the classifier emits for one event of the log. Pure: no Kafka, no I/O, so the same
function runs in the service, in ``tnrwatch replay classifier`` and in the benchmark's peer."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from services.classifier.taxonomy import classify_report
from shared.events import (
    PRODUCER_SOURCE,
    CloudEvent,
    EventType,
    IncidentClassified,
    IncidentRecorded,
    IncidentRetracted,
    new_event,
)
from shared.serialization import PoisonEvent, event_data, from_record, to_record

log = logging.getLogger(__name__)

_EVENT_NAMESPACE = uuid.UUID("5d1f1a4e-63a4-4bf0-9f8b-2f3c1e7b6a11")

Classify = Callable[[IncidentRecorded], IncidentClassified]


def classify_incident(incident: IncidentRecorded) -> IncidentClassified:
    facts = incident.facts
    return IncidentClassified(incident=incident, classification=classify_report(facts.acts, facts.narrative))


def classified_event_id(report_event_id: str, classifier_version: str) -> str:
    """Deterministic: the same report under the same classifier is the same event, so a
    replay or a retry is recognisable downstream."""
    return str(uuid.uuid5(_EVENT_NAMESPACE, f"{report_event_id}|{classifier_version}"))


def downstream_event(event: CloudEvent, classify: Classify) -> tuple[str, CloudEvent] | None:
    """What the classifier emits for one event of the log (pure), keyed by ``target_ref``.

    Reported and amended incidents are (re-)classified; retractions are passed on so that
    downstream folds drop the incident; everything else (erasures) is not the classifier's.
    """
    data = event_data(event)
    if isinstance(data, IncidentRecorded):
        classified = classify(data)
        event_id = classified_event_id(event.id, classified.classification.classifier_version)
        return data.target_ref, new_event(
            EventType.INCIDENT_CLASSIFIED, classified, subject=data.incident_id, event_id=event_id
        )
    if isinstance(data, IncidentRetracted):
        return data.target_ref, new_event(
            EventType.INCIDENT_RETRACTED, data, subject=data.incident_id, event_id=event.id
        )
    return None


Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Output:
    """A record to write to the classifications topic (trace headers are added by the caller)."""

    key: bytes | None
    value: bytes
    headers: Headers
    event_type: str


@dataclass(frozen=True, slots=True)
class Skip:
    """An event that is not the classifier's (e.g. an erasure)."""

    event_type: str


@dataclass(frozen=True, slots=True)
class Poison:
    """A record that can never be classified: to the dead-letter topic with this reason."""

    reason: str


Outcome = Output | Skip | Poison


def process_record(
    value: bytes | None, headers: Headers | None, classify: Classify = classify_incident
) -> Outcome:
    """One record of the log in, what to write out. Pure and picklable in and out, so that it
    runs in the event loop's process or in worker processes alike.

    A report or amendment takes the fast path (:func:`_classified_fast`); anything else, and
    any record the fast path refuses, the general one, so that poison reasons and the other
    event types are exactly those of :func:`downstream_event`."""
    fast = _classified_fast(value, headers, classify)
    if fast is not None:
        return fast
    return _process_general(value, headers, classify)


_RECORDED_TYPES = frozenset({EventType.INCIDENT_REPORTED.value, EventType.INCIDENT_AMENDED.value})
_CLASSIFIED_TYPE = EventType.INCIDENT_CLASSIFIED.value
_CLASSIFIED_CONSTANT_HEADERS: Headers = [
    ("ce_specversion", b"1.0"),
    ("ce_source", PRODUCER_SOURCE.encode()),
    ("ce_type", _CLASSIFIED_TYPE.encode()),
]


def _classified_fast(value: bytes | None, headers: Headers | None, classify: Classify) -> Output | None:
    """A report or amendment, classified with one parse and one encoding: the JSON value is
    validated straight into :class:`IncidentRecorded` (no intermediate dict, no second
    validation of the envelope's data) and the output's data is written as JSON by pydantic
    in one pass. The record it produces is byte for byte the one of :func:`to_record` (a test
    holds them together). ``None``: not this path's record, or not valid; the general path
    decides (and names the reason)."""
    if value is None or not headers:
        return None
    attrs: dict[str, str] = {}
    try:
        for name, raw in headers:
            if name.startswith("ce_"):
                attrs[name[3:]] = raw.decode()
    except UnicodeDecodeError:
        return None
    if attrs.get("type") not in _RECORDED_TYPES or attrs.get("specversion") != "1.0":
        return None
    try:
        # The envelope is checked as from_record checks it (required attributes, a valid time).
        event = CloudEvent(**attrs)
        incident = IncidentRecorded.model_validate_json(value)
    except (ValidationError, TypeError):
        return None
    try:
        classified = classify(incident)
    except Exception:
        return None  # the general path classifies again and dead-letters it with the reason
    event_id = classified_event_id(event.id, classified.classification.classifier_version)
    out_headers = [
        _CLASSIFIED_CONSTANT_HEADERS[0],
        ("ce_id", event_id.encode()),
        *_CLASSIFIED_CONSTANT_HEADERS[1:],
        ("ce_subject", incident.incident_id.encode()),
        ("ce_time", datetime.now(UTC).isoformat().encode()),
        ("content-type", b"application/json"),
    ]
    body = classified.model_dump_json(by_alias=True).encode()
    return Output(incident.target_ref.encode(), body, out_headers, _CLASSIFIED_TYPE)


def _process_general(value: bytes | None, headers: Headers | None, classify: Classify) -> Outcome:
    try:
        event = from_record(value, headers)
        try:
            out = downstream_event(event, classify)
        except PoisonEvent:
            raise
        except Exception as exc:
            # The classification is a pure function of the record: retrying cannot help, so
            # the record is set aside (bytes kept) instead of blocking its partition.
            log.exception("classifier failed on event %s", event.id)
            raise PoisonEvent(f"classifier error: {type(exc).__name__}: {exc}") from exc
    except PoisonEvent as exc:
        return Poison(str(exc))
    if out is None:
        return Skip(event.type)
    key, downstream = out
    record = to_record(downstream, key=key)
    return Output(record.key, record.value, record.headers, downstream.type)


def process_records(
    records: list[tuple[bytes | None, Headers | None]], classify: Classify = classify_incident
) -> list[Outcome]:
    return [process_record(value, headers, classify) for value, headers in records]
