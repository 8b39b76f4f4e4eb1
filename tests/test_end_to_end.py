"""The thinnest complete path: a partner's report, through every service, to the read API
and an alert, seen only through the public HTTP APIs."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Stack
from tests.harness import wait_for

STRUCTURED = {"content-type": "application/cloudevents+json"}


def kidnapping_report(event_id: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "urn:partner:sample-ngo",
        "type": "org.tnrwatch.incident.reported.v1",
        "subject": f"REF-{event_id}",
        "data": {
            "occurred_on": "2024-06-01",
            "date_precision": "day",
            "location": {"country": "TH", "city": "Bangkok"},
            "target": {
                "identity": {"name": "Person Kappa", "birth_date": "1990-01-01"},
                "group": "dissident",
                "nationality": "CN",
                "status_abroad": "refugee",
            },
            "acts": [{"type": "kidnapping", "on": "2024-06-01", "actor": "prc_mss", "status": "carried_out"}],
            "outcome": "disappeared",
            "sources": [{"url": "https://example.org/a", "reliability": "B", "credibility": 2}],
        },
    }


async def test_kidnapping_report_is_classified_and_raises_r3(stack: Stack, partner_key: str) -> None:
    auth = {"authorization": f"Bearer {partner_key}"}
    response = await stack.intake.post("/v1/events", json=kidnapping_report("e2e-1"), headers={**auth, **STRUCTURED})
    assert response.status_code == 202, response.text
    incident_id = response.json()["accepted"][0]["incident_id"]

    async def classified() -> dict[str, Any] | None:
        r = await stack.projections.get(f"/v1/incidents/{incident_id}", headers=auth)
        body = r.json() if r.status_code == 200 else None
        return body if body and body.get("classification") else None

    incident = await wait_for(classified, what="the classified incident")
    assert incident["classification"]["ir_categories"] == ["IR3"]
    assert incident["classification"]["pace_methods"] == ["direct_attack"]
    assert incident["classification"]["ccdi_methods"] == ["kidnapping_or_luring"]
    assert "Person Kappa" not in str(incident)

    async def r3_alert() -> list[dict[str, Any]] | None:
        r = await stack.alerts.get("/v1/alerts", params={"status": "open"}, headers=auth)
        alerts = [a for a in r.json()["alerts"] if incident_id in a["incident_ids"]]
        return alerts or None

    alerts = await wait_for(r3_alert, what="an open R3 alert")
    assert [a["rule"] for a in alerts] == ["R3_kidnapping_or_disappearance"]
    assert alerts[0]["severity"] == "critical"
    assert alerts[0]["target_ref"] == incident["target_ref"]


async def test_every_service_reports_ready(stack: Stack) -> None:
    for client in (stack.intake, stack.classifier, stack.alerts, stack.projections):
        async def ready(client: httpx.AsyncClient = client) -> bool:
            return bool((await client.get("/readyz")).status_code == 200)

        await wait_for(ready, what="readiness")
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200 and "python_info" in metrics.text
