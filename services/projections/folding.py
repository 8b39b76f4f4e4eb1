"""Folding the log into the read models. Pure: no I/O.

Events for one incident arrive from two topics (the log and the classifier's output) and so
may interleave in any order; the fold keeps the newest report and the classification of the
newest report it has seen, whatever order they came in. A re-classification of the same
report (a classifier replay with a new ``classifier_version``) replaces the old one.

For speed the fold decides on the typed event but carries each event's data on as the JSON
text it arrived in: nothing is re-serialised, PostgreSQL parses it once into ``jsonb``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from shared.events import (
    AlertChanged,
    IncidentClassified,
    IncidentRecorded,
    IncidentRetracted,
    SubjectErased,
)


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One decoded record of the topics the projections read."""

    topic: str
    partition: int
    offset: int
    data: BaseModel
    payload: str  # the event's data as JSON text


@dataclass(frozen=True, slots=True)
class IncidentState:
    """What the fold needs to know of a stored incident (its JSON stays in the database)."""

    incident_id: str
    target_ref: str
    partner: str
    report_received_at: datetime | None = None
    classified_received_at: datetime | None = None
    retracted: bool = False
    retraction_reason: str | None = None


@dataclass(frozen=True, slots=True)
class IncidentWrite:
    """One incident's new state; ``None`` payloads keep what is stored."""

    state: IncidentState
    report_json: str | None = None
    # True when report_json is an IncidentClassified payload whose "incident" is the report.
    report_in_classified: bool = False
    classified_json: str | None = None  # an IncidentClassified payload


@dataclass
class FoldResult:
    incidents: dict[str, IncidentWrite] = field(default_factory=dict)
    alerts: dict[str, AlertChanged] = field(default_factory=dict)  # by fingerprint
    erasures: dict[str, datetime] = field(default_factory=dict)  # target_ref -> erased_at
    positions: dict[tuple[str, int], int] = field(default_factory=dict)  # next offsets
    applied: int = 0


def _newer(stored: datetime | None, incoming: datetime) -> bool:
    return stored is None or incoming >= stored


def strip_confidential(payload: str, *, classified: bool) -> str:
    """The payload without narrative, sources and evidence spans (after an erasure)."""
    data = json.loads(payload)
    report = data["incident"] if classified else data
    facts = report.get("facts", {})
    facts.pop("narrative", None)
    facts["sources"] = []
    if classified:
        for item in data.get("classification", {}).get("evidence", []):
            item.pop("span", None)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _erased(erased: Mapping[str, datetime], target_ref: str, received_at: datetime) -> bool:
    at = erased.get(target_ref)
    return at is not None and received_at <= at


def fold(
    states: Mapping[str, IncidentState],
    erased: Mapping[str, datetime],
    events: Iterable[LogEvent],
) -> FoldResult:
    """Fold a batch (in log order) onto the stored states of the incidents it touches."""
    result = FoldResult()
    erased_now = dict(erased)
    writes = result.incidents
    for event in events:
        result.positions[(event.topic, event.partition)] = event.offset + 1
        result.applied += 1
        data = event.data
        if isinstance(data, IncidentClassified):
            incident = data.incident
            write = writes.get(incident.incident_id) or _start(states, incident)
            state = write.state
            classified_json = write.classified_json
            report_json, in_classified = write.report_json, write.report_in_classified
            payload = event.payload
            if _erased(erased_now, incident.target_ref, incident.received_at):
                payload = strip_confidential(payload, classified=True)
            if _newer(state.classified_received_at, incident.received_at):
                state = replace(state, classified_received_at=incident.received_at)
                classified_json = payload
            if _newer(state.report_received_at, incident.received_at):
                state = replace(state, report_received_at=incident.received_at, target_ref=incident.target_ref)
                report_json, in_classified = payload, True
            writes[incident.incident_id] = IncidentWrite(state, report_json, in_classified, classified_json)
        elif isinstance(data, IncidentRecorded):
            write = writes.get(data.incident_id) or _start(states, data)
            if _newer(write.state.report_received_at, data.received_at):
                payload = event.payload
                if _erased(erased_now, data.target_ref, data.received_at):
                    payload = strip_confidential(payload, classified=False)
                write = replace(
                    write,
                    state=replace(write.state, report_received_at=data.received_at, target_ref=data.target_ref),
                    report_json=payload,
                    report_in_classified=False,
                )
            writes[data.incident_id] = write
        elif isinstance(data, IncidentRetracted):
            write = writes.get(data.incident_id) or _start(states, data)
            # A retraction is final: later amendments still update the record but it stays
            # out of the statistics and listings.
            writes[data.incident_id] = replace(
                write, state=replace(write.state, retracted=True, retraction_reason=data.reason)
            )
        elif isinstance(data, AlertChanged):
            result.alerts[data.fingerprint] = data  # keyed by fingerprint: log order is change order
        elif isinstance(data, SubjectErased):
            at = max(data.received_at, erased_now.get(data.target_ref, data.received_at))
            erased_now[data.target_ref] = at
            result.erasures[data.target_ref] = at
    return result


def _start(states: Mapping[str, IncidentState], data: IncidentRecorded | IncidentRetracted) -> IncidentWrite:
    state = states.get(data.incident_id) or IncidentState(data.incident_id, data.target_ref, data.partner)
    return IncidentWrite(state)


def incident_ids(events: Iterable[LogEvent]) -> set[str]:
    ids: set[str] = set()
    for event in events:
        data = event.data
        if isinstance(data, IncidentClassified):
            ids.add(data.incident.incident_id)
        elif isinstance(data, IncidentRecorded | IncidentRetracted):
            ids.add(data.incident_id)
    return ids


def target_refs(events: Iterable[LogEvent]) -> set[str]:
    refs: set[str] = set()
    for event in events:
        data = event.data
        if isinstance(data, IncidentClassified):
            refs.add(data.incident.target_ref)
        elif isinstance(data, IncidentRecorded | IncidentRetracted | SubjectErased):
            refs.add(data.target_ref)
    return refs


def alert_row(alert: AlertChanged) -> tuple[Any, ...]:
    return (
        alert.fingerprint,
        alert.alert_id,
        alert.rule,
        alert.severity.value,
        alert.status.value,
        alert.target_ref,
        alert.place,
        alert.incident_ids,
        alert.summary,
        alert.first_seen,
        alert.last_seen,
        alert.deadline,
    )
