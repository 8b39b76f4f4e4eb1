"""Intake's service layer: from a partner's CloudEvent to a pseudonymised event on the log."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaProducer  # type: ignore[attr-defined]
from aiokafka.errors import KafkaError
from pydantic import BaseModel, ValidationError

from services.intake.models import IncidentReport, RetractionData
from services.intake.pseudonym import incident_id_for, target_ref_for
from shared.auth import Principal, require
from shared.events import (
    CloudEvent,
    EventType,
    IncidentRecorded,
    IncidentRetracted,
    PartnerEventType,
    new_event,
)
from shared.kafka import send_event
from shared.problems import Problem, validation_errors
from shared.vocabulary import Scope


@dataclass
class Accepted:
    accepted: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)


@dataclass
class IntakeContext:
    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    incidents_topic: str
    pseudonym_key: bytes


@dataclass(frozen=True)
class Outgoing:
    """A validated partner event and the internal event it becomes."""

    report: CloudEvent
    incident_id: str
    target_ref: str
    event: CloudEvent


def _invalid(detail: str, exc: ValidationError) -> Problem:
    return Problem(422, "Unprocessable Content", detail, errors=validation_errors(exc, "/data"))


def _parse(model: type[BaseModel], data: object, what: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(f"The {what} is not valid.", exc) from exc


async def _build(
    ctx: IntakeContext, event: CloudEvent, principal: Principal, received_at: datetime
) -> Outgoing:
    if event.source not in principal.sources:
        raise Problem(403, "Forbidden", f"Source {event.source!r} is not registered to this partner.")
    if not event.subject:
        raise Problem(422, "Unprocessable Content", "subject is required.",
                      errors=[{"pointer": "/subject", "detail": "the partner's incident reference"}])
    incident_id = incident_id_for(event.source, event.subject)
    common = {"incident_id": incident_id, "partner": principal.partner, "source": event.source,
              "subject": event.subject, "report_id": event.id, "received_at": received_at}
    if event.type in (PartnerEventType.INCIDENT_REPORTED, PartnerEventType.INCIDENT_AMENDED):
        report = _parse(IncidentReport, event.data, "incident report")
        assert isinstance(report, IncidentReport)
        target_ref = target_ref_for(
            ctx.pseudonym_key, report.target.identity, source=event.source, subject=event.subject
        )
        kind = (EventType.INCIDENT_REPORTED if event.type == PartnerEventType.INCIDENT_REPORTED
                else EventType.INCIDENT_AMENDED)
        data: BaseModel = IncidentRecorded(**common, target_ref=target_ref, facts=report.pseudonymised())
    elif event.type == PartnerEventType.INCIDENT_RETRACTED:
        retraction = _parse(RetractionData, event.data, "retraction")
        assert isinstance(retraction, RetractionData)
        # Same key as the incident's reports, so the retraction stays in order behind them.
        known = await ctx.pool.fetchval(
            "SELECT target_ref FROM intake_reports WHERE incident_id = $1 ORDER BY received_at DESC LIMIT 1",
            incident_id,
        )
        if known is None:
            raise Problem(422, "Unprocessable Content", "No incident with this subject was reported.",
                          errors=[{"pointer": "/subject", "detail": "unknown incident reference"}])
        target_ref = known
        kind = EventType.INCIDENT_RETRACTED
        data = IncidentRetracted(**common, target_ref=target_ref, reason=retraction.reason)
    else:
        raise Problem(422, "Unprocessable Content", f"Unsupported event type {event.type!r}.",
                      errors=[{"pointer": "/type", "detail": "not a type partners may post"}])
    return Outgoing(event, incident_id, target_ref, new_event(kind, data, subject=incident_id))


async def accept(ctx: IntakeContext, principal: Principal, events: list[CloudEvent]) -> Accepted:
    require(principal, Scope.EVENTS_WRITE)
    received_at = datetime.now(UTC)
    outgoing = [await _build(ctx, e, principal, received_at) for e in events]  # all-or-nothing
    result = Accepted()
    for out in outgoing:
        seen = await ctx.pool.fetchval(
            "SELECT incident_id FROM intake_reports WHERE source = $1 AND report_id = $2",
            out.report.source, out.report.id,
        )
        if seen is not None:
            result.duplicates.append({"id": out.report.id, "incident_id": seen})
            continue
        try:
            await send_event(ctx.producer, ctx.incidents_topic, out.event, key=out.target_ref)
        except KafkaError as exc:
            raise Problem(503, "Service Unavailable",
                          "The log cannot take the write; the event was NOT accepted.",
                          headers={"Retry-After": "5"}) from exc
        await ctx.pool.execute(
            "INSERT INTO intake_reports (source, report_id, incident_id, target_ref, event_type, partner) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            out.report.source, out.report.id, out.incident_id, out.target_ref, out.report.type,
            principal.partner,
        )
        result.accepted.append({"id": out.report.id, "incident_id": out.incident_id})
    return result
