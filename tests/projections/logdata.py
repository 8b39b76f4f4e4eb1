"""Events as the other services write them, put straight onto the real topics: so that a test
controls order, versions and timing exactly (amendments, retractions, re-classification)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer

from shared.events import (
    AlertChanged,
    Classification,
    CloudEvent,
    EventType,
    Evidence,
    IncidentClassified,
    IncidentFacts,
    IncidentRecorded,
    IncidentRetracted,
    SubjectErased,
    TextSpan,
    new_event,
)
from shared.kafka import ensure_topics, make_producer, send_event, topics_for
from shared.serialization import to_record
from shared.settings import Settings

T0 = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)


def report(
    n: int,
    *,
    country: str = "TH",
    group: str = "uyghur",
    occurred_on: date = date(2024, 6, 1),
    acts: Sequence[str] = ("kidnapping",),
    partner: str = "ngo-a",
    target_ref: str | None = None,
    received_at: datetime | None = None,
    narrative: str | None = "Seen taken from his flat by four men.",
) -> IncidentRecorded:
    facts: dict[str, Any] = {
        "occurred_on": occurred_on.isoformat(),
        "date_precision": "day",
        "location": {"country": country, "city": "Somewhere"},
        "target": {"group": group, "nationality": "CN", "status_abroad": "refugee"},
        "acts": [{"type": a, "on": occurred_on.isoformat(), "actor": "unknown", "status": "carried_out"} for a in acts],
        "outcome": "unknown",
        "sources": [{"url": f"https://example.org/{n}", "reliability": "B", "credibility": 2}],
    }
    if narrative:
        facts["narrative"] = {"text": narrative, "lang": "en"}
    return IncidentRecorded(
        incident_id=f"inc-{n:06d}",
        target_ref=target_ref or f"tgt-{n:06d}",
        partner=partner,
        source=f"urn:partner:{partner}",
        subject=f"REF-{n}",
        report_id=f"ev-{n}",
        received_at=received_at or T0 + timedelta(seconds=n),
        facts=IncidentFacts.model_validate(facts),
    )


LABELS: dict[str, tuple[str, str, str | None, str | None]] = {
    # act type -> (PACE, CCDI, channel, IR): taxonomy.md
    "kidnapping": ("direct_attack", "kidnapping_or_luring", None, "IR3"),
    "family_threatened": ("threat_from_distance", "persuade_to_return", "family_or_online", "IR1"),
    "interpol_red_notice": ("co_opting", "extradition", None, None),
    "online_threat": ("threat_from_distance", "persuade_to_return", "family_or_online", "IR2"),
}


def classified(
    incident: IncidentRecorded, *, version: str = "test-v1", span: str | None = "taken"
) -> IncidentClassified:
    pace, ccdi, channels, ir = [], [], [], []
    evidence = []
    for index, act in enumerate(incident.facts.acts):
        p, c, ch, i = LABELS[act.type.value]
        pace.append(p)
        ccdi.append(c)
        if ch:
            channels.append(ch)
        if i:
            ir.append(i)
        evidence.append(Evidence(label=p, rule=f"act:{act.type.value}", from_=f"acts[{index}]"))
    if span and incident.facts.narrative:
        evidence.append(
            Evidence(
                label=pace[0] if pace else "x",
                rule="text:en",
                from_="narrative",
                span=TextSpan(start=0, end=len(span), text=span),
            )
        )
    return IncidentClassified(
        incident=incident,
        classification=Classification(
            pace_methods=sorted(set(pace)),
            ccdi_methods=sorted(set(ccdi)),
            persuasion_channels=sorted(set(channels)),
            ir_categories=sorted(set(ir)),
            evidence=evidence,
            classifier_version=version,
        ),
    )


def retraction(incident: IncidentRecorded, *, reason: str = "duplicate") -> IncidentRetracted:
    return IncidentRetracted(
        incident_id=incident.incident_id,
        target_ref=incident.target_ref,
        partner=incident.partner,
        source=incident.source,
        subject=incident.subject,
        report_id=incident.report_id + "-r",
        received_at=incident.received_at + timedelta(hours=1),
        reason=reason,
    )


def alert(
    fingerprint: str,
    status: str,
    *,
    severity: str = "critical",
    target_ref: str = "tgt-000001",
    incident_ids: Sequence[str] = ("inc-000001",),
) -> AlertChanged:
    return AlertChanged(
        alert_id=f"al-{fingerprint}",
        fingerprint=fingerprint,
        rule="R3_kidnapping_or_disappearance",
        severity=severity,
        status=status,
        target_ref=target_ref,
        incident_ids=list(incident_ids),
        summary="Kidnapping reported",
        first_seen=T0,
        last_seen=T0 + timedelta(minutes=1),
    )


def log_event(kind: EventType, incident: IncidentRecorded) -> CloudEvent:
    """As intake writes it: subject = incident id, time = received_at."""
    return new_event(kind, incident, subject=incident.incident_id).model_copy(update={"time": incident.received_at})


class LogWriter:
    """Writes events where intake, the classifier and the alerts service would."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = topics_for(settings)
        self.producer: AIOKafkaProducer = make_producer(settings)

    async def __aenter__(self) -> LogWriter:
        await ensure_topics(self.settings)
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def reported(self, incident: IncidentRecorded, *, amended: bool = False) -> None:
        kind = EventType.INCIDENT_AMENDED if amended else EventType.INCIDENT_REPORTED
        await send_event(
            self.producer,
            self.topics.incidents,
            new_event(kind, incident, subject=incident.incident_id),
            key=incident.target_ref,
        )

    async def classified(self, item: IncidentClassified) -> None:
        await send_event(
            self.producer,
            self.topics.classifications,
            new_event(EventType.INCIDENT_CLASSIFIED, item, subject=item.incident.incident_id),
            key=item.incident.target_ref,
        )

    async def retracted(self, item: IncidentRetracted) -> None:
        await send_event(
            self.producer,
            self.topics.classifications,
            new_event(EventType.INCIDENT_RETRACTED, item, subject=item.incident_id),
            key=item.target_ref,
        )

    async def erased(self, target_ref: str, at: datetime) -> None:
        await send_event(
            self.producer,
            self.topics.incidents,
            new_event(EventType.SUBJECT_ERASED, SubjectErased(target_ref=target_ref, received_at=at)),
            key=target_ref,
        )

    async def alert(self, item: AlertChanged) -> None:
        kind = {"open": EventType.ALERT_RAISED, "resolved": EventType.ALERT_RESOLVED}.get(
            item.status.value, EventType.ALERT_UPDATED
        )
        await send_event(self.producer, self.topics.alerts, new_event(kind, item), key=item.fingerprint)

    async def poison(self) -> None:
        await self.producer.send_and_wait(
            self.topics.incidents,
            b"{not json",
            key=b"x",
            headers=[
                ("ce_specversion", b"1.0"),
                ("ce_id", b"p"),
                ("ce_source", b"urn:x"),
                ("ce_type", EventType.INCIDENT_REPORTED.value.encode()),
            ],
        )

    async def many(self, count: int, *, start: int = 1, batch: int = 2000) -> None:
        """``count`` reported + classified pairs, fast (no per-record acknowledgement wait)."""
        pending = []
        for n in range(start, start + count):
            incident = report(
                n,
                country=("TH", "KG", "TR", "AE")[n % 4],
                group=("uyghur", "dissident")[n % 2],
                occurred_on=date(2020 + n % 5, 1 + n % 12, 1),
                acts=(("kidnapping",), ("family_threatened",))[n % 2],
            )
            for topic, event in (
                (self.topics.incidents, log_event(EventType.INCIDENT_REPORTED, incident)),
                (
                    self.topics.classifications,
                    new_event(EventType.INCIDENT_CLASSIFIED, classified(incident), subject=incident.incident_id),
                ),
            ):
                rec = to_record(event, key=incident.target_ref)
                pending.append(await self.producer.send(topic, rec.value, key=rec.key, headers=rec.headers))
            if len(pending) >= batch:
                for fut in pending:
                    await fut
                pending.clear()
        for fut in pending:
            await fut
