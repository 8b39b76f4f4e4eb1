"""Intake throughput: accepted events per second, acks=all, against the limit of the broker.

    .venv/bin/python -m benchmarks.intake_throughput [--single 6000] [--batches 200] [--workers 2] [--cpus 0]

Starts intake as a real process (one uvicorn worker) on its own database and topics, on the
local stack's broker and PostgreSQL (.run/stack.env), then measures in one run:
- single-event posts (structured mode) from many keep-alive connections, on one worker;
- batches of 100 events (batch mode), on one worker, then (``--workers`` N > 1) again on intake
  restarted with N worker processes sharing the port (TNR_INTAKE_WORKERS);
- a bare aiokafka producer (acks=all, idempotent) sending the same records intake wrote
  (same keys, headers and bytes) to a topic of its own: the limit intake cannot beat.
Targets (issue 3): single posts >= 1,500/s; batches >= half the bare producer's rate.

A second table accounts for the whole machine's CPU in each phase, per event: intake, the
local stack's PostgreSQL (every backend) and broker, the load generator (this process: in the
last phase, the bare producer), anything else, and how many of the cores were busy, idle or
stolen by the hypervisor (/proc/stat). Idle cores in a phase: intake waited rather than
worked (concurrency is the lever); none: CPU per event is. Its last line estimates how many
cores batches need for the target at the CPU an event measured: the bare producer is one
process, which no number of cores makes faster than its own rate per CPU-second, while
intake's workers, PostgreSQL and the broker spread over cores. ``--cpus 0`` runs everything on
one CPU (affinity of this process, intake, the local broker and PostgreSQL; put back after),
to measure how both rates grow from one core to two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from benchmarks.procs import local_servers, pinned, schedstat
from services.intake.main import PRODUCER_TUNING
from shared.kafka import topics_for
from shared.runtime import collect_less
from shared.settings import Settings
from tests.harness import ServiceProcess, drop_database, drop_topics, free_port, isolated_settings, issue_key
from tests.infra import _local_stack

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "incidents.jsonl"
SOURCE = "urn:partner:sample-ngo"


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu(pid: int) -> dict[int, float]:
    """User + system CPU seconds of a process and of each of its live children (Linux /proc):
    what intake's workers spent, whatever else the machine was doing meanwhile."""
    out: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(int(entry.name))
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            out[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def cpu_seconds(pid: int) -> float:
    return sum(process_cpu(pid).values())


def _machine_ticks() -> tuple[int, int, int]:
    """Busy, idle and stolen ticks of all CPUs together (/proc/stat's first line)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq, idle + iowait, steal


class CpuAccount:
    """The whole machine's CPU during one phase: intake (all its processes), PostgreSQL (the
    local stack's postmaster and every backend, those started meanwhile too), the broker,
    this process (the load generator) and the rest (/proc; CPU seconds)."""

    def __init__(self, intake_pid: int, client: bool = True) -> None:
        self.intake_pid, self.client = intake_pid, client  # client False: intake is this process
        self.started = self._read()

    def _read(self) -> dict[str, Any]:
        servers = local_servers()
        pg = {p: schedstat([p])[0] for p in servers.get("postgres", [])}
        intake = process_cpu(self.intake_pid)
        return {"intake": intake, "queued": schedstat(list(intake))[1], "postgres": pg,
                "broker": schedstat(servers["kafka"])[0] if "kafka" in servers else 0.0,
                "client": time.process_time() if self.client else 0.0, "machine": _machine_ticks(),
                "wall": time.perf_counter()}

    def close(self, events: int, what: str) -> tuple[str, list[float], tuple[float, ...]]:
        """(phase, CPU µs an event of intake, PostgreSQL, broker, client, other; busy, idle
        and stolen cores, intake's processes running and waiting, runnable, for a CPU)."""
        a, b = self.started, self._read()
        tick = os.sysconf("SC_CLK_TCK")
        intake = sum(b["intake"][p] - a["intake"].get(p, 0.0) for p in b["intake"])
        pg = sum(b["postgres"][p] - a["postgres"].get(p, 0.0) for p in b["postgres"])
        broker, client = b["broker"] - a["broker"], b["client"] - a["client"]
        busy, idle, steal = ((y - x) / tick for x, y in zip(a["machine"], b["machine"], strict=True))
        wall = b["wall"] - a["wall"]
        other = max(busy - intake - pg - broker - client, 0.0)
        per_event = [v / events * 1e6 for v in (intake, pg, broker, client, other)]
        queued = b["queued"] - a["queued"]  # processes that ended meanwhile are not counted
        return what, per_event, (busy / wall, idle / wall, steal / wall, intake / wall, queued / wall)


ACCOUNTS: list[tuple[str, list[float], tuple[float, ...]]] = []


async def heap_only_share(settings: Settings) -> str:
    """The share of intake_reports' updates (settlements) PostgreSQL made heap-only, whole run."""
    import asyncpg

    conn = await asyncpg.connect(settings.database_url)
    try:
        await asyncio.sleep(0.6)  # backends report their statistics within half a second
        row = await conn.fetchrow("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                  "WHERE relname = 'intake_reports'")
    finally:
        await conn.close()
    if row is None or not row["n_tup_upd"]:
        return "no updates"
    return f"{row['n_tup_hot_upd'] / row['n_tup_upd']:.0%} of {row['n_tup_upd']}"


def events(prefix: str, count: int) -> list[dict[str, Any]]:
    base = json.loads(DATA.read_text().splitlines()[0])["event"]
    out = []
    for i in range(count):
        event = dict(base)
        event["id"] = f"{prefix}-{i}"
        event["subject"] = f"REF-{prefix}-{i}"
        out.append(event)
    return out


def http_request(port: int, key: str, content_type: str, body: bytes) -> bytes:
    return (
        f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return status, await reader.readexactly(length)


LATENCIES: list[float] = []  # of every request of the phase being driven
CLIENT_CPU: list[float] = []  # share of a CPU the load generator itself used, per phase


def latency_note() -> str:
    """Median and slowest answer of the phase (a phase slow in wall time but not in CPU time
    waited for the broker or PostgreSQL, shared with everybody's tests on this machine)."""
    ordered = sorted(LATENCIES)
    LATENCIES.clear()
    if not ordered:
        return ""
    client = f", client {CLIENT_CPU[-1]:.0%} CPU" if CLIENT_CPU else ""
    return f"p50 {ordered[len(ordered) // 2] * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms{client}"


def _metric_sums(port: int) -> dict[str, float]:
    """Sums and counts of intake's claim and publish histograms, from /metrics."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(("tnr_intake_claim_seconds_", "tnr_intake_publish_seconds_",
                            "tnr_intake_ack_seconds_", "tnr_intake_settle_seconds_")) and \
                name.endswith(("_sum", "_count")):
            out[name] = float(value)
    return out


def waits_note(before: dict[str, float], after: dict[str, float]) -> str:
    """Mean time a request spent claiming (PostgreSQL) and publishing (the broker's ack, then
    the settlement in PostgreSQL)."""
    notes = []
    for what, metric in (("claim", "tnr_intake_claim_seconds"), ("publish", "tnr_intake_publish_seconds"),
                         ("of which broker ack", "tnr_intake_ack_seconds"),
                         ("settle", "tnr_intake_settle_seconds")):
        count = after.get(metric + "_count", 0) - before.get(metric + "_count", 0)
        total = after.get(metric + "_sum", 0) - before.get(metric + "_sum", 0)
        if count:
            notes.append(f"{what} {total / count * 1000:.0f} ms")
    return ", ".join(notes)


async def drive(port: int, requests: list[bytes], connections: int) -> tuple[float, dict[int, int], int]:
    """Send every request over ``connections`` keep-alive connections (a minimal HTTP/1.1
    client: the load generator must cost far less than the server it measures)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    statuses: dict[int, int] = {}
    accepted = 0

    async def worker() -> None:
        nonlocal accepted
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                request = queue.get_nowait()
                sent = time.perf_counter()
                writer.write(request)
                status, body = await _read_response(reader)
                LATENCIES.append(time.perf_counter() - sent)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 202:
                    accepted += len(json.loads(body)["accepted"])
        finally:
            writer.close()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    CLIENT_CPU.append((time.process_time() - cpu) / elapsed)
    return elapsed, statuses, accepted


class Profiler:
    """``--profile DIR``: py-spy samples the worker during each phase (collapsed stacks, one
    file per phase; read them with ``python -m benchmarks.intake_profile DIR/<phase>.txt``).
    Sampling runs in py-spy's own process, from outside the worker."""

    def __init__(self, out: Path | None, pid: int) -> None:
        self.out, self.pid = out, pid
        self.running: subprocess.Popen[bytes] | None = None

    def start(self, phase: str) -> None:
        if self.out is None:
            return
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.out.mkdir(parents=True, exist_ok=True)
        self.running = subprocess.Popen([spy, "record", "-p", str(self.pid), "--subprocesses", "-f", "raw", "-r", "200",
                                         "-o", str(self.out / f"{phase}.txt")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attached before the load starts

    def stop(self) -> None:
        if self.running is not None:
            self.running.send_signal(2)  # SIGINT: py-spy writes its file and exits
            self.running.wait(30)
            self.running = None


async def written_records(settings: Settings) -> list[Any]:
    topic = topics_for(settings).incidents
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        records: list[Any] = []
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def bare_producer_rate(settings: Settings, records: list[Any]) -> tuple[float, float]:
    topic = f"{settings.topic_prefix}.bench-raw"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, settings.topic_partitions, settings.topic_replication)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True,
                                **PRODUCER_TUNING)  # the same batching as intake's producer
    await producer.start()
    try:
        await (await producer.send(topic, b"warm-up"))
        # The collector as intake's workers have it (shared.runtime.collect_less): what this
        # process holds (the records kept for this comparison) frozen out of its reach. A bare
        # producer holds none of them; traversing them in each full collection cut its rate by
        # a quarter at --batches 1000 (45-47k against ~60k events/s frozen).
        collect_less()
        started, cpu = time.perf_counter(), time.process_time()
        account = CpuAccount(os.getpid(), client=False)  # the producer: this process
        futures = [await producer.send(topic, r.value, key=r.key, headers=list(r.headers)) for r in records]
        await asyncio.gather(*futures)
        ACCOUNTS.append(account.close(len(records), "bare aiokafka producer"))
        return len(records) / (time.perf_counter() - started), len(records) / (time.process_time() - cpu)
    finally:
        await producer.stop()


async def batch_phase(port: int, key: str, pid: int, prefix: str, batches: int, profiler: Profiler,
                      workers: str, connections: int) -> tuple[str, int, float, float, str]:
    batch_events = events(prefix, batches * 100)
    bodies = [json.dumps(batch_events[i:i + 100]).encode() for i in range(0, len(batch_events), 100)]
    requests = [http_request(port, key, "application/cloudevents-batch+json", b) for b in bodies]
    profiler.start(prefix)
    sums = _metric_sums(port)
    before = process_cpu(pid)
    account = CpuAccount(pid)
    elapsed, statuses, accepted = await drive(port, requests, connections)
    ACCOUNTS.append(account.close(batches * 100, f"batches of 100, {workers}"))
    profiler.stop()
    waits = waits_note(sums, _metric_sums(port))
    assert statuses == {202: batches} and accepted == batches * 100, statuses
    after = process_cpu(pid)
    spent = {p: after[p] - before.get(p, 0.0) for p in after}
    cpu = sum(spent.values())
    if workers != "1 worker":
        # Each worker has its own /metrics (a scrape reaches any one of them), so no waits;
        # instead how the kernel spread the connections: the CPU seconds of each process.
        shares = sorted((round(v, 1) for v in spent.values() if v >= 0.05), reverse=True)
        waits = f"CPU s by process {shares}"
    return (f"batches of 100, {workers}", accepted, accepted / elapsed, accepted / cpu,
            f"{connections} connections, {latency_note()}; {waits}")


BATCH_CONNECTIONS = 8  # per worker: the kernel spreads connections over the workers' sockets


def cpu_list(text: str) -> set[int]:
    """``0``, ``0-1``, ``0,2``: the CPUs, as taskset's list."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


async def main(single: int, batches: int, connections: int, profile: Path | None = None,
               workers: int = 2) -> None:
    infra = _local_stack()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    settings = await isolated_settings(infra.kafka_bootstrap, infra.database_url,
                                       rate_limit_per_minute=100_000_000, log_level="WARNING")
    key = await issue_key(settings, partner="sample-ngo", sources=[SOURCE], scopes=["events:write"])
    log_path = Path(tempfile.mkdtemp()) / "intake.log"
    process = ServiceProcess("services.intake.main", settings, free_port(), log_path)
    rows: list[tuple[str, int, float, float, str]] = []
    try:
        process.start()
        await process.wait_ready()
        port = process.port
        warm = [http_request(port, key, "application/cloudevents+json", json.dumps(e).encode())
                for e in events("warm", 200)]
        await drive(port, warm, 16)
        latency_note()

        singles = [http_request(port, key, "application/cloudevents+json", json.dumps(e).encode())
                   for e in events("single", single)]
        assert process.process is not None
        pid = process.process.pid
        profiler = Profiler(profile, pid)
        profiler.start("single")
        sums = _metric_sums(port)
        cpu = cpu_seconds(pid)
        account = CpuAccount(pid)
        elapsed, statuses, accepted = await drive(port, singles, connections)
        ACCOUNTS.append(account.close(single, "single posts (structured)"))
        profiler.stop()
        waits = waits_note(sums, _metric_sums(port))
        assert statuses == {202: single} and accepted == single, statuses
        cpu = cpu_seconds(pid) - cpu
        rows.append(("single posts (structured)", accepted, accepted / elapsed, accepted / cpu,
                     f"{connections} connections, {latency_note()}; {waits}"))

        rows.append(await batch_phase(port, key, pid, "batch", batches, profiler, "1 worker", BATCH_CONNECTIONS))

        dupes = [http_request(port, key, "application/cloudevents+json", json.dumps(e).encode())
                 for e in events("single", min(single, 3000))]
        cpu = cpu_seconds(pid)
        elapsed, statuses, _ = await drive(port, dupes, connections)
        assert statuses == {202: len(dupes)}, statuses
        cpu = cpu_seconds(pid) - cpu
        rows.append(("re-posts (duplicates)", len(dupes), len(dupes) / elapsed, len(dupes) / cpu,
                     f"{connections} connections, {latency_note()}"))
    finally:
        process.terminate()
    if workers > 1:
        # The same intake (database, topics, keys) restarted with several worker processes.
        many = ServiceProcess("services.intake.main", settings.model_copy(update={"intake_workers": workers}),
                              free_port(), log_path)
        try:
            many.start()
            await many.wait_ready()
            await drive(many.port, [http_request(many.port, key, "application/cloudevents+json",
                                                 json.dumps(e).encode()) for e in events("warm2", 400)], 16)
            latency_note()
            assert many.process is not None
            rows.append(await batch_phase(many.port, key, many.process.pid, "batchw", batches,
                                          Profiler(profile, many.process.pid), f"{workers} workers",
                                          BATCH_CONNECTIONS * workers))
        finally:
            many.terminate()
    records = [r for r in await written_records(settings) if b"batch-" in r.value]
    raw, raw_cpu = await bare_producer_rate(settings, records)
    rows.append(("bare aiokafka producer, same bytes", len(records), raw, raw_cpu, "acks=all, idempotent"))
    hot = await heap_only_share(settings)
    await drop_database(infra.database_url, settings)
    await drop_topics(settings)

    cores = len(os.sched_getaffinity(0))
    print(f"\nintake throughput ({cores} of the machine's {os.cpu_count()} CPUs, shared; "
          f"broker {settings.kafka_bootstrap})")
    print(f"load average before the run: {load}")
    print(f"{'what':<36} {'events':>8} {'events/s':>10} {'per CPU-s':>10}  notes")
    print("-" * 90)
    for what, count, rate, per_cpu, notes in rows:
        print(f"{what:<36} {count:>8} {rate:>10,.0f} {per_cpu:>10,.0f}  {notes}")
    single_rate = rows[0][2]
    batch_rate = max(r[2] for r in rows if r[0].startswith("batches"))
    print("-" * 90)
    print("per CPU-s: events per second of intake's own CPU time, all its processes (the capacity")
    print("           of one worker on a core of its own; events/s is wall time on this shared machine)")
    print(f"single posts (1 worker) vs target 1,500/s: {'MET' if single_rate >= 1500 else 'NOT MET'}")
    print(f"best batches vs half the bare producer ({raw / 2:,.0f}/s): "
          f"{'MET' if batch_rate >= raw / 2 else 'NOT MET'} ({batch_rate / raw:.0%} of the bare producer)")
    print(f"\nthe machine's CPU in each phase, µs an event; cores: the {os.cpu_count()} busy / idle / stolen, "
          "intake running / waiting for a CPU")
    print(f"{'phase':<36} {'intake':>7} {'postgres':>8} {'broker':>7} {'client':>7} {'other':>6} {'all':>7}  cores")
    print("-" * 90)
    for what, (intake, pg, broker, client, other), (busy, idle, steal, ran, queued) in ACCOUNTS:
        print(f"{what:<36} {intake:>7,.0f} {pg:>8,.0f} {broker:>7,.0f} {client:>7,.0f} {other:>6,.0f} "
              f"{intake + pg + broker + client + other:>7,.0f}  {busy:.2f} / {idle:.2f} / {steal:.2f}, "
              f"{ran:.2f} / {queued:.2f}")
    print("(bare producer: 'intake' is the producer, this process; 'client' is then 0. CPU per event of")
    print(" each process = the CPU rate it needs: all / 1e6 events per CPU-second of the machine)")
    print(f"settlements that were heap-only updates of intake_reports (no index entries): {hot}")
    best = max((r for r in rows if r[0].startswith("batches")), key=lambda r: r[2])[0]
    machine = next(sum(cpu) for what, cpu, _ in ACCOUNTS if what == best)
    print(cores_needed(machine, raw_cpu, cores))


def cores_needed(machine_us: float, bare_per_cpu_s: float, cores: int) -> str:
    """How many cores batches would need to reach half the bare producer, if the whole
    machine's CPU an event stays as measured (intake's workers, PostgreSQL's backends and the
    broker spread over cores; measured 1 -> 2 cores, docs/intake.md). The bare producer is
    one process: however many cores, it cannot pass its own rate per CPU-second."""
    half = bare_per_cpu_s / 2
    return (f"estimate: half the bare producer's ceiling (its process on a core of its own: "
            f"{half:,.0f}/s) at the best batches' {machine_us:,.0f} µs of machine CPU an event "
            f"needs {half * machine_us / 1e6:.1f} cores (this run: {cores})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=6000)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the worker, stacks into this folder")
    parser.add_argument("--workers", type=int, default=2,
                        help="batches again on this many intake worker processes (1: skip)")
    parser.add_argument("--cpus", type=cpu_list, default=None,
                        help="run everything (this process, intake, the local broker and PostgreSQL) "
                             "on these CPUs only, e.g. 0 or 0-1: the same run on a smaller machine")
    args = parser.parse_args()
    with pinned(args.cpus):
        asyncio.run(main(args.single, args.batches, args.connections, args.profile, args.workers))
