"""Consume reported incidents, classify, produce: one Kafka transaction per batch.

The classified events and the consumer offsets commit together (``send_offsets_to_transaction``),
and downstream consumers read ``read_committed``: each incident is classified exactly once
downstream, even when the classifier dies in the middle of a batch.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[attr-defined]
from aiokafka.structs import ConsumerRecord, TopicPartition  # type: ignore[attr-defined]
from prometheus_client import Counter

from services.classifier.taxonomy import classify_acts
from shared.events import (
    CloudEvent,
    EventType,
    IncidentClassified,
    IncidentRecorded,
    IncidentRetracted,
    new_event,
)
from shared.kafka import dead_letter_payload, make_consumer, make_producer, topics_for
from shared.serialization import PoisonEvent, event_data, from_record, header_map, to_record
from shared.settings import Settings
from shared.telemetry import consumed_span, current_trace_headers

log = logging.getLogger(__name__)

CLASSIFIED = Counter("tnrwatch_classifier_events_total", "Incidents classified", ["outcome"])
GROUP_ID = "classifier"
_EVENT_NAMESPACE = uuid.UUID("5d1f1a4e-63a4-4bf0-9f8b-2f3c1e7b6a11")

Classify = Callable[[IncidentRecorded], IncidentClassified]


def classify_incident(incident: IncidentRecorded) -> IncidentClassified:
    return IncidentClassified(incident=incident, classification=classify_acts(incident.facts.acts))


def downstream_event(event: CloudEvent, classify: Classify) -> tuple[str, CloudEvent] | None:
    """What the classifier emits for one event of the log (pure), keyed by ``target_ref``."""
    data = event_data(event)
    if isinstance(data, IncidentRecorded):
        classified = classify(data)
        # Deterministic id: the same report under the same classifier is the same event.
        event_id = str(uuid.uuid5(_EVENT_NAMESPACE, f"{event.id}|{classified.classification.classifier_version}"))
        return data.target_ref, new_event(
            EventType.INCIDENT_CLASSIFIED, classified, subject=data.incident_id, event_id=event_id
        )
    if isinstance(data, IncidentRetracted):
        return data.target_ref, new_event(
            EventType.INCIDENT_RETRACTED, data, subject=data.incident_id, event_id=event.id
        )
    return None  # erasures and other log events concern intake and projections only


class ClassifierLoop:
    def __init__(self, settings: Settings, classify: Classify = classify_incident) -> None:
        self.settings = settings
        self.classify = classify
        self.topics = topics_for(settings)
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.polled_once = False
        self._stopping = False

    @property
    def ready(self) -> bool:
        return self.polled_once

    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        settings = self.settings.model_copy(update={"service_name": "classifier"})
        self.consumer = make_consumer(settings, self.topics.incidents, group_id=GROUP_ID)
        self.producer = make_producer(
            settings, transactional_id=f"{self.settings.topic_prefix}.classifier.0"
        )
        await self.producer.start()
        await self.consumer.start()
        try:
            while not self._stopping:
                batches = await self.consumer.getmany(timeout_ms=200, max_records=500)
                self.polled_once = True
                if batches:
                    await self.process(batches)
        finally:
            await self.consumer.stop()
            await self.producer.stop()

    async def process(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        producer = self.producer
        assert producer is not None
        async with producer.transaction():
            offsets = {}
            for tp, records in batches.items():
                for record in records:
                    await self._one(producer, record)
                offsets[tp] = records[-1].offset + 1
            await producer.send_offsets_to_transaction(offsets, GROUP_ID)

    async def _one(self, producer: AIOKafkaProducer, record: ConsumerRecord) -> None:
        try:
            event = from_record(record.value, record.headers)
            with consumed_span("classifier process", header_map(record.headers),
                               {"cloudevents.event_type": event.type}):
                out = downstream_event(event, self.classify)
                if out is None:
                    CLASSIFIED.labels("skipped").inc()
                    return
                key, downstream = out
                rec = to_record(downstream, key=key, trace_headers=current_trace_headers())
                await producer.send(self.topics.classifications, rec.value, key=rec.key, headers=rec.headers)
                CLASSIFIED.labels("classified").inc()
        except PoisonEvent as exc:
            value, headers = dead_letter_payload(record, str(exc), GROUP_ID)
            log.warning("dead-lettered %s/%s/%s: %s", record.topic, record.partition, record.offset, exc)
            await producer.send(self.topics.dead_letter(GROUP_ID), value, key=record.key, headers=headers)
            CLASSIFIED.labels("dead_letter").inc()
