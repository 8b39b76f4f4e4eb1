"""Folding the log into the read models. Pure: no I/O.

Events for one incident arrive from two topics (the log and the classifier's output) and so
may interleave in any order; the fold keeps the newest report and the classification of the
newest report it has seen, whatever order they came in. A re-classification of the same
report (a classifier replay with a new ``classifier_version``) replaces the old one.

For speed the fold decides on the typed event but carries each event's data on as the JSON
text it arrived in: nothing is re-serialised, and PostgreSQL stores it as ``json`` (checked,
not converted); the columns reads filter on are computed here from the typed events.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel

from shared.events import (
    AlertChanged,
    Classification,
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
    data: Fact
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
class ReportColumns:
    """What listings and statistics filter and count on, from one report."""

    occurred_on: date
    year: int
    country: str
    target_group: str
    act_types: list[str]

    @classmethod
    def of(cls, report: IncidentRecorded) -> ReportColumns:
        facts = report.facts
        return cls(
            facts.occurred_on,
            facts.occurred_on.year,
            facts.location.country,
            facts.target.group.value,
            [a.type.value for a in facts.acts],
        )


@dataclass(frozen=True, slots=True)
class Labels:
    """A classification's labels (its evidence stays in the payload)."""

    pace_methods: list[str]
    ccdi_methods: list[str]
    persuasion_channels: list[str]
    ir_categories: list[str]
    classifier_version: str

    @classmethod
    def of(cls, classification: Classification) -> Labels:
        return cls(
            list(classification.pace_methods),
            list(classification.ccdi_methods),
            list(classification.persuasion_channels),
            list(classification.ir_categories),
            classification.classifier_version,
        )


# What the fold needs of each kind of event: small, flat, cheap to build and to pass between
# processes (a replay decodes in a worker process).


@dataclass(frozen=True, slots=True)
class ReportFact:
    """An ``incident.reported`` or ``incident.amended``."""

    incident_id: str
    target_ref: str
    partner: str
    received_at: datetime
    columns: ReportColumns

    @classmethod
    def of(cls, report: IncidentRecorded) -> ReportFact:
        return cls(report.incident_id, report.target_ref, report.partner, report.received_at, ReportColumns.of(report))


@dataclass(frozen=True, slots=True)
class ClassifiedFact:
    """An ``incident.classified``: the report it classified and its labels."""

    report: ReportFact
    labels: Labels


@dataclass(frozen=True, slots=True)
class RetractedFact:
    incident_id: str
    target_ref: str
    partner: str
    reason: str


@dataclass(frozen=True, slots=True)
class ErasedFact:
    target_ref: str
    received_at: datetime


Fact = ReportFact | ClassifiedFact | RetractedFact | ErasedFact | AlertChanged


def fact_of(data: BaseModel) -> Fact | None:
    """The fact of a decoded event; ``None`` for kinds the projections do not fold."""
    if isinstance(data, IncidentClassified):
        return ClassifiedFact(ReportFact.of(data.incident), Labels.of(data.classification))
    if isinstance(data, IncidentRecorded):
        return ReportFact.of(data)
    if isinstance(data, IncidentRetracted):
        return RetractedFact(data.incident_id, data.target_ref, data.partner, data.reason)
    if isinstance(data, SubjectErased):
        return ErasedFact(data.target_ref, data.received_at)
    if isinstance(data, AlertChanged):
        return data
    return None


def fact_tuple(fact: Fact) -> tuple[Any, ...]:
    """Flat and picklable (tuples of builtins cross a process boundary far faster than objects)."""
    if isinstance(fact, ClassifiedFact):
        r, c, labels = fact.report, fact.report.columns, fact.labels
        return (
            "c",
            r.incident_id,
            r.target_ref,
            r.partner,
            r.received_at,
            c.occurred_on,
            c.country,
            c.target_group,
            c.act_types,
            labels.pace_methods,
            labels.ccdi_methods,
            labels.persuasion_channels,
            labels.ir_categories,
            labels.classifier_version,
        )
    if isinstance(fact, ReportFact):
        c = fact.columns
        return (
            "r",
            fact.incident_id,
            fact.target_ref,
            fact.partner,
            fact.received_at,
            c.occurred_on,
            c.country,
            c.target_group,
            c.act_types,
        )
    if isinstance(fact, RetractedFact):
        return ("x", fact.incident_id, fact.target_ref, fact.partner, fact.reason)
    if isinstance(fact, ErasedFact):
        return ("e", fact.target_ref, fact.received_at)
    return ("a", fact.model_dump(mode="json"))


def fact_from_tuple(flat: tuple[Any, ...]) -> Fact:
    kind = flat[0]
    if kind in ("c", "r"):
        occurred_on = flat[5]
        report = ReportFact(
            flat[1], flat[2], flat[3], flat[4], ReportColumns(occurred_on, occurred_on.year, flat[6], flat[7], flat[8])
        )
        return ClassifiedFact(report, Labels(*flat[9:14])) if kind == "c" else report
    if kind == "x":
        return RetractedFact(*flat[1:5])
    if kind == "e":
        return ErasedFact(flat[1], flat[2])
    return AlertChanged.model_validate(flat[1])


@dataclass(slots=True)
class IncidentWrite:
    """One incident's new state as the fold builds it; ``None`` payloads keep what is stored.
    (Mutable, and local to one fold: copying frozen records per event cost more than the
    rest of the fold.)"""

    incident_id: str
    target_ref: str
    partner: str
    report_received_at: datetime | None = None
    classified_received_at: datetime | None = None
    retracted: bool = False
    retraction_reason: str | None = None
    report_json: str | None = None
    # True when report_json is an IncidentClassified payload whose "incident" is the report.
    report_in_classified: bool = False
    classified_json: str | None = None  # an IncidentClassified payload
    report_columns: ReportColumns | None = None  # set with report_json
    classification: Labels | None = None  # set with classified_json
    changed: bool = False  # anything to write at all

    @classmethod
    def start(cls, state: IncidentState) -> IncidentWrite:
        return cls(
            state.incident_id,
            state.target_ref,
            state.partner,
            state.report_received_at,
            state.classified_received_at,
            state.retracted,
            state.retraction_reason,
        )


@dataclass
class FoldResult:
    incidents: dict[str, IncidentWrite] = field(default_factory=dict)
    alerts: dict[str, AlertChanged] = field(default_factory=dict)  # by fingerprint
    erasures: dict[str, datetime] = field(default_factory=dict)  # target_ref -> erased_at
    positions: dict[tuple[str, int], int] = field(default_factory=dict)  # next offsets
    applied: int = 0

    def changed_incidents(self) -> list[IncidentWrite]:
        return [w for w in self.incidents.values() if w.changed]


def _newer(stored: datetime | None, incoming: datetime) -> bool:
    """A classification of the same report replaces the stored one (a re-classification)."""
    return stored is None or incoming >= stored


def _newer_report(stored: datetime | None, incoming: datetime) -> bool:
    """A report replaces the stored one only if received later: the same report again (as
    the log carries it and then inside its classification) changes nothing, so need not be
    written again."""
    return stored is None or incoming > stored


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
        if isinstance(data, ClassifiedFact):
            incident = data.report
            write = writes.get(incident.incident_id) or _start(writes, states, incident)
            received_at = incident.received_at
            newer_classification = _newer(write.classified_received_at, received_at)
            newer_report = _newer_report(write.report_received_at, received_at)
            if not (newer_classification or newer_report):
                continue
            payload = event.payload
            if _erased(erased_now, incident.target_ref, received_at):
                payload = strip_confidential(payload, classified=True)
            write.changed = True
            if newer_classification:
                write.classified_received_at = received_at
                write.classified_json = payload
                write.classification = data.labels
            if newer_report:
                write.report_received_at = received_at
                write.target_ref = incident.target_ref
                write.report_json = payload
                write.report_in_classified = True
                write.report_columns = incident.columns
        elif isinstance(data, ReportFact):
            write = writes.get(data.incident_id) or _start(writes, states, data)
            if _newer_report(write.report_received_at, data.received_at):
                payload = event.payload
                if _erased(erased_now, data.target_ref, data.received_at):
                    payload = strip_confidential(payload, classified=False)
                write.changed = True
                write.report_received_at = data.received_at
                write.target_ref = data.target_ref
                write.report_json = payload
                write.report_in_classified = False
                write.report_columns = data.columns
        elif isinstance(data, RetractedFact):
            write = writes.get(data.incident_id) or _start(writes, states, data)
            # A retraction is final: later amendments still update the record but it stays
            # out of the statistics and listings.
            write.retracted = True
            write.retraction_reason = data.reason
            write.changed = True
        elif isinstance(data, AlertChanged):
            result.alerts[data.fingerprint] = data  # keyed by fingerprint: log order is change order
        elif isinstance(data, ErasedFact):
            at = max(data.received_at, erased_now.get(data.target_ref, data.received_at))
            erased_now[data.target_ref] = at
            result.erasures[data.target_ref] = at
    return result


def _start(
    writes: dict[str, IncidentWrite],
    states: Mapping[str, IncidentState],
    data: ReportFact | RetractedFact,
) -> IncidentWrite:
    state = states.get(data.incident_id) or IncidentState(data.incident_id, data.target_ref, data.partner)
    write = writes[data.incident_id] = IncidentWrite.start(state)
    return write


def incident_ids(events: Iterable[LogEvent]) -> set[str]:
    ids: set[str] = set()
    for event in events:
        data = event.data
        if isinstance(data, ClassifiedFact):
            ids.add(data.report.incident_id)
        elif isinstance(data, ReportFact | RetractedFact):
            ids.add(data.incident_id)
    return ids


def target_refs(events: Iterable[LogEvent]) -> set[str]:
    refs: set[str] = set()
    for event in events:
        data = event.data
        if isinstance(data, ClassifiedFact):
            refs.add(data.report.target_ref)
        elif isinstance(data, ReportFact | RetractedFact | ErasedFact):
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
