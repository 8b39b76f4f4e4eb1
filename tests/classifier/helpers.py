"""Putting reports on the log as intake does, and reading what the classifier committed."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from shared.events import (
    Act,
    EventType,
    IncidentFacts,
    IncidentRecorded,
    IncidentRetracted,
    Location,
    Narrative,
    new_event,
)
from shared.serialization import event_data, from_record, to_record
from shared.settings import Settings
from shared.vocabulary import ActType, DatePrecision


def recorded(
    incident_id: str,
    *,
    acts: list[ActType] = (),  # type: ignore[assignment]
    narrative: str | None = None,
    target_ref: str | None = None,
    report_id: str | None = None,
    received_at: datetime | None = None,
) -> IncidentRecorded:
    return IncidentRecorded(
        incident_id=incident_id,
        target_ref=target_ref or f"t-{incident_id}",
        partner="sample-ngo",
        source="urn:partner:sample-ngo",
        subject=f"REF-{incident_id}",
        report_id=report_id or f"r-{incident_id}",
        received_at=received_at or datetime.now(UTC),
        facts=IncidentFacts(
            occurred_on=date(2024, 3, 1),
            date_precision=DatePrecision.DAY,
            location=Location(country="TR", city="Istanbul"),
            acts=[Act(type=a) for a in acts],
            narrative=Narrative(text=narrative, lang="en") if narrative else None,
        ),
    )


def retracted(incident: IncidentRecorded, reason: str = "duplicate") -> IncidentRetracted:
    return IncidentRetracted(
        incident_id=incident.incident_id,
        target_ref=incident.target_ref,
        partner=incident.partner,
        source=incident.source,
        subject=incident.subject,
        report_id=f"{incident.report_id}-retraction",
        received_at=datetime.now(UTC),
        reason=reason,
    )


async def put_on_log(settings: Settings, topic: str, items: list[tuple[EventType, Any]]) -> None:
    """Write events as intake writes them: CloudEvents binary mode, keyed by target_ref."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = []
        for type_, data in items:
            event = new_event(type_, data, subject=data.incident_id, event_id=f"{data.report_id}-{type_.value}")
            record = to_record(event, key=data.target_ref)
            futures.append(await producer.send(topic, record.value, key=record.key, headers=record.headers))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def put_raw(settings: Settings, topic: str, value: bytes, headers: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"poison", headers=headers)
    finally:
        await producer.stop()


async def read_all(settings: Settings, topic: str, *, isolation: str = "read_committed") -> list[Any]:
    """Every record of ``topic`` visible under ``isolation``, from the beginning to its end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, isolation_level=isolation, enable_auto_commit=False
    )
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        partitions = [TopicPartition(topic, p) for p in (cluster.partitions_for_topic(topic) or set())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        records: list[Any] = []
        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in partitions])

        while await behind():
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                records.extend(recs)
        return records
    finally:
        await consumer.stop()


def decode(records: list[Any]) -> list[tuple[str, Any]]:
    """(event type, typed data) of each record."""
    out = []
    for record in records:
        event = from_record(record.value, record.headers)
        out.append((event.type, event_data(event)))
    return out
