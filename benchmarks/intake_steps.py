"""CPU per event of each step intake takes for a batch of 100 reports, in this process (no
HTTP, no other process to share a core with): the numbers to judge a change by on a busy
machine, where whole-service rates swing ±20-50 %.

    .venv/bin/python -m benchmarks.intake_steps [--rounds 200]

Steps: parsing the body; preparing the reports by the full models and by the fast path (what
intake does); building the records; claiming and settling them in PostgreSQL (the local
stack's, a database of its own; client CPU only); aiokafka's ``send`` of the same records
(acks=all, idempotent, the local broker; what the bare producer pays too) and intake's own
way of writing them (``service._send_each``). Each figure is
the best of seven repetitions.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.intake import store
from services.intake.binding import parse
from services.intake.main import MIGRATIONS, PRODUCER_TUNING, SERVER_SETTINGS, _no_session_reset
from services.intake.partition import partition_for
from services.intake.service import IntakeContext, _record, _send_each
from services.intake.validation import plain_one, prepare, prepare_one
from shared.auth import Principal
from shared.db import create_pool, prepare_database
from shared.kafka import make_producer
from tests.harness import drop_database, isolated_settings
from tests.infra import _local_stack

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "incidents.jsonl"
BATCH = 100


def batch_body(prefix: str) -> bytes:
    base = json.loads(DATA.read_text().splitlines()[0])["event"]
    events = []
    for i in range(BATCH):
        event = copy.deepcopy(base)
        event["id"], event["subject"] = f"{prefix}-{i}", f"REF-{prefix}-{i}"
        events.append(event)
    return json.dumps(events).encode()


def best_of(rounds: int, step: Callable[[], Any]) -> float:
    """µs of CPU per event, the best of seven repetitions of ``rounds`` batches."""
    step()
    best = float("inf")
    for _ in range(7):
        started = time.process_time()
        for _ in range(rounds):
            step()
        best = min(best, (time.process_time() - started) / rounds / BATCH * 1e6)
    return best


async def best_of_async(rounds: int, make: Callable[[int], Any]) -> float:
    best = float("inf")
    for repetition in range(3):
        started = time.process_time()
        for r in range(rounds):
            await make(repetition * rounds + r)
        best = min(best, (time.process_time() - started) / rounds / BATCH * 1e6)
    return best


async def main(rounds: int) -> None:
    body = batch_body("steps")
    source = json.loads(body)[0]["source"]
    principal = Principal("k", "sample-ngo", frozenset({"events:write"}), frozenset({source}))
    key = b"k" * 32
    today = date.today()
    events = parse("application/cloudevents-batch+json", {}, body).events
    prepared = prepare(events, principal, key, batch=True)
    when = datetime.now(UTC).isoformat()
    trace_headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    rows: list[tuple[str, float]] = [
        ("body JSON (binding.parse)", best_of(rounds, lambda: parse("application/cloudevents-batch+json", {}, body))),
        ("prepare, full models (prepare_one)",
         best_of(rounds, lambda: [prepare_one(e, principal, key) for e in events])),
        ("prepare, fast path (plain_one)",
         best_of(rounds, lambda: [plain_one(e, principal, key, today) for e in events])),
        ("records (_record)", best_of(rounds, lambda: [_record(p, principal, when, trace_headers) for p in prepared])),
    ]

    infra = _local_stack()
    settings = await isolated_settings(infra.kafka_bootstrap, infra.database_url, log_level="WARNING")
    pool = await create_pool(settings.database_url, max_size=2, reset=_no_session_reset,
                             server_settings=SERVER_SETTINGS)
    topic = f"{settings.topic_prefix}.steps"
    producer = make_producer(settings, **PRODUCER_TUNING)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        await prepare_database(pool, "intake", MIGRATIONS)
        claims = [
            [store.Claim(p.envelope.source, f"{n}-{p.envelope.id}", p.incident_id, p.target_ref or "",
                         p.kind.value, "sample-ngo", p.event_id, b"x" * 90) for p in prepared]
            for n in range(3 * 50)
        ]

        async def claim(n: int) -> None:
            await store.claim(pool, claims[n], "steps")

        async def settle(n: int) -> None:
            await store.mark_accepted(pool, [([(c.source, c.report_id) for c in claims[n]], None)], "steps")

        rows.append(("claim in PostgreSQL (client CPU)", await best_of_async(50, claim)))
        rows.append(("settle in PostgreSQL (client CPU)", await best_of_async(50, settle)))

        await admin.start()
        await admin.create_topics([NewTopic(topic, settings.topic_partitions, settings.topic_replication)])
        await producer.start()
        records = [_record(p, principal, when, trace_headers) for p in prepared]

        async def send(_: int) -> None:
            futures = [await producer.send(topic, r.value, key=r.key, headers=r.headers) for r in records]
            await asyncio.gather(*futures)

        await send(0)
        rows.append(("aiokafka send + ack (the bare producer's)", await best_of_async(50, send)))
        partitions = list(producer.client.cluster.partitions_for_topic(topic))

        async def send_partitioned(_: int) -> None:
            futures = [await producer.send(topic, r.value, key=r.key, headers=r.headers,
                                           partition=partition_for(r.key or b"", partitions)) for r in records]
            await asyncio.gather(*futures)

        rows.append(("the same, partition given", await best_of_async(50, send_partitioned)))
        # What intake does (service._send_each): into the accumulator, outcomes awaited in turn.
        ctx = cast(IntakeContext, SimpleNamespace(producer=producer, incidents_topic=topic))

        async def send_intake(_: int) -> None:
            assert not any(await _send_each(ctx, records))

        rows.append(("intake's _send_each (accumulator) + ack", await best_of_async(50, send_intake)))
    finally:
        await producer.stop()
        await pool.close()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()
        await drop_database(infra.database_url, settings)

    print(f"\nintake steps, CPU µs per event in this process (batches of {BATCH}, best of repetitions)")
    print(f"load average: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(f"{'step':<44} {'µs/event':>9}")
    print("-" * 54)
    for what, micros in rows:
        print(f"{what:<44} {micros:>9.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100)
    asyncio.run(main(parser.parse_args().rounds))
