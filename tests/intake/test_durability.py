"""Nothing lost: duplicates across restarts, 503 when the log cannot take a write (and the
recovery afterwards without a restart), a killed intake's claims taken over."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
from aiokafka.admin import AIOKafkaAdminClient

from services.intake.main import create_app
from shared.kafka import ensure_topics, topics_for
from shared.serialization import from_record
from shared.settings import Settings
from tests.harness import ServiceProcess, drop_database, free_port, in_process, wait_for
from tests.infra import Infra
from tests.intake.conftest import BATCH, auth, body, log_records, make_keys, make_settings, report


async def copies_on_log(settings: Settings, report_id: str) -> int:
    count = 0
    for record in await log_records(settings):
        event = from_record(record.value, record.headers)
        if isinstance(event.data, dict) and event.data.get("report_id") == report_id:
            count += 1
    return count


async def take_the_log_away(settings: Settings) -> None:
    """Delete this test's incidents topic: intake's writes find no partition to go to, as
    when the broker is gone. The shared broker keeps running for everyone else."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        topic = topics_for(settings).incidents
        await admin.delete_topics([topic])

        async def gone() -> bool:
            return topic not in await admin.list_topics()

        await wait_for(gone, what="the topic to be deleted")
    finally:
        await admin.close()


async def test_duplicates_are_detected_across_a_restart(infra: Infra) -> None:
    settings = await make_settings(infra)
    keys = await make_keys(settings)
    try:
        event = body(report("restart-1"))
        async with in_process(create_app(settings)) as first:
            r = await first.post("/v1/events", content=event, headers=auth(keys.partner))
            assert r.status_code == 202 and r.json()["accepted"]
        async with in_process(create_app(settings)) as second:
            r = await second.post("/v1/events", content=event, headers=auth(keys.partner))
            assert r.status_code == 202
            assert r.json()["accepted"] == [] and r.json()["duplicates"][0]["id"] == "restart-1"
        assert await copies_on_log(settings, "restart-1") == 1
    finally:
        await drop_database(infra.database_url, settings)


async def test_log_unavailable_is_a_prompt_503_and_intake_recovers_by_itself(infra: Infra) -> None:
    settings = await make_settings(infra, kafka_request_timeout_ms=2000)
    keys = await make_keys(settings)
    try:
        async with in_process(create_app(settings)) as intake:
            assert (await intake.post("/v1/events", content=body(report("down-0")),
                                      headers=auth(keys.partner))).status_code == 202
            await take_the_log_away(settings)
            attempt = 0

            async def refused() -> httpx.Response | None:
                # The producer notices the missing partitions at its next metadata refresh.
                nonlocal attempt
                attempt += 1
                r = await intake.post("/v1/events", content=body(report(f"down-p{attempt}")),
                                      headers=auth(keys.partner))
                return r if r.status_code != 202 else None

            r = await wait_for(refused, timeout=60, what="intake to refuse writes")
            problem_doc = r.json()
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert int(r.headers["retry-after"]) >= 1
            assert "NOT accepted" in problem_doc["detail"]
            r = await intake.post("/v1/events", content=body(report("down-1")), headers=auth(keys.partner))
            assert r.status_code == 503, r.text
            batch = [report(f"down-b{i}") for i in range(12)]  # 12: written as record batches
            r = await intake.post("/v1/events", content=body(batch), headers=auth(keys.partner, BATCH))
            assert r.status_code == 503
            assert (await intake.get("/readyz")).status_code in (200, 503)  # answers, never hangs

            await ensure_topics(settings)  # the log is back

            async def settled() -> httpx.Response | None:
                r = await intake.post("/v1/events", content=body(report("down-1")), headers=auth(keys.partner))
                return r if r.status_code == 202 else None

            await wait_for(settled, timeout=90, interval=0.5, what="intake to take writes again")
            r = await intake.post("/v1/events", content=body(report("down-2")), headers=auth(keys.partner))
            assert r.status_code == 202 and r.json()["accepted"][0]["id"] == "down-2"
            r = await intake.post("/v1/events", content=body(batch), headers=auth(keys.partner, BATCH))
            assert r.status_code == 202
            assert len(r.json()["accepted"]) + len(r.json()["duplicates"]) == 12
        # Every event refused with 503 is on the log exactly once after the partner's retry.
        for report_id in ["down-1", "down-2", *(f"down-b{i}" for i in range(12))]:
            assert await copies_on_log(settings, report_id) == 1, report_id
    finally:
        await drop_database(infra.database_url, settings)


async def test_claims_of_a_killed_intake_are_taken_over(infra: Infra, tmp_path: Path) -> None:
    """kill -9 between claim and write: the claim stays 'sending'; a re-post after the stale
    period writes the event (here the stale period is forced by ageing the claim)."""
    settings = await make_settings(infra)
    keys = await make_keys(settings)
    process = ServiceProcess("services.intake.main", settings, free_port(), tmp_path / "intake.log")
    try:
        process.start()
        await process.wait_ready()
        async with httpx.AsyncClient(base_url=process.url, timeout=30) as client:
            r = await client.post("/v1/events", content=body(report("kill-0")), headers=auth(keys.partner))
            assert r.status_code == 202
        process.kill()
        # What a kill between claim and write leaves behind: a 'sending' claim, nothing on the log.
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute(
                """INSERT INTO intake_reports (source, report_id, incident_id, target_ref, event_type, partner,
                                               status, claimed_by, claimed_at)
                   VALUES ('urn:partner:sample-ngo', 'kill-1', 'i', 'tr_x', 'org.tnrwatch.incident.reported.v1',
                           'sample-ngo', 'sending', 'intake-dead', now() - interval '1 hour')""")
        finally:
            await conn.close()
        async with in_process(create_app(settings)) as intake:
            r = await intake.post("/v1/events", content=body(report("kill-1")), headers=auth(keys.partner))
            assert r.status_code == 202, r.text
            assert r.json()["accepted"][0]["id"] == "kill-1"
            r = await intake.post("/v1/events", content=body(report("kill-0")), headers=auth(keys.partner))
            assert r.json()["duplicates"][0]["id"] == "kill-0"
        assert await copies_on_log(settings, "kill-1") == 1
        assert "Person Alpha" not in process.log_path.read_text()
    finally:
        process.kill()
        await drop_database(infra.database_url, settings)


async def test_kill_9_under_load_loses_no_accepted_event(infra: Infra, tmp_path: Path) -> None:
    """Posts stream in from several clients; intake is killed with SIGKILL mid-stream. Every
    event answered 202 is on the log; after a restart every event the clients re-post is
    accepted or a duplicate, and each is on the log once (twice only with the same event id,
    for a write cut between the broker's acknowledgement and the claim's settlement)."""
    settings = await make_settings(infra)
    keys = await make_keys(settings)
    process = ServiceProcess("services.intake.main", settings, free_port(), tmp_path / "intake.log")
    accepted: set[str] = set()
    attempted: list[str] = []
    try:
        process.start()
        await process.wait_ready()

        async def client(worker: int) -> None:
            async with httpx.AsyncClient(base_url=process.url, timeout=10) as http:
                for i in range(10_000):
                    event_id = f"k9-{worker}-{i}"
                    attempted.append(event_id)
                    try:
                        r = await http.post("/v1/events", content=body(report(event_id)),
                                            headers=auth(keys.partner))
                    except httpx.HTTPError:
                        return  # intake is gone
                    if r.status_code == 202:
                        accepted.add(event_id)

        clients = [asyncio.create_task(client(w)) for w in range(6)]

        async def enough() -> bool:
            return len(accepted) >= 120

        await wait_for(enough, timeout=60, what="some accepted posts")
        process.kill()
        await asyncio.gather(*clients)
    finally:
        process.kill()
    try:
        on_log = await events_on_log(settings)
        assert accepted <= set(on_log), sorted(accepted - set(on_log))[:5]
        # A restart much later: claims the killed intake left 'sending' are stale by then.
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute("UPDATE intake_reports SET claimed_at = now() - interval '1 hour' "
                               "WHERE status = 'sending'")
        finally:
            await conn.close()
        async with in_process(create_app(settings)) as intake:
            for event_id in attempted:
                r = await intake.post("/v1/events", content=body(report(event_id)), headers=auth(keys.partner))
                assert r.status_code == 202, r.text
                if event_id in accepted:
                    assert r.json()["duplicates"], event_id  # accepted before: never written again
        on_log = await events_on_log(settings)
        for event_id in attempted:
            copies = on_log.get(event_id, [])
            assert copies, event_id
            assert len(set(copies)) == 1, (event_id, copies)  # any second copy has the same event id
            if event_id in accepted:
                assert len(copies) == 1, (event_id, copies)
    finally:
        await drop_database(infra.database_url, settings)


async def events_on_log(settings: Settings) -> dict[str, list[str]]:
    """Report id -> the event ids of its copies on the log."""
    out: dict[str, list[str]] = {}
    for record in await log_records(settings):
        event = from_record(record.value, record.headers)
        if isinstance(event.data, dict) and "report_id" in event.data:
            out.setdefault(event.data["report_id"], []).append(event.id)
    return out
