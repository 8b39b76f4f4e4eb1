"""The consumer loop whose offsets live in PostgreSQL, beside the effects they produced.

One batch in, one database transaction out: the handler's writes and the next offsets commit
together, so a crash can neither lose nor double an event (exactly-once effects). Records
that cannot be decoded go to the dead-letter topic with the reason and their original bytes,
and the partition moves on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.structs import ConsumerRecord, TopicPartition
from opentelemetry import propagate, trace
from prometheus_client import Counter, Gauge

from shared.events import CloudEvent
from shared.kafka import dead_letter_payload, make_consumer
from shared.serialization import PoisonEvent, from_record, header_map
from shared.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

CONSUMED = Counter("tnrwatch_consumed_events_total", "Events applied", ["group"])
DEAD_LETTERS = Counter("tnrwatch_dead_letters_total", "Records sent to a dead-letter topic", ["group"])
LAG = Gauge("tnrwatch_consumer_lag", "Records behind the end of the partition", ["group", "topic", "partition"])


@dataclass(frozen=True, slots=True)
class Consumed(Generic[T]):
    """A decoded record with where it came from."""

    topic: str
    partition: int
    offset: int
    event: CloudEvent
    value: T


Decode = Callable[[CloudEvent], T]
Handler = Callable[[asyncpg.Connection, Sequence[Consumed[T]]], Awaitable[None]]


async def stored_offsets(conn: asyncpg.Connection | asyncpg.Pool, group_id: str) -> dict[tuple[str, int], int]:
    rows = await conn.fetch(
        "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1", group_id
    )
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def store_offsets(conn: asyncpg.Connection, group_id: str, positions: dict[tuple[str, int], int]) -> None:
    await conn.executemany(
        """INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (group_id, topic, partition)
           DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()""",
        [(group_id, t, p, o) for (t, p), o in positions.items()],
    )


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: PgOffsetConsumer[object]) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None  # nothing to flush: every batch is committed before the next poll

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        consumer = self.owner.consumer
        assert consumer is not None
        offsets = await stored_offsets(self.owner.pool, self.owner.group_id)
        for tp in assigned:
            next_offset = offsets.get((tp.topic, tp.partition))
            if next_offset is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, next_offset)
        self.owner.assigned = set(assigned)


class PgOffsetConsumer(Generic[T]):
    def __init__(
        self,
        *,
        settings: Settings,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        group_id: str,
        topics: Sequence[str],
        dead_letter_topic: str,
        decode: Decode[T],
        handle: Handler[T],
        max_records: int = 1000,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.producer = producer
        self.group_id = group_id
        self.topics = list(topics)
        self.dead_letter_topic = dead_letter_topic
        self.decode = decode
        self.handle = handle
        self.max_records = max_records
        self.consumer: AIOKafkaConsumer | None = None
        self.assigned: set[TopicPartition] = set()
        self.polled_once = False
        self._stopping = asyncio.Event()
        self._tracer = trace.get_tracer("tnrwatch.consumer")

    @property
    def ready(self) -> bool:
        return self.consumer is not None and self.polled_once

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        self.consumer = make_consumer(self.settings, group_id=self.group_id)
        await self.consumer.start()
        self.consumer.subscribe(self.topics, listener=_SeekToStored(self))  # type: ignore[arg-type]
        try:
            while not self._stopping.is_set():
                batches = await self.consumer.getmany(timeout_ms=200, max_records=self.max_records)
                self.polled_once = True
                records = [r for rs in batches.values() for r in rs]
                if records:
                    self._report_lag(await self.process(records))
        finally:
            await self.consumer.stop()

    async def process(self, records: Sequence[ConsumerRecord]) -> dict[tuple[str, int], int]:
        decoded: list[Consumed[T]] = []
        spans = []
        positions: dict[tuple[str, int], int] = {}
        for record in records:
            positions[(record.topic, record.partition)] = record.offset + 1
            try:
                event = from_record(record.value, record.headers)
                value = self.decode(event)
            except PoisonEvent as exc:
                await self._dead_letter(record, str(exc))
                continue
            headers = header_map(record.headers)
            spans.append(
                self._tracer.start_span(
                    f"{self.group_id} process",
                    context=propagate.extract(headers),
                    kind=trace.SpanKind.CONSUMER,
                    attributes={
                        "messaging.system": "kafka",
                        "messaging.destination.name": record.topic,
                        "messaging.kafka.offset": record.offset,
                        "cloudevents.event_type": event.type,
                    },
                )
            )
            decoded.append(Consumed(record.topic, record.partition, record.offset, event, value))
        # One span for the batch's transaction, linked to each record's trace (the records'
        # own spans stay open until the commit, so every trace reaches the write).
        links = [trace.Link(span.get_span_context()) for span in spans]
        try:
            with self._tracer.start_as_current_span(f"{self.group_id} apply batch", links=links):
                async with self.pool.acquire() as conn, conn.transaction():
                    if decoded:
                        await self.handle(conn, decoded)
                    await store_offsets(conn, self.group_id, positions)
        finally:
            for span in spans:
                span.end()
        CONSUMED.labels(self.group_id).inc(len(decoded))
        return positions

    async def _dead_letter(self, record: ConsumerRecord, reason: str) -> None:
        value, headers = dead_letter_payload(record, reason, self.group_id)
        log.warning(
            "dead-lettered %s/%s/%s: %s", record.topic, record.partition, record.offset, reason
        )
        await self.producer.send_and_wait(self.dead_letter_topic, value, key=record.key, headers=headers)
        DEAD_LETTERS.labels(self.group_id).inc()

    def _report_lag(self, positions: dict[tuple[str, int], int]) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        for (topic, partition), next_offset in positions.items():
            end = consumer.highwater(TopicPartition(topic, partition))
            if end is not None:
                LAG.labels(self.group_id, topic, str(partition)).set(max(0, end - next_offset))
