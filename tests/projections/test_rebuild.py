"""`tnrwatch replay projections` rebuilds every read model from the log into a new generation
while the old one keeps serving, then swaps: readers never see a half-built model, and events
that arrive during the rebuild are in the new generation exactly once."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from tests.harness import ROOT, settings_env, wait_for
from tests.projections.conftest import Projections
from tests.projections.logdata import LogWriter

SEEDED = 3000  # incidents, each reported and classified
DURING = 300


async def _status(p: Projections) -> dict[str, Any]:
    response = await p.client.get("/v1/projections/status", headers=p.auth("public"))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _total(p: Projections) -> int:
    response = await p.client.get("/v1/stats", headers=p.auth("ngo_a"))
    assert response.status_code == 200, response.text
    return int(response.json()["total_incidents"])


async def test_rebuild_while_reads_and_writes_continue(projections: Projections, tmp_path: Any) -> None:
    p = projections
    async with LogWriter(p.settings) as log:
        await log.many(SEEDED)

        async def caught_up() -> bool:
            return bool((await _status(p))["events_applied"] == 2 * SEEDED)

        await wait_for(caught_up, timeout=120, what="the seeded events applied")
        before = await _status(p)
        assert before["generation"] == "projections_g1"

        seen: list[tuple[str, int]] = []
        stop = asyncio.Event()

        async def keep_reading() -> None:
            while not stop.is_set():
                total = await _total(p)
                page = await p.client.get("/v1/incidents", params={"limit": 5}, headers=p.auth("ngo_a"))
                assert page.status_code == 200 and len(page.json()["incidents"]) == 5
                seen.append(((await _status(p))["generation"], total))
                await asyncio.sleep(0.02)

        async def keep_writing() -> None:
            for n in range(SEEDED + 1, SEEDED + DURING + 1, 30):
                await log.many(30, start=n)
                await asyncio.sleep(0.05)

        reader = asyncio.create_task(keep_reading())
        writer = asyncio.create_task(keep_writing())
        out = tmp_path / "replay.log"
        with out.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "cli.main",
                "replay",
                "projections",
                cwd=ROOT,
                env={**os.environ, **settings_env(p.settings)},
                stdout=sink,
                stderr=sink,
            )
            assert await asyncio.wait_for(process.wait(), 240) == 0, out.read_text()
        await writer

        async def all_in() -> bool:
            return await _total(p) == SEEDED + DURING

        await wait_for(all_in, timeout=120, what="events written during the rebuild")
        stop.set()
        await reader

    after = await _status(p)
    assert after["generation"] == "projections_g2"
    # Every event of the log is in the new generation exactly once, including those that
    # arrived while it was being built (whichever of the rebuild and the live consumer applied it).
    assert after["events_applied"] == 2 * (SEEDED + DURING)
    text = out.read_text()
    assert "replay projections" in text and "ev/s" in text  # the progress bar with its rate
    assert "projections_g2 is live" in text

    generations = [g for g, _ in seen]
    assert generations[0] == "projections_g1" and generations[-1] == "projections_g2"
    totals = [t for _, t in seen]
    assert min(totals) >= SEEDED, "a reader saw a half-built model"
    assert totals == sorted(totals), "a reader saw the count go back"


async def test_a_second_rebuild_at_the_same_time_is_refused(projections: Projections) -> None:
    import asyncpg
    import pytest

    from services.projections.rebuild import _REBUILD_LOCK, RebuildInProgress, rebuild

    before = await _status(projections)
    holder = await asyncpg.connect(projections.settings.database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", _REBUILD_LOCK)  # as a running rebuild does
        with pytest.raises(RebuildInProgress):
            await rebuild(projections.settings, show_progress=False)
    finally:
        await holder.close()
    after = await _status(projections)
    assert after["generation"] == before["generation"]
    generations = await _generations(projections)
    assert all(status != "building" for status in generations.values())


async def _generations(p: Projections) -> dict[str, str]:
    import asyncpg

    conn = await asyncpg.connect(p.settings.database_url)
    try:
        rows = await conn.fetch("SELECT generation, status FROM projections_generations")
    finally:
        await conn.close()
    return {r["generation"]: r["status"] for r in rows}
