"""Kill -9 the alerts service in the middle of a burst: after the restart every expected
alert exists once and the webhook receiver got each notification once."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

import httpx
import yaml

from services.classifier.main import create_app as classifier_app
from services.intake.main import create_app as intake_app
from tests.alerts.conftest import partners
from tests.alerts.helpers import WebhookReceiver, person, report, served
from tests.harness import (
    ServiceProcess,
    drop_database,
    free_port,
    in_process,
    isolated_settings,
    wait_for,
)
from tests.infra import Infra

BURST = 150
BATCH = {"content-type": "application/cloudevents-batch+json"}


async def test_kill_9_mid_burst_loses_and_doubles_nothing(infra: Infra, tmp_path: Path) -> None:
    hook_port = free_port()
    receivers = tmp_path / "receivers.yaml"
    receivers.write_text(
        yaml.safe_dump(
            {
                "delivery": {"backoff_initial_seconds": 0.2, "backoff_max_seconds": 1.0, "timeout_seconds": 2},
                "receivers": [{"name": "hook", "type": "webhook", "url": f"http://127.0.0.1:{hook_port}/hook"}],
            }
        )
    )
    settings = await isolated_settings(infra.kafka_bootstrap, infra.database_url, receivers_file=str(receivers))
    a, _, _ = await partners(settings)
    receiver = WebhookReceiver()
    receiver.accepting = True
    alerts = ServiceProcess("services.alerts.main", settings, free_port(), tmp_path / "alerts.log")
    try:
        alerts.start()
        async with (
            in_process(intake_app(settings)) as intake,
            in_process(classifier_app(settings)),
            served(receiver.app, hook_port),
        ):
            await alerts.wait_ready()
            events = [
                {
                    "specversion": "1.0",
                    "id": str(uuid.uuid4()),
                    "source": a.source,
                    "type": "org.tnrwatch.incident.reported.v1",
                    "subject": f"BURST-{n}",
                    "data": report(person(f"Burst {n}"), [("forced_rendition", "2024-05-05", "carried_out")]),
                }
                for n in range(BURST)
            ]
            for start in range(0, BURST, 50):
                r = await intake.post("/v1/events", json=events[start : start + 50], headers={**a.auth, **BATCH})
                assert r.status_code == 202, r.text

            await wait_for(lambda: _true(len(receiver.received) >= 20), timeout=90, what="the burst under way")
            alerts.kill()  # SIGKILL: no shutdown, no flush
            cut = len(receiver.received)
            alerts.start()
            await alerts.wait_ready()

            async with httpx.AsyncClient(base_url=alerts.url, timeout=30) as client:

                async def all_alerts() -> list[dict[str, object]] | None:
                    r = await client.get("/v1/alerts", params={"limit": "5000"}, headers=a.auth)
                    found = r.json()["alerts"]
                    return found if len(found) >= BURST else None

                found = await wait_for(all_alerts, timeout=120, what=f"{BURST} alerts")
                await wait_for(lambda: _true(len(receiver.received) >= BURST), timeout=120, what="every notification")
                await asyncio.sleep(2)  # room for duplicates to show up

        assert cut < BURST, "the kill came after the burst: the test proved nothing"
        assert len(found) == BURST
        assert {x["rule"] for x in found} == {"R3_kidnapping_or_disappearance"}
        assert len({x["fingerprint"] for x in found}) == BURST
        # Delivery is at-least-once with a stable Idempotency-Key per notification: the one
        # request in flight at the instant of the kill may arrive twice; nothing else may.
        keys = Counter(h["idempotency-key"] for h in receiver.headers)
        assert len(keys) == BURST
        assert sum(n - 1 for n in keys.values()) <= 1, keys.most_common(3)
        fingerprints = {p["alerts"][0]["fingerprint"] for p in receiver.received}
        assert fingerprints == {x["fingerprint"] for x in found}
    finally:
        alerts.kill()
        await drop_database(infra.database_url, settings)


async def _true(value: bool) -> bool:
    return value
