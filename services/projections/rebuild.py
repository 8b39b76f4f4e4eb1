"""``tnrwatch replay projections``: rebuild every read model from the start of the log.

1. A new generation (schema) is created beside the live one, without secondary indexes.
2. The topics are read from the beginning to their ends, in large batches; decoding the next
   batch overlaps with PostgreSQL writing the previous one.
3. A second pass catches up with what arrived meanwhile; then the indexes are built.
4. The swap: one transaction locks the live pointer (the live consumer's next batch waits),
   catches the new generation up to the live consumer's committed offsets if it is behind,
   records its positions and points readers and the live consumer at it. Readers see the old
   complete model until the commit and the new complete model after it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import uvloop
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord, TopicPartition
from tqdm import tqdm

from services.projections import store
from services.projections.decoding import decode_payloads, worker_init
from services.projections.folding import ClassifiedFact, LogEvent, fact_from_tuple
from services.projections.service import apply_events
from shared.db import create_pool, prepare_database
from shared.events import EventType
from shared.kafka import ensure_topics, make_consumer, topics_for
from shared.settings import Settings

log = logging.getLogger(__name__)

COMPONENT = "projections"  # the live consumer's group id
MIGRATIONS = Path(__file__).parent / "migrations"


def projection_topics(settings: Settings) -> list[str]:
    topics = topics_for(settings)
    return [topics.incidents, topics.classifications, topics.alerts]


@dataclass
class RebuildReport:
    generation: str
    retired: str
    events: int = 0
    skipped: int = 0  # records that could not be decoded (the live consumer dead-letters them)
    unchanged: int = 0  # reports already folded from their classification, not decoded again
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    # Where the time of the passes went (reader and writer overlap, so these add up to more).
    timings: dict[str, float] = field(default_factory=lambda: {"fold and write": 0.0})

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


_REPORT_TYPES = {EventType.INCIDENT_REPORTED.value.encode(), EventType.INCIDENT_AMENDED.value.encode()}


class _Reader:
    """Reads assigned partitions up to given offsets, decoding as it goes.

    Classifications are read first and each carries its report; ``known`` remembers which
    report (incident id, received_at) each one carried. A report on the log whose envelope
    names exactly such a report (intake writes ``subject`` = incident id and ``time`` =
    received_at) would change nothing, so it is counted without being decoded: the largest
    single saving of a replay."""

    def __init__(
        self, consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition], decoder: Executor, ahead: int
    ) -> None:
        self.consumer = consumer
        self.decoder = decoder
        self.ahead = ahead
        self.partitions = list(partitions)
        self.skipped = 0
        self.unchanged = 0
        self.known: dict[str, datetime] = {}
        self.timings: dict[str, float] = {"fetch": 0.0, "select": 0.0, "decode wait": 0.0, "hand over": 0.0}

    async def read_until(
        self,
        stop_at: dict[TopicPartition, int],
        sink: Callable[[list[LogEvent], int, int], Any],
        batch_records: int,
    ) -> None:
        """Hand decoded batches to ``sink`` until every partition reaches ``stop_at``; records
        at or beyond it are left alone."""
        remaining = {tp for tp, end in stop_at.items() if await self.position(tp) < end}
        # Decoding (full validation) runs in worker processes, a batch or two ahead, while this
        # process fetches the next batch; batches are handed on in log order.
        pending: deque[tuple[asyncio.Future[list[tuple[Any, ...] | None]], list[ConsumerRecord], int, int]] = deque()
        loop = asyncio.get_running_loop()

        async def hand_on() -> None:
            future, records, count, unchanged = pending.popleft()
            t0 = time.monotonic()
            flats = await future
            events: list[LogEvent] = []
            known = self.known
            for record, flat in zip(records, flats, strict=True):
                if flat is None:
                    self.skipped += 1
                    continue
                fact = fact_from_tuple(flat)
                events.append(LogEvent(record.topic, record.partition, record.offset, fact, record.value.decode()))
                if isinstance(fact, ClassifiedFact):
                    report = fact.report
                    seen = known.get(report.incident_id)
                    if seen is None or report.received_at > seen:
                        known[report.incident_id] = report.received_at
            t1 = time.monotonic()
            self.timings["decode wait"] += t1 - t0
            await sink(events, count, unchanged)
            self.timings["hand over"] += time.monotonic() - t1

        while remaining:
            t0 = time.monotonic()
            batches = await self.consumer.getmany(*remaining, timeout_ms=100, max_records=batch_records)
            t1 = time.monotonic()
            self.timings["fetch"] += t1 - t0
            chosen: list[ConsumerRecord] = []
            types: list[tuple[bytes | None, bytes | None]] = []
            count = unchanged = 0
            for tp, records in batches.items():
                end = stop_at[tp]
                for record in records:
                    if record.offset >= end:
                        break
                    count += 1
                    headers = dict(record.headers or ())
                    if self.known and self._already_known(headers):
                        unchanged += 1
                        self.unchanged += 1
                        continue
                    chosen.append(record)
                    types.append((headers.get("ce_type"), record.value))
                if records and records[-1].offset >= end - 1:
                    self.consumer.seek(tp, end)
            if count:
                future = loop.run_in_executor(self.decoder, decode_payloads, types)
                pending.append((future, chosen, count, unchanged))
            self.timings["select"] += time.monotonic() - t1
            while len(pending) > self.ahead:
                await hand_on()
            remaining = {tp for tp in remaining if await self.position(tp) < stop_at[tp]}
        while pending:
            await hand_on()

    def _already_known(self, headers: dict[str, bytes]) -> bool:
        if headers.get("ce_type") not in _REPORT_TYPES:
            return False
        subject, at = headers.get("ce_subject"), headers.get("ce_time")
        if subject is None or at is None:
            return False
        seen = self.known.get(subject.decode(errors="replace"))
        try:
            return seen is not None and datetime.fromisoformat(at.decode()) == seen
        except ValueError:
            return False

    async def position(self, tp: TopicPartition) -> int:
        return int(await self.consumer.position(tp))


async def rebuild(
    settings: Settings,
    *,
    show_progress: bool = True,
    batch_records: int = 5000,
    swap_timeout: float = 120.0,
    decode_workers: int | None = None,
) -> RebuildReport:
    """Build a new generation from the log and swap it in; returns what was done.
    ``decode_workers``: processes that decode (default: one per core but one, 1 to 4)."""
    started = time.monotonic()
    # A batch holds tens of thousands of small objects for a moment; the default collector
    # thresholds would scan them again and again (measured: 3x slower decoding). Nothing here
    # builds reference cycles worth collecting before the rebuild ends.
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(200_000, 50, 100)
    try:
        return await _rebuild(settings, show_progress, batch_records, swap_timeout, started, decode_workers)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


class RebuildInProgress(Exception):
    """Another rebuild holds the lock; two at once would drop each other's generation."""


_REBUILD_LOCK = 0x746E7270  # "tnrp"


async def _rebuild(
    settings: Settings,
    show_progress: bool,
    batch_records: int,
    swap_timeout: float,
    started: float,
    decode_workers: int | None,
) -> RebuildReport:
    await ensure_topics(settings)
    pool = await create_pool(settings.database_url, min_size=2, max_size=4)
    try:
        await prepare_database(pool, COMPONENT, MIGRATIONS)
        async with pool.acquire() as lock:
            # Session lock, held on this connection until the rebuild ends (or the process dies).
            if not await lock.fetchval("SELECT pg_try_advisory_lock($1)", _REBUILD_LOCK):
                raise RebuildInProgress("another `tnrwatch replay projections` is running")
            try:
                return await _build(pool, settings, show_progress, batch_records, swap_timeout, started, decode_workers)
            finally:
                await lock.execute("SELECT pg_advisory_unlock($1)", _REBUILD_LOCK)
    finally:
        await pool.close()


async def _build(
    pool: asyncpg.Pool,
    settings: Settings,
    show_progress: bool,
    batch_records: int,
    swap_timeout: float,
    started: float,
    decode_workers: int | None,
) -> RebuildReport:
    async with pool.acquire() as conn:
        generation = await store.create_generation(conn)
    try:
        consumer = make_consumer(
            settings.model_copy(update={"service_name": "projections-rebuild"}),
            group_id="projections-rebuild",  # never commits: partitions are assigned, not subscribed
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            fetch_max_wait_ms=50,  # offset requests wait behind a pending long-poll fetch
        )
        # Decoding with full validation is most of a replay's work: worker processes do it
        # beside this one (which fetches, folds and writes). Spawned, not forked: this process
        # runs threads and an event loop.
        workers = decode_workers or max(1, min(4, (os.cpu_count() or 2) - 1))
        decoder = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=worker_init)
        for _ in range(workers):  # start them now: they import while the consumer connects
            decoder.submit(decode_payloads, [])
        await consumer.start()
        try:
            report = await _run(
                pool, consumer, decoder, workers, settings, generation, show_progress, batch_records, swap_timeout
            )
        finally:
            await consumer.stop()
            decoder.shutdown(cancel_futures=True)
    except BaseException:
        # A half-built generation is never served; drop it now rather than at the next rebuild.
        async with pool.acquire() as conn:
            if await conn.fetchval(
                "SELECT status = 'building' FROM projections_generations WHERE generation = $1", generation
            ):
                await store.drop_generation(conn, generation)
        raise
    report.seconds = time.monotonic() - started
    return report


async def _run(
    pool: asyncpg.Pool,
    consumer: AIOKafkaConsumer,
    decoder: Executor,
    workers: int,
    settings: Settings,
    generation: str,
    show_progress: bool,
    batch_records: int,
    swap_timeout: float,
) -> RebuildReport:
    topics = topics_for(settings)
    partitions = await _partitions(settings, projection_topics(settings))
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    reader = _Reader(consumer, partitions, decoder, ahead=workers + 1)
    begin = await consumer.beginning_offsets(partitions)
    end = await consumer.end_offsets(partitions)
    report = RebuildReport(generation=generation, retired="")
    bar = tqdm(
        total=sum(end[tp] - begin[tp] for tp in partitions),
        unit="ev",
        unit_scale=True,
        desc=f"replay projections → {generation}",
        disable=not show_progress,
    )
    dsn = settings.database_url

    def writer(work: queue.Queue[tuple[list[LogEvent], int, int] | None], failed: list[BaseException]) -> None:
        """Folds and writes in a thread of its own, with its own loop and connection: decoding
        holds the interpreter for a whole batch at a time, and a writer sharing the reader's
        loop could hand PostgreSQL its next statement only between batches."""

        async def write_all() -> None:
            conn = await asyncpg.connect(dsn)  # writes text only: no JSON codecs needed
            try:
                while (item := work.get()) is not None:  # blocking: this loop serves no one else
                    events, count, unchanged = item
                    t0 = time.monotonic()
                    async with conn.transaction():
                        report.events += await apply_events(conn, generation, events, unchanged=unchanged, bulk=True)
                    report.timings["fold and write"] += time.monotonic() - t0
                    bar.update(count)
            finally:
                await conn.close()

        try:
            uvloop.run(write_all())
        except BaseException as exc:
            failed.append(exc)
            while work.get() is not None:  # unblock the reader until it stops
                pass

    async def pass_until(stop_at: dict[TopicPartition, int]) -> None:
        work: queue.Queue[tuple[list[LogEvent], int, int] | None] = queue.Queue(maxsize=2)
        failed: list[BaseException] = []
        thread = threading.Thread(target=writer, args=(work, failed), name="projections-rebuild-writer")
        thread.start()

        async def sink(events: list[LogEvent], count: int, unchanged: int) -> None:
            if failed:
                raise failed[0]
            await asyncio.to_thread(work.put, (events, count, unchanged))

        try:
            await reader.read_until(stop_at, sink, batch_records)
        finally:
            await asyncio.to_thread(work.put, None)
            await asyncio.to_thread(thread.join)
        if failed:
            raise failed[0]

    t0 = time.monotonic()
    # Classifications first: each carries its report, so the log's own copy of the report then
    # changes nothing and is not written again (only unclassified incidents are). The fold does
    # not depend on the order of topics.
    for topic in (topics.classifications, topics.incidents, topics.alerts):
        await pass_until({tp: offset for tp, offset in end.items() if tp.topic == topic})
    report.phases["log"] = time.monotonic() - t0
    t0 = time.monotonic()
    latest = await consumer.end_offsets(partitions)
    bar.total = bar.total + sum(latest[tp] - end[tp] for tp in partitions)
    await pass_until(latest)
    report.phases["catch-up"] = time.monotonic() - t0
    t0 = time.monotonic()
    async with pool.acquire() as conn:
        await store.index_generation(conn, generation)
    report.phases["index"] = time.monotonic() - t0
    t0 = time.monotonic()
    report.retired = await _swap(pool, reader, generation, swap_timeout)
    report.phases["swap"] = time.monotonic() - t0
    report.skipped = reader.skipped
    report.unchanged = reader.unchanged
    report.timings.update(reader.timings)
    bar.close()
    return report


async def _partitions(settings: Settings, topics: Sequence[str]) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    found = {d["topic"]: sorted(p["partition"] for p in d["partitions"]) for d in described}
    missing = [t for t in topics if not found.get(t)]
    if missing:
        raise RuntimeError(f"topics without partitions: {missing}")
    return [TopicPartition(t, p) for t in topics for p in found[t]]


async def _swap(pool: asyncpg.Pool, reader: _Reader, generation: str, lock_wait: float) -> str:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{int(lock_wait)}s'")
        await conn.execute("SELECT 1 FROM projections_state FOR UPDATE")
        live = await store.live_consumer_offsets(conn, COMPONENT)
        mine = {tp: await reader.position(tp) for tp in reader.partitions}
        behind = {
            tp: live[(tp.topic, tp.partition)] for tp, at in mine.items() if live.get((tp.topic, tp.partition), 0) > at
        }

        async def apply_now(events: list[LogEvent], count: int, unchanged: int) -> None:
            await apply_events(conn, generation, events, unchanged=unchanged)

        if behind:
            await reader.read_until(behind, apply_now, 5000)
        positions = {
            (tp.topic, tp.partition): max(live.get((tp.topic, tp.partition), 0), at) for tp, at in mine.items()
        }
        await store.store_generation_offsets(conn, generation, positions)
        return await store.swap_generation(conn, generation)


async def replay_projections(settings: Settings) -> int:
    """The ``tnrwatch replay projections`` entry point."""
    try:
        report = await rebuild(settings)
    except RebuildInProgress as exc:
        print(f"projections: not started: {exc}")
        return 1
    print(
        f"projections: {report.generation} is live ({report.events} events in "
        f"{report.seconds:.1f}s, {report.rate:,.0f}/s; {report.skipped} undecodable records "
        f"skipped); {report.retired} retired"
    )
    return 0
