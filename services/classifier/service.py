"""Consume reported incidents, classify, produce: one Kafka transaction per batch.

The classified events, the dead letters and the consumer offsets commit together
(``send_offsets_to_transaction``), and downstream consumers read ``read_committed``: each
incident is classified exactly once downstream, even when the classifier dies in the middle
of a batch. On any error the transaction is aborted and the consumer goes back to the
committed offsets, so the batch is processed again from the start, never half.

Fencing: the producer's ``transactional_id`` is stable per instance (``<prefix>.classifier.
<instance>``). A restarted instance fences its previous incarnation, whose open transaction
the broker aborts. Partitions are handed over in a rebalance only after the batch in flight
has committed (the rebalance listener waits for it).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import ProducerFenced
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client import Counter, Histogram

from services.classifier.pipeline import Classify, classify_incident, downstream_event
from shared.kafka import dead_letter_payload, make_consumer, make_producer, topics_for
from shared.serialization import PoisonEvent, from_record, header_map, to_record
from shared.settings import Settings
from shared.telemetry import consumed_span, current_trace_headers

log = logging.getLogger(__name__)

CLASSIFIED = Counter("tnrwatch_classifier_events_total", "Incidents classified", ["outcome"])
_CLASSIFIED_OK, _SKIPPED, _DEAD = (CLASSIFIED.labels(o) for o in ("classified", "skipped", "dead_letter"))
ABORTED = Counter("tnrwatch_classifier_aborted_batches_total", "Batches aborted and re-read")
BATCH_SECONDS = Histogram("tnrwatch_classifier_batch_seconds", "One transaction: classify and commit")
GROUP_ID = "classifier"
# After this many aborted batches in a row the loop gives up and the supervisor rebuilds the
# consumer and producer from scratch (a broker that keeps refusing is not a transient glitch).
MAX_CONSECUTIVE_ABORTS = 5

def instance_transactional_id(settings: Settings) -> str:
    """Stable per instance (``TNR_INSTANCE_ID``, default 0): a restart fences its predecessor,
    while two instances with different ids never fence each other."""
    return f"{settings.topic_prefix}.classifier.{settings.instance_id}"


class _HandOverAfterCommit(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions leave this instance only between transactions."""

    def __init__(self, lock: asyncio.Lock) -> None:
        self.lock = lock

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.lock:
            pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        return None


class ClassifierLoop:
    def __init__(
        self,
        settings: Settings,
        classify: Classify = classify_incident,
        *,
        group_id: str = GROUP_ID,
        input_topic: str | None = None,
        output_topic: str | None = None,
        transactional_id: str | None = None,
        max_records: int = 1000,
    ) -> None:
        self.settings = settings
        self.classify = classify
        self.topics = topics_for(settings)
        self.group_id = group_id
        self.input_topic = input_topic or self.topics.incidents
        self.output_topic = output_topic or self.topics.classifications
        self.dead_letter_topic = self.topics.dead_letter(GROUP_ID)
        self.transactional_id = transactional_id or instance_transactional_id(settings)
        self.max_records = max_records
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.polled_once = False
        self.batches_committed = 0
        self.records_done = 0
        self._stopping = False
        self._lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return self.polled_once

    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        settings = self.settings.model_copy(update={"service_name": "classifier"})
        self.consumer = consumer = make_consumer(settings, group_id=self.group_id)
        consumer.subscribe([self.input_topic], listener=_HandOverAfterCommit(self._lock))
        # Starting the producer runs InitProducerId: it fences any older incarnation with the
        # same transactional_id and aborts the transaction that incarnation left open.
        self.producer = producer = make_producer(settings, transactional_id=self.transactional_id)
        await producer.start()
        try:
            await consumer.start()
            aborts = 0
            while not self._stopping:
                batches = await consumer.getmany(timeout_ms=200, max_records=self.max_records)
                self.polled_once = True
                if not batches:
                    continue
                async with self._lock:
                    try:
                        with BATCH_SECONDS.time():
                            await self.process(batches)
                        aborts = 0
                    except ProducerFenced:
                        log.error("another classifier took over transactional id %s", self.transactional_id)
                        raise
                    except Exception:
                        aborts += 1
                        ABORTED.inc()
                        log.exception("batch aborted (%d in a row); re-reading from committed offsets", aborts)
                        if aborts >= MAX_CONSECUTIVE_ABORTS or producer._txn_manager.is_fatal_error():
                            raise
                        await self.rewind()
                        await asyncio.sleep(min(0.2 * 2**aborts, 5.0))
        finally:
            await consumer.stop()
            await producer.stop()

    async def rewind(self) -> None:
        """Seek every assigned partition back to its committed offset (or the beginning)."""
        consumer = self.consumer
        assert consumer is not None
        for tp in consumer.assignment():
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)

    async def process(self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """One transaction: every output of the batch and its offsets, or nothing."""
        producer, consumer = self.producer, self.consumer
        assert producer is not None and consumer is not None
        assigned = consumer.assignment()
        # Records fetched before a rebalance for partitions now elsewhere are not ours.
        batches = {tp: records for tp, records in batches.items() if tp in assigned and records}
        if not batches:
            return
        async with producer.transaction():
            deliveries: list[asyncio.Future[object]] = []
            offsets: dict[TopicPartition, int] = {}
            for tp, records in batches.items():
                for record in records:
                    delivery = await self._one(producer, record)
                    if delivery is not None:
                        deliveries.append(delivery)
                offsets[tp] = records[-1].offset + 1
            # A send that failed fails the batch here, inside the transaction, so it aborts.
            await asyncio.gather(*deliveries)
            await producer.send_offsets_to_transaction(offsets, self.group_id)
        self.batches_committed += 1
        self.records_done += sum(len(r) for r in batches.values())

    async def _one(
        self, producer: AIOKafkaProducer, record: ConsumerRecord[bytes, bytes]
    ) -> asyncio.Future[object] | None:
        try:
            event = from_record(record.value, record.headers)
            with consumed_span(
                "classifier process", header_map(record.headers), {"cloudevents.event_type": event.type}
            ):
                try:
                    out = downstream_event(event, self.classify)
                except PoisonEvent:
                    raise
                except Exception as exc:
                    # The classification is a pure function of the record: retrying cannot
                    # help, so the record is set aside (with its bytes) instead of blocking
                    # the partition.
                    log.exception("classifier failed on %s/%s/%s", record.topic, record.partition, record.offset)
                    raise PoisonEvent(f"classifier error: {type(exc).__name__}: {exc}") from exc
                if out is None:
                    _SKIPPED.inc()
                    return None
                key, downstream = out
                rec = to_record(downstream, key=key, trace_headers=current_trace_headers())
                delivery: asyncio.Future[object] = await producer.send(
                    self.output_topic, rec.value, key=rec.key, headers=rec.headers
                )
                _CLASSIFIED_OK.inc()
                return delivery
        except PoisonEvent as exc:
            value, headers = dead_letter_payload(record, str(exc), GROUP_ID)
            log.warning("dead-lettered %s/%s/%s: %s", record.topic, record.partition, record.offset, exc)
            dead: asyncio.Future[object] = await producer.send(
                self.dead_letter_topic, value, key=record.key, headers=headers
            )
            _DEAD.inc()
            return dead

