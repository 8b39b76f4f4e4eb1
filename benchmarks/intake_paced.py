"""Intake's CPU per report at a low, steady rate: what the end-to-end latency benchmark
(``benchmarks.alerts_latency``) asks of intake, measured on intake alone.

    .venv/bin/python -m benchmarks.intake_paced [--rate 200] [--seconds 20] [--warmup 5] [--profile DIR]

Starts intake as a real process (one worker) on its own database and topics, then posts
single reports at ``--rate`` per second, each due at its time (at most 64 in flight, so few
are), each a new target with an identity (as alerts_latency's: a new data key, a sealed
identity, a claim, a settlement and a produce request per report). Prints intake's CPU
(all its threads, from /proc) per report, the answers' p50/p99 and intake's mean waits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.intake_throughput import Profiler, _metric_sums, _read_response, cpu_seconds, http_request, waits_note
from benchmarks.procs import local_servers, schedstat
from tests.harness import ServiceProcess, drop_database, free_port, isolated_settings, issue_key
from tests.infra import _local_stack

SOURCE = "urn:partner:bench"
CONNECTIONS = 64


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of the process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def context_switches(pid: int) -> int:
    """Voluntary context switches of all the process's threads: each is a wait for I/O."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                total += int(line.split()[1])
    return total


def event(n: int, run: str) -> dict[str, object]:
    """alerts_latency's report: a kidnapping of a new, named target."""
    return {
        "specversion": "1.0", "id": f"{run}-{n}", "source": SOURCE,
        "type": "org.tnrwatch.incident.reported.v1", "subject": f"LAT-{run}-{n}",
        "data": {
            "occurred_on": "2024-06-01", "date_precision": "day",
            "location": {"country": "TH", "city": "Bangkok"},
            "target": {"identity": {"name": f"Latency {run} {n}", "birth_date": "1990-01-01"}, "group": "dissident"},
            "acts": [{"type": "kidnapping", "on": "2024-06-01", "actor": "prc_mss", "status": "carried_out"}],
            "outcome": "disappeared",
        },
    }


async def paced(port: int, key: str, rate: float, total: int) -> tuple[float, list[float], dict[int, int]]:
    """Post ``total`` reports, each when due; (elapsed, latencies from due, statuses)."""
    run = uuid.uuid4().hex[:6]
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (item := await queue.get()) is not None:
                n, due = item
                body = json.dumps(event(n, run)).encode()
                writer.write(http_request(port, key, "application/cloudevents+json", body))
                status, _ = await _read_response(reader)
                latencies.append(time.perf_counter() - due)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(CONNECTIONS)]
    t0 = time.perf_counter()
    for n in range(total):
        delay = t0 + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((n, t0 + n / rate))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return time.perf_counter() - t0, sorted(latencies), statuses


async def main(rate: float, seconds: float, warmup: float, profile: Path | None) -> None:
    infra = _local_stack()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    settings = await isolated_settings(infra.kafka_bootstrap, infra.database_url,
                                       rate_limit_per_minute=100_000_000, log_level="WARNING")
    key = await issue_key(settings, partner="bench", sources=[SOURCE], scopes=["events:write"])
    process = ServiceProcess("services.intake.main", settings, free_port(),
                             Path(tempfile.mkdtemp()) / "intake.log")
    try:
        process.start()
        await process.wait_ready()
        assert process.process is not None
        pid = process.process.pid
        await paced(process.port, key, rate, int(rate * warmup))
        profiler = Profiler(profile, pid)
        profiler.start("paced")
        sums = _metric_sums(process.port)
        servers = local_servers()  # the local stack's broker and PostgreSQL (their CPU for intake's work)
        servers_before = {name: schedstat(pids)[0] for name, pids in servers.items()}
        cpu, split, switches = cpu_seconds(pid), cpu_split(pid), context_switches(pid)
        total = int(rate * seconds)
        elapsed, latencies, statuses = await paced(process.port, key, rate, total)
        cpu = cpu_seconds(pid) - cpu
        user, system = (b - a for a, b in zip(split, cpu_split(pid), strict=True))
        switches = context_switches(pid) - switches
        servers_cpu = {name: schedstat(servers[name])[0] - ran for name, ran in servers_before.items()}
        profiler.stop()
        waits = waits_note(sums, _metric_sums(process.port))
    finally:
        process.terminate()
        await drop_database(infra.database_url, settings)
    assert statuses == {202: total}, statuses
    print(f"\nintake at a steady {rate:.0f} reports/s (new target each), load average before: {load}")
    print(f"reports {total} in {elapsed:.1f} s; intake CPU {cpu:.2f} s = {cpu / total * 1e6:,.0f} µs a report "
          f"({cpu / elapsed:.0%} of a core; user {user / total * 1e6:,.0f} µs, system {system / total * 1e6:,.0f} µs, "
          f"{switches / total:.1f} waits for I/O a report)")
    print(f"answer from due: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms; {waits}")
    if servers_cpu:
        print("meanwhile (all their work, intake's most of it): " + ", ".join(
            f"{name} {ran / total * 1e6:,.0f} µs a report" for name, ran in servers_cpu.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the worker, stacks into this folder")
    args = parser.parse_args()
    asyncio.run(main(args.rate, args.seconds, args.warmup, args.profile))
