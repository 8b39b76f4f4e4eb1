"""The consumer loop whose offsets live in PostgreSQL, beside the effects they produced.

One batch in, one database transaction out: the handler's writes and the next offsets commit
together, so a crash can neither lose nor double an event (exactly-once effects). Records
that cannot be decoded go to the dead-letter topic with the reason and their original bytes,
and the partition moves on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.structs import ConsumerRecord, TopicPartition
from opentelemetry import propagate, trace
from prometheus_client import Counter, Gauge

from shared.events import CloudEvent
from shared.kafka import dead_letter_payload, make_consumer
from shared.serialization import PoisonEvent, from_record, header_map
from shared.settings import Settings
from shared.telemetry import spans_recorded

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
    data_json: bytes | None = None  # the record's value: ``event.data`` as it was sent


Decode = Callable[[CloudEvent], T]
Handler = Callable[[asyncpg.Connection, Sequence[Consumed[T]]], Awaitable[None]]


class Staged(Protocol):
    """One batch prepared by a :class:`StagedHandler`, waiting for its transaction."""

    @property
    def current(self) -> bool:
        """False when what it was prepared from has changed since: prepare it again."""
        ...

    async def apply(self, conn: asyncpg.Connection) -> None:
        """The batch's writes, inside the offsets' transaction."""
        ...

    def committed(self) -> None:
        """Called once the transaction has committed."""
        ...


class StagedHandler(Protocol[T]):
    """A handler in two steps, so the consumer prepares batch N+1 (reads, computing) while
    batch N's writes and commit run. ``stage`` may build on batches staged before it whose
    commit is still in flight; if one of them fails, ``discard`` is called and the consumer
    starts again from the offsets stored in PostgreSQL."""

    async def stage(self, pool: asyncpg.Pool, batch: Sequence[Consumed[T]]) -> Staged: ...

    def discard(self) -> None: ...


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
        # A staged consumer may have a commit in flight: finish it before the positions are
        # read again from PostgreSQL (a failure is raised by the loop, which restarts).
        try:
            await self.owner.drain()
        except Exception as exc:
            self.owner.failed = exc

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


# Below this many records a staged consumer waits for the commit in flight before staging
# (latency at low rates); from it on, it stages during the commit (throughput).
TOP_UP_BELOW = 100


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
        staged: StagedHandler[T] | None = None,
        consumer_options: Mapping[str, Any] | None = None,
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
        # With a staged handler, batch N+1 is prepared while batch N commits (see ``feed``).
        self.staged = staged
        self.consumer_options = dict(consumer_options or {})
        self.pending: asyncio.Task[dict[tuple[str, int], int]] | None = None
        self.failed: Exception | None = None
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
        self.consumer = make_consumer(self.settings, group_id=self.group_id, **self.consumer_options)
        await self.consumer.start()
        self.consumer.subscribe(self.topics, listener=_SeekToStored(self))  # type: ignore[arg-type]
        try:
            while not self._stopping.is_set():
                batches = await self.consumer.getmany(timeout_ms=200, max_records=self.max_records)
                self.polled_once = True
                if self.failed is not None:
                    failed, self.failed = self.failed, None
                    raise failed
                records = [r for rs in batches.values() for r in rs]
                if not records:
                    await self.drain()  # idle: nothing stays in flight
                elif self.staged is None:
                    self._report_lag(await self.process(records))
                else:
                    if len(records) < TOP_UP_BELOW and self.pending is not None:
                        # A small batch: finish the commit in flight first, then take what
                        # arrived meanwhile too, so that it goes in this transaction rather
                        # than the one after it. Large batches keep folding during the commit.
                        await self.drain()
                        more = await self.consumer.getmany(timeout_ms=0, max_records=self.max_records - len(records))
                        records += [r for rs in more.values() for r in rs]
                    await self.feed(*await self._decode(records))
        finally:
            try:
                await self.drain()
            finally:
                await self.consumer.stop()

    async def process(self, records: Sequence[ConsumerRecord]) -> dict[tuple[str, int], int]:
        decoded, positions, spans = await self._decode(records)
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

    async def feed(
        self,
        decoded: Sequence[Consumed[T]],
        positions: dict[tuple[str, int], int],
        spans: Sequence[trace.Span] = (),
    ) -> None:
        """Stage a decoded batch while the previous one commits, then start its commit.

        Exactly-once holds as in ``process``: each batch's writes and offsets commit in one
        transaction, in order (batch N+1's transaction begins after batch N's has committed)."""
        staged_handler = self.staged
        assert staged_handler is not None, "feed needs a staged handler"
        try:
            staged = await staged_handler.stage(self.pool, decoded) if decoded else None
            await self.drain()
            if staged is not None and not staged.current:
                staged = await staged_handler.stage(self.pool, decoded)  # nothing in flight now
        except BaseException:
            staged_handler.discard()
            for span in spans:
                span.end()
            raise
        self.pending = asyncio.create_task(self._commit(staged, len(decoded), positions, spans))

    async def drain(self) -> None:
        """Wait for the batch whose commit is in flight; a failure discards what was staged."""
        task, self.pending = self.pending, None
        if task is None:
            return
        try:
            positions = await task
        except BaseException:
            if self.staged is not None:
                self.staged.discard()
            raise
        self._report_lag(positions)

    async def _commit(
        self, staged: Staged | None, count: int, positions: dict[tuple[str, int], int], spans: Sequence[trace.Span]
    ) -> dict[tuple[str, int], int]:
        links = [trace.Link(span.get_span_context()) for span in spans]
        try:
            with self._tracer.start_as_current_span(f"{self.group_id} apply batch", links=links):
                async with self.pool.acquire() as conn, conn.transaction():
                    if staged is not None:
                        await staged.apply(conn)
                    await store_offsets(conn, self.group_id, positions)
        finally:
            for span in spans:
                span.end()
        if staged is not None:
            staged.committed()
        CONSUMED.labels(self.group_id).inc(count)
        return positions

    async def _decode(
        self, records: Sequence[ConsumerRecord]
    ) -> tuple[list[Consumed[T]], dict[tuple[str, int], int], list[trace.Span]]:
        decoded: list[Consumed[T]] = []
        spans = []
        positions: dict[tuple[str, int], int] = {}
        # Without an exporter the record spans would be made for nobody: parsing each record's
        # traceparent was an eighth of the projections' CPU.
        record_spans = spans_recorded()
        for record in records:
            positions[(record.topic, record.partition)] = record.offset + 1
            try:
                event = from_record(record.value, record.headers)
                value = self.decode(event)
            except PoisonEvent as exc:
                await self._dead_letter(record, str(exc))
                continue
            decoded.append(Consumed(record.topic, record.partition, record.offset, event, value, record.value))
            if not record_spans:
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
        return decoded, positions, spans

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
