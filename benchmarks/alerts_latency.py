"""End-to-end alert latency: from `POST /v1/events` to the alert on the SSE stream.

    .venv/bin/python -m benchmarks.alerts_latency [--rate 200] [--seconds 20]

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
from contextlib import ExitStack
from pathlib import Path

import httpx

from tests.harness import ServiceProcess, drop_database, free_port, isolated_settings, issue_key
from tests.infra import start_infra

SERVICES = ["intake", "classifier", "alerts", "projections"]


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


async def run(rate: float, seconds: float) -> None:
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
            connected = asyncio.Event()

            async def listen() -> None:
                with contextlib.suppress(httpx.HTTPError):
                    await read_stream()

            async def read_stream() -> None:
                async with (
                    httpx.AsyncClient(timeout=None) as client,
                    client.stream("GET", procs["alerts"].url + "/v1/alerts/stream", headers=auth) as response,
                ):
                    async for line in response.aiter_lines():
                        if line.startswith(": connected"):
                            connected.set()
                        if line.startswith("data: "):
                            now = time.perf_counter()
                            body = json.loads(line[6:])
                            if body["kind"] == "raised":
                                for incident_id in body["alert"]["incident_ids"]:
                                    arrived.setdefault(incident_id, now)

            listener = asyncio.create_task(listen())
            await asyncio.wait_for(connected.wait(), 30)
            sent: dict[str, float] = {}
            answered: dict[str, float] = {}
            failures = 0
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            async with httpx.AsyncClient(base_url=procs["intake"].url, timeout=30, limits=limits) as intake:

                async def post(n: int, run_id: str) -> None:
                    nonlocal failures
                    started = time.perf_counter()
                    r = await intake.post(
                        "/v1/events",
                        json=event("urn:partner:bench", n, run_id),
                        headers={**auth, "content-type": "application/cloudevents+json"},
                    )
                    if r.status_code != 202:
                        failures += 1
                        return
                    incident_id = r.json()["accepted"][0]["incident_id"]
                    sent[incident_id], answered[incident_id] = started, time.perf_counter()

                await asyncio.gather(*(post(n, "warmup") for n in range(20)))
                sent.clear()
                await asyncio.sleep(2)
                total = int(rate * seconds)
                run_id = uuid.uuid4().hex[:6]
                t0 = time.perf_counter()
                tasks = []
                for n in range(total):
                    delay = t0 + n / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(post(n, run_id)))
                await asyncio.gather(*tasks)
                achieved = total / (time.perf_counter() - t0)
            deadline = time.perf_counter() + 30
            while time.perf_counter() < deadline and any(i not in arrived for i in sent):
                await asyncio.sleep(0.2)
            listener.cancel()
            latencies = sorted((arrived[i] - t) * 1000 for i, t in sent.items() if i in arrived)
            # After intake answered 202: the log, the classifier, the alerts service, SSE.
            downstream = sorted((arrived[i] - answered[i]) * 1000 for i in sent if i in arrived)
            accepted = sorted((answered[i] - t) * 1000 for i, t in sent.items())
            missing = sum(1 for i in sent if i not in arrived)

            def pct(values: list[float], p: float) -> float:
                return values[min(len(values) - 1, int(p / 100 * len(values)))]

            print(
                f"\nrate {rate:.0f}/s, achieved {achieved:.1f}/s; {len(sent)} reports, {len(latencies)} alerts, "
                f"{missing} missing, {failures} failed posts"
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
        finally:
            for proc in procs.values():
                proc.terminate(20)
            await drop_database(infra.database_url, settings)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    asyncio.run(run(args.rate, args.seconds))


if __name__ == "__main__":
    main()
