"""What the classifier emits for one event of the log. Pure: no Kafka, no I/O, so the same
function runs in the service, in ``tnrwatch replay classifier`` and in the benchmark's peer."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from services.classifier.taxonomy import classify_report
from shared.events import (
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
    runs in the event loop's process or in worker processes alike."""
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
