"""From posted envelopes to validated, pseudonymised reports. Pure: no I/O.

A batch is all-or-nothing: every event is checked and every error of every event is listed
(pointers prefixed with the event's index in the batch), before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pydantic import BaseModel, ValidationError

from services.intake import models
from services.intake.binding import envelope_errors
from services.intake.fastpath import plain_envelope, plain_report
from services.intake.models import AnyIdentity, ErasureRequest, IncidentReport, RetractionData
from services.intake.pseudonym import event_id_for, incident_id_for, person_ref, target_ref_for
from shared.auth import Principal
from shared.events import CloudEvent, PartnerEventType
from shared.problems import Problem, validation_errors
from shared.vocabulary import Scope


@dataclass(frozen=True, slots=True)
class ReportFacts:
    """A valid incident report's facts, as the JSON of ``IncidentFacts`` (what
    ``IncidentReport.facts_json`` gives): what travels on the log. The identity is not here."""

    facts: dict[str, Any]


Payload = ReportFacts | RetractionData | ErasureRequest


@dataclass(slots=True)
class Prepared:
    """One valid partner event, pseudonymised, ready to be claimed and written. Not changed
    once made (``dataclasses.replace`` makes another); not frozen, which costs ~2 µs a report."""

    envelope: CloudEvent
    kind: PartnerEventType
    payload: Payload
    event_id: str  # of the internal event: the same for every attempt
    incident_id: str | None  # None for an erasure
    target_ref: str | None  # None for a retraction until the incident is looked up
    identity: AnyIdentity | None  # clear: stays in this process until sealed
    position: str = ""  # "/<index>" in a batch: the prefix of this event's error pointers
    key: tuple[str, str] = field(init=False)  # (source, id): the partner's idempotency key

    def __post_init__(self) -> None:
        self.key = (self.envelope.source, self.envelope.id)


_DATA_MODELS: dict[PartnerEventType, type[BaseModel]] = {
    PartnerEventType.INCIDENT_REPORTED: IncidentReport,
    PartnerEventType.INCIDENT_AMENDED: IncidentReport,
    PartnerEventType.INCIDENT_RETRACTED: RetractionData,
    PartnerEventType.ERASURE_REQUESTED: ErasureRequest,
}


def _data_errors(model: type[BaseModel], data: Any) -> tuple[BaseModel | None, list[dict[str, Any]]]:
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, validation_errors(exc, "/data")


_PARTNER_TYPES = {t.value: t for t in PartnerEventType}
_REPORT_TYPES = frozenset({PartnerEventType.INCIDENT_REPORTED.value, PartnerEventType.INCIDENT_AMENDED.value})


def plain_one(raw: Any, principal: Principal, pseudonym_key: bytes, today: date,
              position: str = "") -> Prepared | None:
    """A report written the plain way, allowed and valid, accepted without the full models
    (``fastpath``); ``None``: :func:`prepare_one` decides, and names what is wrong."""
    if not plain_envelope(raw) or raw["type"] not in _REPORT_TYPES:
        return None
    source, subject = raw["source"], raw.get("subject")
    if source not in principal.sources or not principal.has(Scope.EVENTS_WRITE):
        return None
    if subject is None or not subject.strip():
        return None
    plain = plain_report(raw.get("data"), today)
    if plain is None:
        return None
    try:
        envelope = CloudEvent.model_validate(raw)
    except ValidationError:
        return None
    facts, identity = plain
    if identity is not None and not identity.names_somebody():
        identity = None  # a birth date alone names nobody: the partner's incident series it is
    return Prepared(
        envelope, _PARTNER_TYPES[raw["type"]], ReportFacts(facts), event_id_for(source, envelope.id),
        incident_id_for(source, subject), target_ref_for(pseudonym_key, identity, source=source, subject=subject),
        identity, position,
    )


def prepare_one(
    raw: Any, principal: Principal, pseudonym_key: bytes, position: str = ""
) -> tuple[Prepared | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """(prepared, 403 reasons, 422 errors) for one envelope, by the full models."""
    errors = envelope_errors(raw)
    if errors:
        return None, [], errors
    try:
        envelope = CloudEvent.model_validate(raw)
    except ValidationError as exc:
        return None, [], validation_errors(exc)
    forbidden: list[dict[str, Any]] = []
    if envelope.source not in principal.sources:
        forbidden.append({"pointer": "/source", "detail": "this source is not registered to your partner"})
    try:
        kind = PartnerEventType(envelope.type)
    except ValueError:
        return None, forbidden, [{"pointer": "/type", "detail": "not a type partners may post: "
                                  + ", ".join(t.value for t in PartnerEventType)}]
    if kind is PartnerEventType.ERASURE_REQUESTED:
        if not principal.is_admin:
            forbidden.append({"pointer": "/type", "detail": "erasure requests need the 'admin' scope"})
    elif not principal.has(Scope.EVENTS_WRITE):
        forbidden.append({"pointer": "/type", "detail": "this key lacks the 'events:write' scope"})

    subject = envelope.subject
    if kind is not PartnerEventType.ERASURE_REQUESTED and not (subject and subject.strip()):
        errors.append({"pointer": "/subject", "detail": "required: the partner's incident reference"})
    model = _DATA_MODELS[kind]
    payload, data_errors = _data_errors(model, envelope.data)
    errors += data_errors
    if errors or forbidden or payload is None:
        return None, forbidden, errors

    event_id = event_id_for(envelope.source, envelope.id)
    if isinstance(payload, ErasureRequest):
        identity = payload.as_identity()
        ref = payload.target_ref if identity is None else person_ref(pseudonym_key, identity)
        return Prepared(envelope, kind, payload, event_id, None, ref, None, position), [], []
    assert subject is not None
    incident_id = incident_id_for(envelope.source, subject)
    if isinstance(payload, RetractionData):
        return Prepared(envelope, kind, payload, event_id, incident_id, None, None, position), [], []
    assert isinstance(payload, IncidentReport)
    identity = payload.target.identity
    if identity is not None and not identity.names_somebody():
        identity = None  # a birth date alone names nobody: the partner's incident series it is
    ref = target_ref_for(pseudonym_key, identity, source=envelope.source, subject=subject)
    return Prepared(envelope, kind, ReportFacts(payload.facts_json()), event_id, incident_id, ref, identity,
                    position), [], []


def prepare(events: list[Any], principal: Principal, pseudonym_key: bytes, *, batch: bool) -> list[Prepared]:
    """All events valid and allowed, or a Problem listing every reason (403 before 422)."""
    prepared: list[Prepared] = []
    forbidden: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    today = models.today()
    for index, raw in enumerate(events):
        prefix = f"/{index}" if batch else ""
        plain = plain_one(raw, principal, pseudonym_key, today, prefix)
        if plain is not None:
            prepared.append(plain)
            continue
        one, refused, errors = prepare_one(raw, principal, pseudonym_key, prefix)
        forbidden += [{**e, "pointer": prefix + e["pointer"]} for e in refused]
        invalid += [{**e, "pointer": prefix + e["pointer"]} for e in errors]
        if one is not None:
            prepared.append(one)
    if forbidden:
        raise Problem(403, "Forbidden", "This key may not post these events.", errors=forbidden)
    if invalid:
        what = "No event of the batch was accepted." if batch else "The event was not accepted."
        raise Problem(422, "Unprocessable Content", f"The CloudEvent is not valid. {what}", errors=invalid)
    return prepared
