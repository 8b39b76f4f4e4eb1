"""End-to-end alert latency: from `POST /v1/events` to the alert on the SSE stream.

    .venv/bin/python -m benchmarks.alerts_latency [--rate 200] [--seconds 20] [--warmup 15]

All four services run as their own processes (as in production) against the local Kafka and
PostgreSQL; a steady stream of reports (each a kidnapping of a new target, so each raises
one R3 alert) is posted at ``--rate`` per second, and every alert is read off
`GET /v1/alerts/stream`. Latency = SSE arrival - the moment the POST was sent.

Target: p99 < 250 ms at 200 reports/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx

from benchmarks.intake_throughput import _read_response, http_request
from benchmarks.procs import local_servers, schedstat
from shared.kafka import read_to_end, replay_consumer, topics_for
from shared.settings import Settings
from tests.harness import ServiceProcess, drop_database, free_port, isolated_settings, issue_key
from tests.infra import start_infra

SERVICES = ["intake", "classifier", "alerts", "projections"]
CONNECTIONS = 64


async def record_times(settings: Settings, topic: str) -> dict[str, float]:
    """incident_id -> the record's CreateTime (the producer's clock when it was sent). Records
    are in the binary binding: the value is the event's ``data``."""
    consumer = replay_consumer(settings, client_id="bench-latency")
    await consumer.start()
    times: dict[str, float] = {}
    try:
        async for batch in read_to_end(consumer, topic, desc=topic, progress=False):
            for record in batch:
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    data = json.loads(record.value or b"")
                    data = data.get("incident", data)  # a classification carries the incident
                    times.setdefault(data["incident_id"], record.timestamp / 1000)
    finally:
        await consumer.stop()
    return times


async def print_stages(
    settings: Settings,
    sent: dict[str, float],
    answered: dict[str, float],
    arrived: dict[str, float],
    change_of: dict[str, int],
) -> None:
    """Where the time went, from the processes' own clocks (one machine, one clock): the
    incident record's CreateTime (intake sent it), the classification record's (the classifier
    sent it), the alert change's ``at`` (PostgreSQL's clock when the alerts service's
    transaction for that batch began) and the SSE arrival."""
    offset = time.time() - time.perf_counter()  # perf_counter -> wall clock
    topics = topics_for(settings)
    published = await record_times(settings, topics.incidents)
    classified = await record_times(settings, topics.classifications)
    conn = await asyncpg.connect(settings.database_url)
    try:
        began = {
            r["change_id"]: r["at"]
            for r in await conn.fetch("SELECT change_id, extract(epoch FROM at)::float8 AS at FROM alert_changes")
        }
    finally:
        await conn.close()
    stages: dict[str, list[float]] = {name: [] for name in STAGES}
    for incident_id, due in sent.items():
        if not all(incident_id in m for m in (published, classified, arrived, change_of)):
            continue
        marks = [
            due + offset,
            published[incident_id],
            answered[incident_id] + offset,
            classified[incident_id],
            began[change_of[incident_id]],
            arrived[incident_id] + offset,
        ]
        stages["due -> intake sent the record"].append(marks[1] - marks[0])
        stages["intake sent -> 202"].append(marks[2] - marks[1])
        stages["intake sent -> classifier sent"].append(marks[3] - marks[1])
        stages["classifier sent -> alerts' batch began"].append(marks[4] - marks[3])
        stages["alerts' batch began -> on SSE"].append(marks[5] - marks[4])
    print("stages, from the records' timestamps (ms; Kafka timestamps have 1 ms resolution):")
    print(f"  {'stage':<36}{'p50':>8}{'p90':>8}{'p99':>8}")
    for name, values in stages.items():
        if values:
            values.sort()
            print(f"  {name:<36}" + "".join(f"{pct(values, p) * 1000:>8.1f}" for p in (50, 90, 99)))


async def histogram_means(url: str, names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """name -> (count, mean seconds) of Prometheus histograms on a service's /metrics."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(url + "/metrics")).text
    sums: dict[str, float] = {}
    for line in text.splitlines():
        metric, _, value = line.rpartition(" ")
        metric = metric.split("{")[0]
        if metric.endswith(("_sum", "_count")) and metric.rsplit("_", 1)[0] in names:
            sums[metric] = sums.get(metric, 0.0) + float(value)
    return {
        name: (sums[f"{name}_count"], sums[f"{name}_sum"] / sums[f"{name}_count"])
        for name in names
        if sums.get(f"{name}_count")
    }


async def print_waits(procs: dict[str, ServiceProcess], reports: int) -> None:
    """Mean waits inside intake and the classifier's transactions, from their own histograms
    (also on /metrics in production; the whole run, warm-up included)."""
    steps = ("claim", "publish", "ack", "settle")
    intake = await histogram_means(procs["intake"].url, [f"tnr_intake_{step}_seconds" for step in steps])
    waits = [
        f"{step} {intake[f'tnr_intake_{step}_seconds'][1] * 1000:.1f} ms"
        for step in steps
        if f"tnr_intake_{step}_seconds" in intake
    ]
    print("intake's mean waits per request: " + ", ".join(waits))
    classifier = await histogram_means(procs["classifier"].url, ["tnrwatch_classifier_batch_seconds"])
    if classifier:
        count, mean = classifier["tnrwatch_classifier_batch_seconds"]
        print(f"classifier: {count:.0f} transactions, ~{reports / count:.1f} reports each, {mean * 1000:.1f} ms each")


STAGES = (
    "due -> intake sent the record",
    "intake sent -> 202",
    "intake sent -> classifier sent",
    "classifier sent -> alerts' batch began",
    "alerts' batch began -> on SSE",
)


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def event(source: str, n: int, run: str) -> dict[str, object]:
    return {
        "specversion": "1.0",
        "id": f"{run}-{n}",
        "source": source,
        "type": "org.tnrwatch.incident.reported.v1",
        "subject": f"LAT-{run}-{n}",
        "data": {
            "occurred_on": "2024-06-01",
            "date_precision": "day",
            "location": {"country": "TH", "city": "Bangkok"},
            "target": {"identity": {"name": f"Latency {run} {n}", "birth_date": "1990-01-01"}, "group": "dissident"},
            "acts": [{"type": "kidnapping", "on": "2024-06-01", "actor": "prc_mss", "status": "carried_out"}],
            "outcome": "disappeared",
        },
    }


async def run(rate: float, seconds: float, warmup: float) -> None:
    # Before anything of ours runs: whether other work shared the cores (runs beside other
    # benchmarks gave p99 two to five times those on a quiet machine, docs/alerts.md).
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with ExitStack() as stack:
        infra = start_infra(stack)
        settings = await isolated_settings(
            infra.kafka_bootstrap, infra.database_url, rate_limit_per_minute=1_000_000, log_level="WARNING"
        )
        key = await issue_key(
            settings, partner="bench", sources=["urn:partner:bench"], scopes=["events:write", "alerts:read"]
        )
        logs = Path(tempfile.mkdtemp(prefix="tnr-latency-"))
        procs = {
            name: ServiceProcess(f"services.{name}.main", settings, free_port(), logs / f"{name}.log")
            for name in SERVICES
        }
        try:
            for proc in procs.values():
                proc.start()
            for proc in procs.values():
                await proc.wait_ready(120)
            auth = {"authorization": f"Bearer {key}"}
            arrived: dict[str, float] = {}
            change_of: dict[str, int] = {}  # incident -> the alert change that reached the stream
            connected = asyncio.Event()

            async def listen() -> None:
                with contextlib.suppress(httpx.HTTPError):
                    await read_stream()

            async def read_stream() -> None:
                async with (
                    httpx.AsyncClient(timeout=None) as client,
                    client.stream("GET", procs["alerts"].url + "/v1/alerts/stream", headers=auth) as response,
                ):
                    change_id = 0
                    async for line in response.aiter_lines():
                        if line.startswith("id: "):
                            change_id = int(line[4:])
                        if line.startswith(": connected"):
                            connected.set()
                        if line.startswith("data: "):
                            now = time.perf_counter()
                            body = json.loads(line[6:])
                            if body["kind"] == "raised":
                                for incident_id in body["alert"]["incident_ids"]:
                                    arrived.setdefault(incident_id, now)
                                    change_of.setdefault(incident_id, change_id)

            listener = asyncio.create_task(listen())
            await asyncio.wait_for(connected.wait(), 30)
            sent: dict[str, float] = {}
            answered: dict[str, float] = {}
            failures = 0
            retries = 0
            port = urlsplit(procs["intake"].url).port
            assert port is not None

            def request(n: int, run_id: str) -> bytes:
                body = json.dumps(event("urn:partner:bench", n, run_id)).encode()
                return http_request(port, key, "application/cloudevents+json", body)

            async def worker(queue: asyncio.Queue[tuple[int, str, float] | None]) -> None:
                """One keep-alive connection; each report is timed from when it was due, so
                time it waited for a free connection is counted, not hidden."""
                nonlocal failures, retries
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    while (item := await queue.get()) is not None:
                        n, run_id, due = item
                        for _attempt in range(3):
                            try:
                                writer.write(request(n, run_id))
                                status, body = await _read_response(reader)
                                break
                            except (OSError, asyncio.IncompleteReadError):
                                # The server closed the connection: re-post with the same id
                                # on a new one (intake answers a duplicate if it got it).
                                writer.close()
                                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                                retries += 1
                        else:
                            failures += 1
                            continue
                        if status != 202:
                            failures += 1
                            continue
                        answer = json.loads(body)
                        incident_id = (answer["accepted"] or answer["duplicates"])[0]["incident_id"]
                        sent[incident_id], answered[incident_id] = due, time.perf_counter()
                finally:
                    writer.close()

            async def drive(run_id: str, total: int, rate: float) -> float:
                """At most CONNECTIONS posts in flight, each worker taking the next report when
                it is due. A minimal HTTP/1.1 client (benchmarks.intake_throughput's): with
                httpx, one task per report queued thousands of requests in its connection
                pool, whose bookkeeping (every connection polled on every response) used a whole
                CPU and capped the load at ~45 posts/s, each answered a minute late while intake
                sat idle."""
                queue: asyncio.Queue[tuple[int, str, float] | None] = asyncio.Queue()
                workers = [asyncio.create_task(worker(queue)) for _ in range(CONNECTIONS)]
                t0 = time.perf_counter()
                for n in range(total):
                    due = t0 + n / rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    queue.put_nowait((n, run_id, due))
                for _ in workers:
                    queue.put_nowait(None)
                await asyncio.gather(*workers)
                return time.perf_counter() - t0

            # The same rate first, unmeasured: a steady state, not the broker's JIT compiler and
            # the services' first requests (a fresh broker spends ~2x the CPU per report in its
            # first minute).
            await drive("warmup", max(20, int(rate * warmup)), rate)
            sent.clear()
            await asyncio.sleep(2)
            total = int(rate * seconds)
            cpu = time.process_time()

            def pids() -> dict[str, list[int]]:
                services = {name: [proc.process.pid] for name, proc in procs.items() if proc.process}
                return {**services, **local_servers()}  # PostgreSQL starts a process per session

            used_before = {name: schedstat(ps) for name, ps in pids().items()}
            elapsed = await drive(uuid.uuid4().hex[:6], total, rate)
            client_cpu = (time.process_time() - cpu) / elapsed
            used = {name: schedstat(ps) for name, ps in pids().items()}
            services_cpu = {
                name: (ran - used_before[name][0], waited - used_before[name][1])
                for name, (ran, waited) in used.items()
                if name in used_before
            }
            achieved = total / elapsed
            deadline = time.perf_counter() + 30
            while time.perf_counter() < deadline and any(i not in arrived for i in sent):
                await asyncio.sleep(0.2)
            listener.cancel()
            latencies = sorted((arrived[i] - t) * 1000 for i, t in sent.items() if i in arrived)
            # After intake answered 202: the log, the classifier, the alerts service, SSE.
            downstream = sorted((arrived[i] - answered[i]) * 1000 for i in sent if i in arrived)
            accepted = sorted((answered[i] - t) * 1000 for i, t in sent.items())
            missing = sum(1 for i in sent if i not in arrived)

            print(
                f"\nrate {rate:.0f}/s, achieved {achieved:.1f}/s; {len(sent)} reports, {len(latencies)} alerts, "
                f"{missing} missing, {failures} failed posts ({retries} re-posted after a dropped connection); "
                f"load generator CPU {client_cpu:.0%} of a core; load average before the run: {load}"
            )
            print(f"{'span':<34}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'mean ms':>9}")
            spans = (
                ("POST -> alert on SSE", latencies),
                ("POST -> 202 (intake)", accepted),
                ("202 -> alert on SSE (downstream)", downstream),
            )
            for name, values in spans:
                print(
                    f"{name:<34}{pct(values, 50):>9.1f}{pct(values, 90):>9.1f}{pct(values, 99):>9.1f}"
                    f"{values[-1]:>9.1f}{statistics.fmean(values):>9.1f}"
                )
            print("target: p99 < 250 ms")
            await print_stages(settings, sent, answered, arrived, change_of)
            await print_waits(procs, total)
            print("each process while the reports were posted: CPU per report, share of a core, waiting for a CPU:")
            for name, (ran, waited) in services_cpu.items():
                print(f"  {name:<12}{ran / total * 1000:>7.2f} ms{ran / elapsed:>8.0%}{waited / elapsed:>8.0%}")
            if downstream and downstream[0] < 0:
                print(
                    "a negative '202 -> alert' is real, not a clock error: intake answers 202 only "
                    "after the broker's ack AND the claims' settlement in PostgreSQL, while the "
                    "classifier and alerts already work on the acknowledged record"
                )
        finally:
            for proc in procs.values():
                proc.terminate(20)
            await drop_database(infra.database_url, settings)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=15, help="seconds at the same rate before measuring")
    args = parser.parse_args()
    asyncio.run(run(args.rate, args.seconds, args.warmup))


if __name__ == "__main__":
    main()
