"""Classified events per second, consume-classify-produce with Kafka transactions on:
tnrwatch's ClassifierLoop (aiokafka) beside the same pipeline written with Quix Streams
(exactly-once), both running the same classification function on the same broker, on the
same input topic, in the same run. Each pipeline's time runs from its start (group join
included) to its last transaction committed; a read_committed count then checks that each
wrote exactly one output per input.

    TNR_BENCH_PEER_PYTHON=.cache/venv-bench/bin/python \
        .venv/bin/python -m benchmarks.classifier_throughput [--events 20000] [--runs 3] [--with-workers]

The peer runs as a subprocess with ``TNR_BENCH_PEER_PYTHON`` (default: this interpreter, which
then needs quixstreams); benchmarks/classifier_peer_requirements.txt sets up an environment
of its own, since quixstreams pins pydantic below this project's pin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from services.classifier.service import ClassifierLoop, resolve_workers
from shared.events import (
    Act,
    EventType,
    IncidentFacts,
    IncidentRecorded,
    Location,
    Narrative,
    new_event,
)
from shared.kafka import ensure_topics, topics_for
from shared.serialization import to_record
from shared.settings import Settings
from shared.telemetry import setup_tracing
from shared.vocabulary import ActType, DatePrecision
from tests.harness import drop_topics

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 3
NARRATIVES = [
    "Police in Dubai detained him on a Red Notice, and prosecutors then filed for his extradition.",
    "他在国内的父母被警察带走，并被要求打电话劝他回国。",
    "He was not extradited; the court released him after two weeks in detention.",
    "Two men from the consulate visited her at her home and urged her to return.",
    None,
]


def bootstrap() -> str:
    if "TNR_KAFKA_BOOTSTRAP" in os.environ:
        return os.environ["TNR_KAFKA_BOOTSTRAP"]
    env = ROOT / ".run" / "stack.env"
    if env.exists():
        for line in env.read_text().splitlines():
            name, _, value = line.partition("=")
            if name.strip() == "TNR_KAFKA_BOOTSTRAP":
                return value.strip().strip('"')
    return Settings().kafka_bootstrap


def incident(i: int) -> IncidentRecorded:
    text = NARRATIVES[i % len(NARRATIVES)]
    return IncidentRecorded(
        incident_id=f"bench-{i}",
        target_ref=f"target-{i % 997}",
        partner="bench",
        source="urn:partner:bench",
        subject=f"B-{i}",
        report_id=f"report-{i}",
        received_at=datetime.now(UTC),
        facts=IncidentFacts(
            occurred_on=date(2024, 1, 1),
            date_precision=DatePrecision.DAY,
            location=Location(country="TR"),
            acts=[Act(type=ActType.FAMILY_THREATENED), Act(type=ActType.INTERPOL_RED_NOTICE)],
            narrative=Narrative(text=text, lang="en") if text else None,
        ),
    )


async def fill_log(settings: Settings, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        topic = topics_for(settings).incidents
        futures = []
        for i in range(count):
            data = incident(i)
            rec = to_record(new_event(EventType.INCIDENT_REPORTED, data, event_id=data.report_id), key=data.target_ref)
            futures.append(await producer.send(topic, rec.value, key=rec.key, headers=rec.headers))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def create_topics(settings: Settings, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, PARTITIONS, settings.topic_replication) for n in names])
    finally:
        await admin.close()


async def committed_count(settings: Settings, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        start = await consumer.beginning_offsets(partitions)
        end = await consumer.end_offsets(partitions)
        # Offsets include transaction markers; count the records themselves.
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen = 0
        while any([await consumer.position(tp) < end[tp] for tp in partitions]):
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                seen += len(records)
        del start
        return seen
    finally:
        await consumer.stop()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def run_ours(settings: Settings, count: int, output: str, run: int, workers: int) -> tuple[float, float]:
    loop = ClassifierLoop(
        settings,
        group_id=f"bench-ours-{workers}-{run}",
        output_topic=output,
        transactional_id=f"{settings.topic_prefix}.bench.ours.{workers}.{run}",
        workers=workers,
    )
    started, cpu, cpu_children = time.perf_counter(), time.process_time(), children_cpu()
    task = asyncio.create_task(loop.run())
    while loop.records_done < count:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    loop.stop()
    await task  # worker processes exit here, so their CPU time is counted
    return elapsed, time.process_time() - cpu + children_cpu() - cpu_children


def run_peer(settings: Settings, count: int, output: str, run: int, step: str) -> tuple[float, float]:
    python = os.environ.get("TNR_BENCH_PEER_PYTHON", sys.executable)
    cpu = children_cpu()
    done = subprocess.run(
        [python, "-m", "benchmarks.classifier_quix_peer", "--bootstrap", settings.kafka_bootstrap,
         "--input", topics_for(settings).incidents, "--output", output, "--group", f"bench-quix-{step}-{run}",
         "--count", str(count), "--step", step],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, check=False,
    )
    if done.returncode != 0 and "No module named 'quixstreams'" in done.stderr:
        raise SystemExit(
            f"{python} has no quixstreams: see benchmarks/classifier_peer_requirements.txt, then run with "
            "TNR_BENCH_PEER_PYTHON=.cache/venv-bench/bin/python"
        )
    if done.returncode != 0:
        raise RuntimeError(f"Quix Streams peer failed:\n{done.stderr[-3000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"]), children_cpu() - cpu


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--with-workers", action="store_true",
                        help="also run ours with worker processes (TNR_CLASSIFIER_WORKERS)")
    args = parser.parse_args()

    # Ours runs as the service runs it: with the tracer installed (exporter "none" by default),
    # so it creates and propagates a span per event; the peer does no tracing.
    setup_tracing("classifier")
    settings = Settings(kafka_bootstrap=bootstrap(), topic_prefix=f"bench-{secrets.token_hex(3)}",
                        topic_partitions=PARTITIONS)
    await ensure_topics(settings)
    try:
        await measure(settings, args)
    finally:
        await drop_topics(settings)


async def measure(settings: Settings, args: argparse.Namespace) -> None:
    await fill_log(settings, args.events)
    auto = resolve_workers(0)
    # Ours: the number of worker processes. The peer: which per-record step it runs (see
    # benchmarks/classifier_quix_peer.py): the project's general codec around the same
    # classification function, or our whole step (then only the plumbing differs).
    pipelines: dict[str, int | str] = {"tnrwatch ClassifierLoop, in event loop": 1}
    if args.with_workers:
        pipelines[f"tnrwatch ClassifierLoop, {auto} processes"] = auto
    pipelines["Quix Streams 3.28, general codec"] = "generic"
    pipelines["Quix Streams 3.28, our step"] = "ours"
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in pipelines}
    for run in range(args.runs):
        # Alternate the order, so that a burst of load from elsewhere does not favour one.
        order = list(enumerate(pipelines.items()))
        for index, (name, kind) in order if run % 2 == 0 else reversed(order):
            out = f"{settings.topic_prefix}.bench.{index}.{run}"
            await create_topics(settings, [out])
            if isinstance(kind, int):
                measured = await run_ours(settings, args.events, out, run, kind)
            else:
                measured = await asyncio.to_thread(run_peer, settings, args.events, out, run, kind)
            written = await committed_count(settings, out)
            if written != args.events:
                raise SystemExit(f"{name} committed {written} outputs for {args.events} inputs")
            results[name].append(measured)

    print(f"\nconsume-classify-produce, transactions on, {args.events} events, {PARTITIONS} partitions, "
          f"broker {settings.kafka_bootstrap}, {args.runs} run(s), order alternating")
    print(f"cpus: {os.cpu_count()}; wall time includes start-up (group join, worker start) and the last commit;")
    print("cpu = user+sys seconds of the pipeline's own process(es), the broker's not included;")
    print("ours runs under uvloop and traces every event (a span each, as the service does); the peers trace")
    print("nothing; their cpu includes interpreter start-up and librdkafka's threads. Both peers run the same")
    print("classify_incident: 'general codec' with shared.serialization around it, 'our step' our whole")
    print("per-record step (services.classifier.pipeline.process_record): there only the plumbing differs")
    print(f"{'pipeline':<40} {'median s':>9} {'best s':>8} {'events/s':>9} {'cpu s':>7} {'cpu us/event':>13}")
    for name, runs in results.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        median = statistics.median(walls)
        cpu = statistics.median(cpus)
        print(f"{name:<40} {median:>9.2f} {min(walls):>8.2f} {args.events / median:>9.0f} {cpu:>7.2f} "
              f"{cpu / args.events * 1e6:>13.0f}")
    print("events/s from the median wall time; every pipeline committed exactly one output per input")


if __name__ == "__main__":
    # The service runs under uvloop (shared/runtime.py serves with loop="uvloop"): so does ours here.
    uvloop.run(main())
