"""Delivery for sure: a webhook receiver that is down and then refuses gets every notification
once when it comes back (Alertmanager v4 payload), e-mail reaches a real SMTP server, the SSE
stream shows every change, silences mute notification but not detection, and every alert
change is published on the alerts topic."""

from __future__ import annotations

import asyncio
import email
import mailbox
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from services.alerts.main import create_app as alerts_app
from services.alerts.replay import replay_rules
from services.classifier.main import create_app as classifier_app
from services.intake.main import create_app as intake_app
from shared.events import AlertChanged
from shared.kafka import make_consumer, topics_for
from shared.serialization import from_record
from shared.settings import Settings
from tests.alerts.conftest import partners
from tests.alerts.helpers import (
    SseCollector,
    WebhookReceiver,
    person,
    post,
    report,
    served,
    wait_alert,
)
from tests.harness import drop_database, free_port, in_process, isolated_settings, wait_for
from tests.infra import Infra

R3 = "R3_kidnapping_or_disappearance"
R6 = "R6_mobility_trap"


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """aiosmtpd as a real process, storing what it receives in a maildir."""
    port = free_port()
    maildir = tmp_path / "maildir"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            f"127.0.0.1:{port}",
            "-c",
            "aiosmtpd.handlers.Mailbox",
            str(maildir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port, maildir
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
async def delivery_settings(
    infra: Infra, tmp_path: Path, smtp_server: tuple[int, Path]
) -> AsyncIterator[tuple[Settings, int]]:
    hook_port = free_port()
    receivers = {
        "delivery": {"backoff_initial_seconds": 0.2, "backoff_max_seconds": 1.0, "timeout_seconds": 2},
        "receivers": [
            {"name": "oncall-hook", "type": "webhook", "url": f"http://127.0.0.1:{hook_port}/hook"},
            {
                "name": "oncall-mail",
                "type": "email",
                "host": "127.0.0.1",
                "port": smtp_server[0],
                "from": "alerts@tnrwatch.test",
                "to": ["oncall@tnrwatch.test"],
                "min_severity": "high",
            },
        ],
    }
    path = tmp_path / "receivers.yaml"
    path.write_text(yaml.safe_dump(receivers))
    settings = await isolated_settings(infra.kafka_bootstrap, infra.database_url, receivers_file=str(path))
    yield settings, hook_port
    await drop_database(infra.database_url, settings)


async def attempts(settings: Settings, receiver: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return list(
            await conn.fetch("SELECT ok, status_code, error FROM delivery_attempts WHERE receiver = $1", receiver)
        )
    finally:
        await conn.close()


async def outbox_backlog(alerts: httpx.AsyncClient, receiver: str) -> float:
    """The alerts service's ``tnrwatch_alert_outbox_backlog`` gauge for one receiver (-1: absent)."""
    wanted = f'tnrwatch_alert_outbox_backlog{{receiver="{receiver}"}} '
    for line in (await alerts.get("/metrics")).text.splitlines():
        if line.startswith(wanted):
            return float(line[len(wanted):])
    return -1.0


async def alert_events(settings: Settings, fingerprints: set[str], expected: int) -> list[tuple[str, dict[str, Any]]]:
    consumer = make_consumer(settings, topics_for(settings).alerts, group_id=None)  # type: ignore[arg-type]  # no group: read only
    await consumer.start()
    found: list[tuple[str, dict[str, Any]]] = []
    try:

        async def probe() -> bool:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    event = from_record(record.value, record.headers)
                    if event.data["fingerprint"] in fingerprints:
                        found.append((event.type, event.data))
            return len(found) >= expected

        await wait_for(probe, timeout=60, what="alert events on the alerts topic")
    finally:
        await consumer.stop()
    return found


async def test_a_receiver_down_then_refusing_gets_everything_once_and_mail_and_sse_follow(
    delivery_settings: tuple[Settings, int], smtp_server: tuple[int, Path]
) -> None:
    settings, hook_port = delivery_settings
    a, b, reader = await partners(settings)
    receiver = WebhookReceiver()
    alerts_port = free_port()
    async with (
        in_process(intake_app(settings)) as intake,
        in_process(classifier_app(settings)),
        served(alerts_app(settings), alerts_port) as alerts_url,
        httpx.AsyncClient(base_url=alerts_url, timeout=30) as alerts,
        SseCollector(f"{alerts_url}/v1/alerts/stream", reader.auth) as sse,
    ):
        # Mobility traps are muted for now: still detected, not notified.
        silence = await alerts.post(
            "/v1/silences",
            headers=a.auth,
            json={"rule": R6, "until": "2099-01-01T00:00:00Z", "reason": "handled by the documents desk"},
        )
        assert silence.status_code == 201, silence.text

        targets = [person(f"Delivered {n}") for n in range(3)]
        taken = [
            await post(intake, a, report(t, [("kidnapping", f"2024-0{n + 1}-01", "carried_out")]))
            for n, t in enumerate(targets)
        ]
        trapped = person("Trapped")
        trap = [
            await post(intake, b, report(trapped, [("consular_service_denied", "2023-03-01", "carried_out")])),
            await post(intake, b, report(trapped, [("passport_cancelled", "2023-01-01", "carried_out")])),
        ]
        raised = [await wait_alert(alerts, a, R3, {i}) for i in taken]
        muted = await wait_alert(alerts, a, R6, set(trap))
        assert muted["status"] == "open"  # detection goes on under a silence

        # The receiver is not even listening yet: attempts fail and are logged.
        async def failures() -> list[asyncpg.Record] | None:
            rows = await attempts(settings, "oncall-hook")
            return rows if len([r for r in rows if not r["ok"]]) >= 2 else None

        logged = await wait_for(failures, what="failed webhook attempts")
        assert all(r["status_code"] is None and "Connect" in r["error"] for r in logged if not r["ok"])

        # On-call sees the receiver's backlog grow on /metrics, not only failures in a log.
        async def backlog() -> bool:
            return await outbox_backlog(alerts, "oncall-hook") >= 3

        await wait_for(backlog, what="the undelivered notifications on /metrics")

        async with served(receiver.app, hook_port):
            await wait_for(lambda: _true(receiver.refused >= 2), what="the receiver refusing")
            receiver.accepting = True
            await wait_for(lambda: _true(len(receiver.received) >= 3), what="the backlog delivered")
            resolved = await alerts.post(
                f"/v1/alerts/{raised[0]['alert_id']}/resolve", json={"reason": "safe"}, headers=a.auth
            )
            assert resolved.status_code == 200
            await wait_for(lambda: _true(len(receiver.received) >= 4), what="the resolution delivered")

            async def drained() -> bool:
                return await outbox_backlog(alerts, "oncall-hook") == 0

            await wait_for(drained, what="the backlog gauge back to 0")
            await asyncio.sleep(1.5)  # room for any duplicate to show up

        fingerprints = {a_["fingerprint"] for a_ in raised}
        got = [(p["alerts"][0]["fingerprint"], p["status"]) for p in receiver.received]
        assert sorted(got) == sorted([(f, "firing") for f in fingerprints] + [(raised[0]["fingerprint"], "resolved")])
        assert muted["fingerprint"] not in {f for f, _ in got}
        first = receiver.received[0]
        assert first["version"] == "4" and first["receiver"] == "oncall-hook"
        alert = first["alerts"][0]
        assert alert["labels"]["alertname"] == R3 and alert["labels"]["severity"] == "critical"
        assert set(alert) >= {"status", "labels", "annotations", "startsAt", "endsAt", "fingerprint"}
        assert "Delivered" not in str(receiver.received)  # names never leave intake
        assert len({h["idempotency-key"] for h in receiver.headers}) == 4
        all_attempts = await attempts(settings, "oncall-hook")
        assert len([r for r in all_attempts if r["ok"]]) == 4
        assert any(r["status_code"] == 503 for r in all_attempts)

        # SSE saw every change, the muted one included.
        await wait_for(lambda: _true(len(sse.events) >= 5), what="SSE events")
        seen = {(e["event"], e["data"]["alert"]["fingerprint"]) for e in sse.events}
        assert {("alert.raised", f) for f in fingerprints} <= seen
        assert ("alert.raised", muted["fingerprint"]) in seen
        assert ("alert.resolved", raised[0]["fingerprint"]) in seen

        deleted = await alerts.delete(f"/v1/silences/{silence.json()['silence_id']}", headers=a.auth)
        assert deleted.status_code == 204
        assert (await alerts.delete(f"/v1/silences/{silence.json()['silence_id']}", headers=a.auth)).status_code == 404
        bad = await alerts.post("/v1/silences", headers=a.auth, json={"until": "2099-01-01T00:00:00Z", "reason": "x"})
        assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"

    # E-mail (min_severity high): the three kidnappings and the resolution, not the muted trap.
    _, maildir = smtp_server

    def mails() -> list[email.message.Message]:
        return list(mailbox.Maildir(str(maildir), create=False)) if maildir.exists() else []

    await wait_for(lambda: _true(len(mails()) >= 4), what="e-mails")
    subjects = sorted(str(m["Subject"]) for m in mails())
    assert len(subjects) == 4 and all(R3 in s for s in subjects)
    assert sum("resolved" in s for s in subjects) == 1
    assert "Delivered" not in "".join(str(m) for m in mails())

    # Every change went out on the alerts topic too, keyed by fingerprint.
    events = await alert_events(settings, fingerprints | {muted["fingerprint"]}, expected=5)
    types = sorted(t for t, _ in events)
    assert types.count("org.tnrwatch.alert.raised.v1") == 4 and "org.tnrwatch.alert.resolved.v1" in types
    # Each is a valid AlertChanged (what the projections fold), with its alert as the subject.
    for _, data in events:
        assert AlertChanged.model_validate(data).fingerprint == data["fingerprint"]

    # `tnrwatch replay alerts` (service stopped): the same alerts are found again, nothing is
    # raised twice, the hand-resolved alert stays resolved, and nothing is queued to send again.
    before = await outbox_and_changes(settings)
    result = await replay_rules(settings, progress=False)
    assert result.applied >= 5
    assert await outbox_and_changes(settings) == before
    conn = await asyncpg.connect(settings.database_url)
    try:
        status = await conn.fetchval("SELECT status FROM alerts WHERE fingerprint = $1", raised[0]["fingerprint"])
        states = await conn.fetchval("SELECT count(*) FROM rule_state")
    finally:
        await conn.close()
    assert status == "resolved" and states > 0


async def outbox_and_changes(settings: Settings) -> tuple[int, int, int]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM outbox) AS o, (SELECT count(*) FROM alert_changes) AS c, "
            "(SELECT count(*) FROM alerts) AS a"
        )
        return row["o"], row["c"], row["a"]
    finally:
        await conn.close()


async def _true(value: bool) -> bool:
    return value
