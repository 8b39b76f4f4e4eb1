"""kill -9 in the middle of a batch: on restart every event is applied exactly once (the read
models' changes and the consumer offsets commit in one transaction)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import httpx

from shared.settings import Settings
from tests.harness import ServiceProcess, free_port, issue_key, wait_for
from tests.projections.logdata import LogWriter

INCIDENTS = 4000  # each reported and classified


async def _status(url: str, key: str) -> dict[str, int] | None:
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(f"{url}/v1/projections/status", headers={"authorization": f"Bearer {key}"})
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


async def _writing(settings: Settings) -> bool:
    """The service is inside a write transaction right now."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        busy = await conn.fetchval(
            """SELECT count(*) FROM pg_stat_activity
                WHERE datname = current_database() AND pid <> pg_backend_pid()
                  AND state IN ('active', 'idle in transaction')
                  AND (query ILIKE '%projections_stage%' OR query ILIKE '%consumer_offsets%'
                       OR query ILIKE '%.offsets%' OR query ILIKE '%.progress%')"""
        )
    finally:
        await conn.close()
    return bool(busy)


async def _applied_in_database(settings: Settings) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        generation = await conn.fetchval("SELECT generation FROM projections_state")
        return int(await conn.fetchval(f'SELECT events_applied FROM "{generation}".progress'))
    finally:
        await conn.close()


async def test_killed_mid_batch_applies_every_event_exactly_once(fresh_settings: Settings, tmp_path: Path) -> None:
    async with LogWriter(fresh_settings) as log:
        await log.many(INCIDENTS)
    key = await issue_key(fresh_settings, partner="ngo-a", sources=[], scopes=["incidents:read"])
    service = ServiceProcess("services.projections.main", fresh_settings, free_port(), tmp_path / "projections.log")
    at_kill = []
    try:
        for _ in range(2):
            service.start()
            await service.wait_ready()

            async def mid_batch() -> bool:
                status = await _status(service.url, key)
                return bool(status and status["events_applied"] > 0 and await _writing(fresh_settings))

            await wait_for(mid_batch, timeout=120, interval=0.01, what="a write transaction in flight")
            service.kill()
            at_kill.append(await _applied_in_database(fresh_settings))
        assert 0 < at_kill[0] < 2 * INCIDENTS, at_kill  # killed part-way through the log

        service.start()
        await service.wait_ready()

        async def done() -> dict[str, int] | None:
            status = await _status(service.url, key)
            return status if status and status["events_applied"] >= 2 * INCIDENTS else None

        final = await wait_for(done, timeout=180, what="the whole log applied")
        assert final["events_applied"] == 2 * INCIDENTS  # not one event twice
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            stats = (
                await client.get("/v1/stats", params={"by": "country"}, headers={"authorization": f"Bearer {key}"})
            ).json()
        assert stats["total_incidents"] == INCIDENTS  # not one event lost
        assert {c["country"]: c["incidents"] for c in stats["cells"]} == {
            country: INCIDENTS // 4 for country in ("TH", "KG", "TR", "AE")
        }
    finally:
        service.terminate()
