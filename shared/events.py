"""Event contracts: the CloudEvents 1.0 envelope and the data of every internal event.

Types are versioned (``.v1``); a consumer that meets a type it does not know sends the record
to its dead-letter topic instead of guessing. The serialisation to and from Kafka records
lives in :mod:`shared.serialization` and nowhere else.
"""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

import pycountry
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.vocabulary import (
    Actor,
    ActStatus,
    ActType,
    DatePrecision,
    Outcome,
    Reliability,
    StatusAbroad,
    TargetGroup,
)

PRODUCER_SOURCE = "urn:tnrwatch"


class EventType(StrEnum):
    # On the incidents topic (the log of record), written by intake, pseudonymised.
    INCIDENT_REPORTED = "org.tnrwatch.incident.reported.v1"
    INCIDENT_AMENDED = "org.tnrwatch.incident.amended.v1"
    INCIDENT_RETRACTED = "org.tnrwatch.incident.retracted.v1"
    SUBJECT_ERASED = "org.tnrwatch.subject.erased.v1"
    # On the classifications topic, written by the classifier (retractions are passed on).
    INCIDENT_CLASSIFIED = "org.tnrwatch.incident.classified.v1"
    # On the alerts topic, written by the alerts service.
    ALERT_RAISED = "org.tnrwatch.alert.raised.v1"
    ALERT_UPDATED = "org.tnrwatch.alert.updated.v1"
    ALERT_RESOLVED = "org.tnrwatch.alert.resolved.v1"


# Types partners may post to intake (partner-contract.md §1).
class PartnerEventType(StrEnum):
    INCIDENT_REPORTED = "org.tnrwatch.incident.reported.v1"
    INCIDENT_AMENDED = "org.tnrwatch.incident.amended.v1"
    INCIDENT_RETRACTED = "org.tnrwatch.incident.retracted.v1"
    ERASURE_REQUESTED = "org.tnrwatch.subject.erasure-requested.v1"


class StrictModel(BaseModel):
    """Unknown fields are refused: a typo must never silently drop an act."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 envelope. Extension attributes (e.g. ``traceparent``) are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: str = "1.0"
    id: str
    source: str
    type: str
    subject: str | None = None
    time: datetime | None = None
    datacontenttype: str | None = "application/json"
    dataschema: str | None = None
    data: Any = None

    @property
    def extensions(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def new_event(
    type_: EventType, data: BaseModel, *, subject: str | None = None, event_id: str | None = None
) -> CloudEvent:
    return CloudEvent(
        id=event_id or str(uuid.uuid4()),
        source=PRODUCER_SOURCE,
        type=type_.value,
        subject=subject,
        time=datetime.now(UTC),
        data=data.model_dump(mode="json", by_alias=True),
    )


# --- The pseudonymised incident, as it travels between services -------------------------------


@functools.cache
def _alpha_2_codes() -> frozenset[str]:
    """pycountry's codes, once: its look-up takes a lock and lower-cases per call (a hot spot of
    intake's validation). The same codes ``countries.get(alpha_2=...)`` finds, in upper case."""
    return frozenset(country.alpha_2 for country in pycountry.countries)


def _iso_country(value: str) -> str:
    if value not in _alpha_2_codes():
        raise ValueError(f"not an ISO 3166-1 alpha-2 country code: {value!r}")
    return value


class Location(StrictModel):
    country: str
    city: str | None = None

    @field_validator("country")
    @classmethod
    def _country(cls, value: str) -> str:
        return _iso_country(value)


class Act(StrictModel):
    type: ActType
    on: date | None = None
    actor: Actor = Actor.UNKNOWN
    status: ActStatus = ActStatus.UNKNOWN


class SourceReference(StrictModel):
    url: str
    reliability: Reliability | None = None
    credibility: int | None = Field(default=None, ge=1, le=6)


class Narrative(StrictModel):
    text: str
    lang: str | None = None


class TargetProfile(StrictModel):
    """What may be known of a target outside intake: never a name or a birth date."""

    group: TargetGroup = TargetGroup.UNKNOWN
    nationality: str | None = None
    status_abroad: StatusAbroad = StatusAbroad.UNKNOWN


class IncidentFacts(StrictModel):
    occurred_on: date
    date_precision: DatePrecision
    location: Location
    target: TargetProfile = TargetProfile()
    acts: list[Act] = []
    outcome: Outcome = Outcome.UNKNOWN
    next_hearing_on: date | None = None
    narrative: Narrative | None = None
    sources: list[SourceReference] = []


class IncidentRecorded(StrictModel):
    """Data of ``incident.reported`` and ``incident.amended`` on the log."""

    incident_id: str
    target_ref: str
    partner: str
    source: str
    subject: str
    report_id: str  # the partner's CloudEvents id
    received_at: datetime
    facts: IncidentFacts


class IncidentRetracted(StrictModel):
    incident_id: str
    target_ref: str
    partner: str
    source: str
    subject: str
    report_id: str
    received_at: datetime
    reason: str


class SubjectErased(StrictModel):
    target_ref: str
    received_at: datetime


# --- Classification --------------------------------------------------------------------------


class TextSpan(StrictModel):
    start: int
    end: int
    text: str


class Evidence(StrictModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    label: str
    rule: str
    from_: str = Field(alias="from")
    span: TextSpan | None = None


class Classification(StrictModel):
    pace_methods: list[str] = []
    ccdi_methods: list[str] = []
    persuasion_channels: list[str] = []
    ir_categories: list[str] = []
    evidence: list[Evidence] = []
    classifier_version: str


class IncidentClassified(StrictModel):
    incident: IncidentRecorded
    classification: Classification


# --- Alerts ----------------------------------------------------------------------------------


class AlertSeverity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    INFO = "info"


class AlertStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class MatchedAct(StrictModel):
    incident_id: str
    act_index: int
    type: ActType
    on: date | None
    status: ActStatus


class AlertChanged(StrictModel):
    """Data of ``alert.raised``, ``alert.updated`` and ``alert.resolved``."""

    alert_id: str
    fingerprint: str
    rule: str
    severity: AlertSeverity
    status: AlertStatus
    target_ref: str | None = None
    place: str | None = None
    incident_ids: list[str]
    matched_acts: list[MatchedAct] = []
    summary: str
    first_seen: datetime
    last_seen: datetime
    deadline: date | None = None


EVENT_DATA_MODELS: dict[str, type[BaseModel]] = {
    EventType.INCIDENT_REPORTED: IncidentRecorded,
    EventType.INCIDENT_AMENDED: IncidentRecorded,
    EventType.INCIDENT_RETRACTED: IncidentRetracted,
    EventType.SUBJECT_ERASED: SubjectErased,
    EventType.INCIDENT_CLASSIFIED: IncidentClassified,
    EventType.ALERT_RAISED: AlertChanged,
    EventType.ALERT_UPDATED: AlertChanged,
    EventType.ALERT_RESOLVED: AlertChanged,
}
