"""Replay throughput of the projections beside the limit, measured in the same run.

    .venv/bin/python -m benchmarks.projections_replay [--incidents N] [--profile]

Seeds N incidents (each reported on the log and classified: 2N events) on fresh topics and a
fresh database, then measures:

- limit, Kafka: raw aiokafka consumption of the same topics, every record fetched, nothing decoded;
- limit, COPY: a PostgreSQL COPY of the same rows (record id, key, partner, the JSON as `json`,
  as the read models store it)
  into a plain table;
- replay: `tnrwatch replay projections` (decode, fold, batched writes into a new generation,
  index, swap).

The limit is the two in sequence: events / (Kafka seconds + COPY seconds).
Targets: replay >= 20,000 events/s and >= 1/3 of the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import resource
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.settings import Settings

# Everything else is imported inside the functions: a replay's decoding workers are spawned
# processes, which import the main module again; as under `tnrwatch replay projections`
# (whose main module imports nothing but the command table), that must stay cheap, or the
# workers' start-up would be measured as part of the replay.


async def seed(settings: Settings, incidents: int) -> float:
    from tests.projections.logdata import LogWriter

    started = time.monotonic()
    async with LogWriter(settings) as log:
        await log.many(incidents, batch=5000)
    return time.monotonic() - started


async def raw_kafka(settings: Settings) -> tuple[int, float, list[tuple[str, str, str, bytes]]]:
    """Every record of the topics, fetched and kept as bytes; nothing decoded."""
    from services.projections.rebuild import _partitions, projection_topics
    from shared.kafka import make_consumer

    consumer = make_consumer(
        settings,
        group_id="bench-raw",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
        fetch_max_wait_ms=50,  # as the replay's consumer
    )
    await consumer.start()
    rows: list[tuple[str, str, str, bytes]] = []
    try:
        partitions = await _partitions(settings, projection_topics(settings))
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        started = time.monotonic()
        remaining = set(partitions)
        fetched = []
        while remaining:
            batches = await consumer.getmany(timeout_ms=100, max_records=5000)
            for records in batches.values():
                fetched.extend(records)
            remaining = {tp for tp in remaining if await consumer.position(tp) < end[tp]}
        seconds = time.monotonic() - started
        for r in fetched:
            rows.append((f"{r.topic}/{r.partition}/{r.offset}", (r.key or b"").decode(), "p", r.value))
        return len(fetched), seconds, rows
    finally:
        await consumer.stop()


async def copy_rows(settings: Settings, rows: list[tuple[str, str, str, bytes]], *, table: str) -> float:
    import asyncpg

    conn = await asyncpg.connect(settings.database_url)
    try:
        # A scratch table: autovacuum is off, so that it does not vacuum and analyze it later,
        # beside the replay being measured (the replay's own tables are loaded likewise).
        await conn.execute(
            f"CREATE TABLE {table} (incident_id text, target_ref text, partner text, data json)"
            " WITH (autovacuum_enabled = off)"
        )
        # Text COPY (PostgreSQL checks the JSON, as it does for the read models); the buffer is
        # built before the clock starts, so the limit is the database's work alone.
        data = "".join(f"{a}\t{b}\t{c}\t{v.decode().replace(chr(92), chr(92) * 2)}\n" for a, b, c, v in rows).encode()
        started = time.monotonic()
        await conn.copy_to_table(table, source=io.BytesIO(data), format="text")
        seconds = time.monotonic() - started
        await conn.execute(f"DROP TABLE {table}")
        return seconds
    finally:
        await conn.close()


def _cpu() -> tuple[float, float]:
    """CPU seconds of this process and of its ended children (the decoding workers)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime


async def main() -> None:
    from services.projections.rebuild import MIGRATIONS, rebuild
    from shared.db import create_pool, prepare_database
    from shared.kafka import ensure_topics
    from tests.harness import drop_database, isolated_settings
    from tests.infra import start_infra

    parser = argparse.ArgumentParser()
    parser.add_argument("--incidents", type=int, default=50_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--decode-workers", type=int, default=None)
    args = parser.parse_args()
    with ExitStack() as stack:
        infra = start_infra(stack)
        settings = await isolated_settings(infra.kafka_bootstrap, infra.database_url)
        try:
            await ensure_topics(settings)
            pool = await create_pool(settings.database_url)
            await prepare_database(pool, "projections", MIGRATIONS)
            await pool.close()
            seeded = await seed(settings, args.incidents)
            # The machine is shared: every measure runs `--rounds` times, alternating, and the
            # best of each counts.
            kafka_s = copy_s = float("inf")
            report = None
            cpu = (0.0, 0.0)
            for round_ in range(args.rounds):
                events, seconds, rows = await raw_kafka(settings)
                kafka_s = min(kafka_s, seconds)
                copy_s = min(copy_s, await copy_rows(settings, rows, table=f"bench_copy_{round_}"))
                del rows
                profiler = cProfile.Profile() if args.profile else None
                if profiler:
                    profiler.enable()
                before = _cpu()
                attempt = await rebuild(settings, show_progress=False, decode_workers=args.decode_workers)
                after = _cpu()
                if profiler:
                    profiler.disable()
                    pstats.Stats(profiler).sort_stats("cumulative").print_stats(35)
                if report is None or attempt.seconds < report.seconds:
                    report = attempt
                    cpu = (after[0] - before[0], after[1] - before[1])
            assert report is not None
        finally:
            await drop_database(infra.database_url, settings)
    limit = events / (kafka_s + copy_s)
    replay_rate = report.events / report.seconds
    print(
        f"\nprojections replay: {events:,} events ({args.incidents:,} incidents reported + classified; "
        f"best of {args.rounds} rounds; "
        f"seeded in {seeded:.1f}s)\n"
    )
    print(f"{'measure':<42}{'seconds':>10}{'events/s':>14}")
    print(f"{'limit: raw aiokafka consumption':<42}{kafka_s:>10.2f}{events / kafka_s:>14,.0f}")
    print(f"{'limit: PostgreSQL COPY of the same rows':<42}{copy_s:>10.2f}{events / copy_s:>14,.0f}")
    print(f"{'limit: both in sequence':<42}{kafka_s + copy_s:>10.2f}{limit:>14,.0f}")
    for phase, seconds in report.phases.items():
        print(f"{'replay phase: ' + phase:<42}{seconds:>10.2f}")
    for what, seconds in report.timings.items():  # reader and writer overlap
        print(f"{'  of which ' + what:<42}{seconds:>10.2f}")
    print(f"{'replay projections (end to end)':<42}{report.seconds:>10.2f}{replay_rate:>14,.0f}")
    # CPU, not wall time: what the replay costs whatever else runs on the machine.
    print(f"{'  CPU: replay process (reader + writer)':<42}{cpu[0]:>10.2f}")
    print(f"{'  CPU: decoding workers':<42}{cpu[1]:>10.2f}")
    print(
        f"\n{report.unchanged:,} log reports already folded from their classification (not decoded again)"
        f"\nreplay / limit = {replay_rate / limit:.2f} (target >= 0.33); "
        f"replay >= 20,000/s: {'yes' if replay_rate >= 20_000 else 'NO'}"
    )


if __name__ == "__main__":
    asyncio.run(main())
