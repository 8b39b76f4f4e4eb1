"""Several intake worker processes on one port (TNR_INTAKE_WORKERS): the claims in PostgreSQL
keep a report written once however many workers receive it at the same time."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx

from shared.serialization import from_record
from tests.harness import ServiceProcess, drop_database, free_port
from tests.infra import Infra
from tests.intake.conftest import BATCH, auth, body, log_records, make_keys, make_settings, report


def workers(pid: int) -> list[int]:
    """uvicorn's worker processes under ``pid`` (spawned; not multiprocessing's helpers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


async def test_concurrent_posts_to_several_workers_write_each_report_once(infra: Infra, tmp_path: Path) -> None:
    settings = await make_settings(infra, intake_workers=2)
    keys = await make_keys(settings)
    intake = ServiceProcess("services.intake.main", settings, free_port(), tmp_path / "intake.log")
    try:
        intake.start()
        await intake.wait_ready()
        batch = body([report(f"workers-{i}") for i in range(20)])
        # Eight connections of their own (limits=1 per client): the kernel spreads them over
        # both workers, which all claim the same twenty reports at once.
        clients = [httpx.AsyncClient(base_url=intake.url, limits=httpx.Limits(max_connections=1), timeout=30)
                   for _ in range(8)]
        try:
            answers = await asyncio.gather(*(
                c.post("/v1/events", content=batch, headers=auth(keys.partner, BATCH)) for c in clients))
        finally:
            for c in clients:
                await c.aclose()
        assert intake.process is not None
        assert len(workers(intake.process.pid)) == 2
        assert [a.status_code for a in answers] == [202] * 8, [a.text for a in answers]
        accepted = Counter(e["id"] for a in answers for e in a.json()["accepted"])
        duplicates = Counter(e["id"] for a in answers for e in a.json()["duplicates"])
        # Every report accepted by exactly one request, a duplicate for the seven others.
        assert accepted == Counter({f"workers-{i}": 1 for i in range(20)})
        assert duplicates == Counter({f"workers-{i}": 7 for i in range(20)})
        copies = Counter(from_record(r.value, r.headers).data["report_id"] for r in await log_records(settings))
        assert copies == Counter({f"workers-{i}": 1 for i in range(20)})
    finally:
        intake.terminate()
        await drop_database(infra.database_url, settings)
