"""Kafka plumbing: producers, consumers, topic creation, dead letters."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord, TopicPartition
from opentelemetry import trace
from tqdm import tqdm

from shared.events import CloudEvent
from shared.serialization import KafkaRecord, to_record
from shared.settings import Settings
from shared.telemetry import current_trace_headers
from shared.topics import Topics

log = logging.getLogger(__name__)


def topics_for(settings: Settings) -> Topics:
    return Topics(settings.topic_prefix)


async def ensure_topics(settings: Settings) -> None:
    """Create every topic the system uses; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name=spec.name,
                num_partitions=spec.partitions,
                replication_factor=settings.topic_replication,
                topic_configs=spec.config,
            )
            for spec in topics_for(settings).specs(settings.topic_partitions)
            if spec.name not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass  # another service created it between list and create
    finally:
        await admin.close()


def make_producer(
    settings: Settings, *, transactional_id: str | None = None, **tuning: Any
) -> AIOKafkaProducer:
    """An idempotent producer that waits for every in-sync replica (acks=all). ``tuning``
    overrides batching options (``linger_ms``, ``max_batch_size``), never the guarantees."""
    options: dict[str, Any] = {"linger_ms": 2, **tuning}
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        transactional_id=transactional_id,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        client_id=settings.service_name,
        **options,
    )


def make_consumer(
    settings: Settings, *topics: str, group_id: str, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer that sees only committed records and commits nothing by itself."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "client_id": settings.service_name,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def send_event(
    producer: AIOKafkaProducer, topic: str, event: CloudEvent, *, key: str | None
) -> None:
    await send_events(producer, topic, [(event, key)])


async def send_events(
    producer: AIOKafkaProducer, topic: str, events: Sequence[tuple[CloudEvent, str | None]]
) -> None:
    """Send ``(event, key)`` pairs and wait for all of their acknowledgements together: one
    round trip for the lot instead of one each. Records with the same key keep their order
    (same partition; the idempotent producer never reorders a partition's batches)."""
    tracer = trace.get_tracer("tnrwatch.kafka")
    records = []
    for event, key in events:
        # A producer span per event: its context travels in the record's headers.
        with tracer.start_as_current_span(
            f"send {topic}", kind=trace.SpanKind.PRODUCER,
            attributes={"messaging.system": "kafka", "messaging.destination.name": topic,
                        "cloudevents.event_type": event.type},
        ):
            records.append(to_record(event, key=key, trace_headers=current_trace_headers()))
    await send_records(producer, topic, records)


async def send_records(producer: AIOKafkaProducer, topic: str, records: Sequence[KafkaRecord]) -> None:
    """Records already built (:func:`send_events`, or :func:`shared.serialization.record_of`),
    all in flight at once and acknowledged together."""
    acks = [await producer.send(topic, r.value, key=r.key, headers=r.headers) for r in records]
    if acks:
        await asyncio.gather(*acks)


def dead_letter_payload(record: ConsumerRecord, reason: str, consumer: str) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The original bytes go unchanged; the reason and origin ride in headers."""
    headers = list(record.headers or [])
    headers += [
        ("dlq_reason", reason.encode()),
        ("dlq_consumer", consumer.encode()),
        ("dlq_origin", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ("dlq_at", datetime.now(UTC).isoformat().encode()),
    ]
    return record.value or b"", headers


def replay_consumer(settings: Settings, *, client_id: str) -> AIOKafkaConsumer:
    """A group-less consumer for replays: it assigns partitions itself and commits nothing."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        client_id=client_id,
    )


async def read_to_end(
    consumer: AIOKafkaConsumer, topic: str, *, desc: str, progress: bool = True, max_records: int = 1000
) -> AsyncIterator[list[ConsumerRecord]]:
    """Batches of ``topic`` from its beginning to the end it had when the replay started (later
    records are the live service's), with a tqdm progress bar (rate, ETA) on stderr."""
    # The consumer's own metadata cache only knows subscribed topics; ask the cluster.
    cluster = await consumer._client.fetch_all_metadata()
    partitions = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    start = await consumer.beginning_offsets(partitions)
    end = await consumer.end_offsets(partitions)
    total = sum(end[tp] - start[tp] for tp in partitions)
    with tqdm(total=total, unit="event", desc=desc, disable=not progress, file=sys.stderr) as bar:
        while any([await consumer.position(tp) < end[tp] for tp in partitions]):
            batches = await consumer.getmany(timeout_ms=500, max_records=max_records)
            records = [r for tp, recs in batches.items() for r in recs if r.offset < end[tp]]
            if records:
                yield records
                bar.update(len(records))

