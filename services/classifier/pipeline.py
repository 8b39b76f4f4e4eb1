"""What the classifier emits for one event of the log. Pure: no Kafka, no I/O, so the same
function runs in the service, in ``tnrwatch replay classifier`` and in the benchmark's peer."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from services.classifier.taxonomy import classify_report
from shared.events import (
    CloudEvent,
    EventType,
    IncidentClassified,
    IncidentRecorded,
    IncidentRetracted,
    new_event,
)
from shared.serialization import event_data

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
