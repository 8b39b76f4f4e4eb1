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
import multiprocessing
import os
import threading
import time
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiokafka.producer.sender as aiokafka_sender
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, ProducerFenced
from aiokafka.structs import ConsumerRecord, TopicPartition
from opentelemetry import trace
from prometheus_client import Counter, Histogram

from services.classifier.pipeline import (
    Classify,
    Headers,
    Outcome,
    Output,
    Poison,
    Skip,
    classify_incident,
    process_records,
)
from services.classifier.tracing import record_span
from shared.kafka import dead_letter_payload, make_consumer, make_producer, topics_for
from shared.settings import Settings

log = logging.getLogger(__name__)

CLASSIFIED = Counter("tnrwatch_classifier_events_total", "Incidents classified", ["outcome"])
_CLASSIFIED_OK, _SKIPPED, _DEAD = (CLASSIFIED.labels(o) for o in ("classified", "skipped", "dead_letter"))
ABORTED = Counter("tnrwatch_classifier_aborted_batches_total", "Batches aborted and re-read")
BATCH_SECONDS = Histogram("tnrwatch_classifier_batch_seconds", "One transaction: write the outputs and commit")
GROUP_ID = "classifier"
# After this many aborted batches in a row the loop gives up and the supervisor rebuilds the
# consumer and producer from scratch (a broker that keeps refusing is not a transient glitch).
MAX_CONSECUTIVE_ABORTS = 5
# Events classified between two yields to the event loop when classifying in it (~5 ms).
INLINE_SLICE = 16
# A transaction's outputs go out in a few large record batches per partition rather than
# hundreds of 16 kB ones (aiokafka's default): fewer batches to build, requests to encode and
# futures to settle. Below the broker's default message.max.bytes (1 MiB).
PRODUCER_TUNING: dict[str, Any] = {"max_batch_size": 512 * 1024}
# Each transaction begins as soon as the previous one commits (the next batch is read and
# classified meanwhile), while the broker is still writing the previous one's commit markers:
# its AddPartitionsToTxn is refused with CONCURRENT_TRANSACTIONS (KAFKA-5477) and aiokafka
# waits a fixed 20 ms before asking again. That wait was most of a transaction at low rates
# (flush p50 26.6 of 33.7 ms in the latency benchmark); asking every 2 ms costs a few tiny
# requests while the markers land (~5-10 ms). The constant is aiokafka's (pinned 0.14.0).
aiokafka_sender.BACKOFF_OVERRIDE = 0.002


def instance_transactional_id(settings: Settings) -> str:
    """Stable per instance (``TNR_INSTANCE_ID``, default 0): a restart fences its predecessor,
    while two instances with different ids never fence each other."""
    return f"{settings.topic_prefix}.classifier.{settings.instance_id}"


class _HandOverAfterCommit(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions leave this instance only between transactions; every rebalance starts a new
    generation, and a batch read in an older one is never committed."""

    def __init__(self, loop: ClassifierLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.loop.lock:
            self.loop.generation += 1

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.loop.generation += 1


@dataclass
class Prepared:
    """A batch read and classified, not yet written: what one transaction will commit."""

    generation: int
    batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    records: list[ConsumerRecord[bytes, bytes]]
    outcomes: list[Outcome]
    read_at_ns: int  # when the batch was read: where its records' spans start


class _StaleBatch(Exception):
    """The batch was read before a rebalance: its partitions may have moved on."""


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
        max_records: int = 3000,
        workers: int | None = None,
        producer_tuning: dict[str, Any] | None = None,
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
        self.producer_tuning = PRODUCER_TUNING if producer_tuning is None else producer_tuning
        self.workers = resolve_workers(settings.classifier_workers if workers is None else workers)
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.polled_once = False
        self.batches_committed = 0
        self.records_done = 0
        self._stopping = False
        self.lock = asyncio.Lock()
        self.generation = 0
        self.tracer = trace.get_tracer("tnrwatch.kafka")
        # The span times of the batch being written (see commit).
        self._span_start_ns = self._span_end_ns = 0

    @property
    def ready(self) -> bool:
        return self.polled_once

    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        settings = self.settings.model_copy(update={"service_name": "classifier"})
        self.consumer = consumer = make_consumer(settings, group_id=self.group_id)
        consumer.subscribe([self.input_topic], listener=_HandOverAfterCommit(self))
        # Starting the producer runs InitProducerId: it fences any older incarnation with the
        # same transactional_id and aborts the transaction that incarnation left open.
        self.producer = producer = make_producer(
            settings, transactional_id=self.transactional_id, **self.producer_tuning
        )
        self.executor = make_executor(self.workers)
        await producer.start()
        next_batch: asyncio.Task[Prepared | None] | None = None
        try:
            await consumer.start()
            aborts = 0
            while not self._stopping:
                try:
                    prepared = await next_batch if next_batch is not None else await self.prepare()
                    next_batch = None
                    if prepared is None:
                        continue
                    # Read and classify the next batch while this one commits: the CPU works
                    # while the transaction's round trips are in flight, and every record that
                    # arrives meanwhile joins the next transaction.
                    committed = asyncio.Event()
                    next_batch = asyncio.create_task(self.prepare(until=committed))
                    async with self.lock:
                        if prepared.generation != self.generation:
                            raise _StaleBatch
                        try:
                            with BATCH_SECONDS.time():
                                await self.commit(prepared)
                        finally:
                            committed.set()
                    aborts = 0
                except _StaleBatch:
                    await _discard(next_batch)
                    next_batch = None
                    await self.rewind()
                except ProducerFenced:
                    log.error("another classifier took over transactional id %s", self.transactional_id)
                    raise
                except Exception as exc:
                    await _discard(next_batch)
                    next_batch = None
                    if isinstance(exc, BrokenExecutor) and self.executor is not None:
                        # A worker process died (e.g. out of memory): start fresh ones.
                        self.executor.shutdown(wait=False, cancel_futures=True)
                        self.executor = make_executor(self.workers)
                    aborts += 1
                    ABORTED.inc()
                    log.exception("batch aborted (%d in a row); re-reading from committed offsets", aborts)
                    if aborts >= MAX_CONSECUTIVE_ABORTS or producer._txn_manager.is_fatal_error():
                        raise
                    await self.rewind()
                    await asyncio.sleep(min(0.2 * 2**aborts, 5.0))
        finally:
            # A batch read but not committed is simply read again by whoever runs next.
            await _discard(next_batch)
            await consumer.stop()
            await producer.stop()
            if self.executor is not None:
                await asyncio.to_thread(self.executor.shutdown, True, cancel_futures=True)

    async def rewind(self) -> None:
        """Seek every assigned partition back to its committed offset (or the beginning)."""
        consumer = self.consumer
        assert consumer is not None
        for tp in consumer.assignment():
            try:
                committed = await consumer.committed(tp)
                if committed is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, committed)
            except IllegalStateError:
                continue  # moved away in a rebalance: its next owner starts from the committed offset

    async def classify_batch(self, records: list[ConsumerRecord[bytes, bytes]]) -> list[Outcome]:
        """The pure step for every record, in order: split across worker processes, or (one
        worker) in the event loop, yielding between slices."""
        raw: list[tuple[bytes | None, Headers | None]] = [(r.value, list(r.headers or ())) for r in records]
        if self.executor is None:
            # In the event loop, a few events at a time: heartbeats, fetches and the previous
            # batch's commit go on in between, and no second thread fights for the GIL.
            out: list[Outcome] = []
            for i in range(0, len(raw), INLINE_SLICE):
                out += process_records(raw[i : i + INLINE_SLICE], self.classify)
                await asyncio.sleep(0)
            return out
        running = asyncio.get_running_loop()
        chunks = max(1, min(self.workers, len(raw) // 50 or 1))
        size = -(-len(raw) // chunks)
        parts = [raw[i : i + size] for i in range(0, len(raw), size)]
        results = await asyncio.gather(
            *(running.run_in_executor(self.executor, process_records, part, self.classify) for part in parts)
        )
        return [outcome for part in results for outcome in part]

    async def prepare(self, until: asyncio.Event | None = None) -> Prepared | None:
        """Read a batch and classify it (nothing is written yet). With ``until`` (the previous
        transaction's end), read once more when it comes: a record that arrived just after
        the first read used to wait for the transaction after next (~30 ms at 200 reports/s).
        Reading again every few ms while waiting was measured slower (more, smaller reads)."""
        generation = self.generation
        batches = await self._read(200, self.max_records)
        read_at_ns = time.time_ns()
        self.polled_once = True
        if not batches:
            return None
        records = [record for recs in batches.values() for record in recs]
        outcomes = await self.classify_batch(records)
        if until is not None and len(records) < self.max_records:
            await until.wait()
            more = await self._read(0, self.max_records - len(records))  # what came meanwhile
            new = [record for recs in more.values() for record in recs]
            if new:
                for tp, recs in more.items():
                    batches.setdefault(tp, []).extend(recs)
                records += new
                outcomes += await self.classify_batch(new)
        return Prepared(generation, batches, records, outcomes, read_at_ns)

    async def _read(
        self, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        consumer = self.consumer
        assert consumer is not None
        fetched = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        assigned = consumer.assignment()
        # Records fetched before a rebalance for partitions now elsewhere are not ours.
        return {tp: records for tp, records in fetched.items() if tp in assigned and records}

    async def commit(self, prepared: Prepared) -> None:
        """One transaction: every output of the batch and its offsets, or nothing."""
        producer = self.producer
        assert producer is not None
        # Each record's span runs from the batch's read to the start of its transaction.
        self._span_start_ns, self._span_end_ns = prepared.read_at_ns, time.time_ns()
        async with producer.transaction():
            deliveries: list[asyncio.Future[object]] = []
            for record, outcome in zip(prepared.records, prepared.outcomes, strict=True):
                delivery = await self.emit(producer, record, outcome)
                if delivery is not None:
                    deliveries.append(delivery)
            # A send that failed fails the batch here, inside the transaction, so it aborts.
            # One flush for the whole batch rather than a callback on each record's future.
            await producer.flush()
            for delivery in deliveries:
                if not delivery.done():
                    await delivery
                elif (error := delivery.exception()) is not None:
                    raise error
            offsets = {tp: recs[-1].offset + 1 for tp, recs in prepared.batches.items()}
            await producer.send_offsets_to_transaction(offsets, self.group_id)
        self.batches_committed += 1
        self.records_done += len(prepared.records)

    async def emit(
        self, producer: AIOKafkaProducer, record: ConsumerRecord[bytes, bytes], outcome: Outcome
    ) -> asyncio.Future[object] | None:
        if isinstance(outcome, Skip):
            _SKIPPED.inc()
            return None
        if isinstance(outcome, Poison):
            value, headers = dead_letter_payload(record, outcome.reason, GROUP_ID)
            log.warning("dead-lettered %s/%s/%s: %s", record.topic, record.partition, record.offset, outcome.reason)
            _DEAD.inc()
            dead: asyncio.Future[object] = await producer.send(
                self.dead_letter_topic, value, key=record.key, headers=headers
            )
            return dead
        assert isinstance(outcome, Output)
        trace_headers = record_span(self.tracer, record.headers, self._span_start_ns, self._span_end_ns)
        delivery: asyncio.Future[object] = await producer.send(
            self.output_topic, outcome.value, key=outcome.key, headers=outcome.headers + trace_headers
        )
        _CLASSIFIED_OK.inc()
        return delivery


async def _discard(task: asyncio.Task[Prepared | None] | None) -> None:
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def resolve_workers(configured: int) -> int:
    """1 means classify in the event loop; n > 1 worker processes; 0 one per CPU (at most 4)."""
    if configured > 0:
        return configured
    return max(1, min(os.cpu_count() or 1, 4))


def make_executor(workers: int) -> Executor | None:
    if workers == 1:
        return None  # classify in the event loop (a thread measured slower: GIL contention)
    # spawn: a fresh interpreter per worker, nothing inherited from the event loop's threads.
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )


def _die_with_parent(parent: int) -> None:
    """A worker whose service was killed (kill -9 skips every clean-up) exits on its own."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
