"""Posting reports and reading alerts through the public HTTP APIs only."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.harness import wait_for

STRUCTURED = {"content-type": "application/cloudevents+json"}
SCENARIOS = Path(__file__).resolve().parent.parent / "data" / "alert-scenarios.jsonl"


def scenario(name: str) -> dict[str, Any]:
    for line in SCENARIOS.read_text().splitlines():
        if line.strip() and json.loads(line)["id"] == name:
            return dict(json.loads(line))
    raise KeyError(name)


@dataclass
class Partner:
    name: str
    source: str
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}


def person(name: str, *, group: str = "unknown", status_abroad: str = "unknown") -> dict[str, Any]:
    return {"group": group, "nationality": "CN", "status_abroad": status_abroad,
            "identity": {"name": name, "birth_date": "1980-02-02"}}


def report(target: dict[str, Any], acts: list[tuple[str, str, str]], *, country: str = "TR",
           city: str | None = None, **extra: Any) -> dict[str, Any]:
    location: dict[str, Any] = {"country": country}
    if city:
        location["city"] = city
    data: dict[str, Any] = {
        "occurred_on": extra.pop("occurred_on", acts[0][1] if acts else "2024-01-01"),
        "date_precision": "day", "location": location, "target": target,
        "acts": [{"type": t, "on": on, "actor": "unknown", "status": st} for t, on, st in acts],
        "outcome": extra.pop("outcome", "unknown"),
        "sources": [{"url": "https://example.org/report", "reliability": "C", "credibility": 3}],
    }
    data.update(extra)
    return data


async def post(intake: httpx.AsyncClient, partner: Partner, data: dict[str, Any], *, subject: str | None = None,
               kind: str = "reported") -> str:
    """Post one report; returns its incident_id."""
    event = {
        "specversion": "1.0", "id": str(uuid.uuid4()), "source": partner.source,
        "type": f"org.tnrwatch.incident.{kind}.v1", "subject": subject or f"REF-{uuid.uuid4().hex[:10]}",
        "data": data,
    }
    response = await intake.post("/v1/events", json=event, headers={**partner.auth, **STRUCTURED})
    assert response.status_code == 202, response.text
    return str(response.json()["accepted"][0]["incident_id"])


async def alerts(client: httpx.AsyncClient, partner: Partner, **params: str) -> list[dict[str, Any]]:
    response = await client.get("/v1/alerts", params=params, headers=partner.auth)
    assert response.status_code == 200, response.text
    return list(response.json()["alerts"])


async def alerts_for_incidents(client: httpx.AsyncClient, partner: Partner, incident_ids: set[str]) -> list[dict[str, Any]]:
    return [a for a in await alerts(client, partner) if set(a["incident_ids"]) & incident_ids]


async def wait_alert(client: httpx.AsyncClient, partner: Partner, rule: str, incident_ids: set[str],
                     *, timeout: float = 60.0, status: str | None = None) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        for a in await alerts_for_incidents(client, partner, incident_ids):
            if a["rule"] == rule and (status is None or a["status"] == status):
                return a
        return None

    return await wait_for(probe, timeout=timeout, what=f"{rule} over {sorted(incident_ids)}")
