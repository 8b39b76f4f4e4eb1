"""Posting reports and reading alerts through the public HTTP APIs only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response

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
    return {
        "group": group,
        "nationality": "CN",
        "status_abroad": status_abroad,
        "identity": {"name": name, "birth_date": "1980-02-02"},
    }


def report(
    target: dict[str, Any],
    acts: list[tuple[str, str, str]],
    *,
    country: str = "TR",
    city: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    location: dict[str, Any] = {"country": country}
    if city:
        location["city"] = city
    data: dict[str, Any] = {
        "occurred_on": extra.pop("occurred_on", acts[0][1] if acts else "2024-01-01"),
        "date_precision": "day",
        "location": location,
        "target": target,
        "acts": [{"type": t, "on": on, "actor": "unknown", "status": st} for t, on, st in acts],
        "outcome": extra.pop("outcome", "unknown"),
        "sources": [{"url": "https://example.org/report", "reliability": "C", "credibility": 3}],
    }
    data.update(extra)
    return data


async def post(
    intake: httpx.AsyncClient,
    partner: Partner,
    data: dict[str, Any],
    *,
    subject: str | None = None,
    kind: str = "reported",
) -> str:
    """Post one report; returns its incident_id."""
    event = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": partner.source,
        "type": f"org.tnrwatch.incident.{kind}.v1",
        "subject": subject or f"REF-{uuid.uuid4().hex[:10]}",
        "data": data,
    }
    response = await intake.post("/v1/events", json=event, headers={**partner.auth, **STRUCTURED})
    assert response.status_code == 202, response.text
    return str(response.json()["accepted"][0]["incident_id"])


async def alerts(client: httpx.AsyncClient, partner: Partner, **params: str) -> list[dict[str, Any]]:
    response = await client.get("/v1/alerts", params=params, headers=partner.auth)
    assert response.status_code == 200, response.text
    return list(response.json()["alerts"])


async def alerts_for_incidents(
    client: httpx.AsyncClient, partner: Partner, incident_ids: set[str]
) -> list[dict[str, Any]]:
    return [a for a in await alerts(client, partner) if set(a["incident_ids"]) & incident_ids]


async def wait_alert(
    client: httpx.AsyncClient,
    partner: Partner,
    rule: str,
    incident_ids: set[str],
    *,
    timeout: float = 60.0,
    status: str | None = None,
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        for a in await alerts_for_incidents(client, partner, incident_ids):
            if a["rule"] == rule and (status is None or a["status"] == status):
                return a
        return None

    return await wait_for(probe, timeout=timeout, what=f"{rule} over {sorted(incident_ids)}")


# --- Real servers for delivery tests ----------------------------------------------------------


@asynccontextmanager
async def served(app: Any, port: int) -> AsyncIterator[str]:
    """Serve an ASGI app on a real port (SSE and webhooks need a real socket)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise AssertionError("server stopped during start-up")
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class WebhookReceiver:
    """A receiver that refuses (503) until told otherwise and records what it accepted."""

    def __init__(self) -> None:
        self.accepting = False
        self.refused = 0
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            if not self.accepting:
                self.refused += 1
                return Response(status_code=503)
            self.received.append(await request.json())
            self.headers.append(dict(request.headers))
            return Response(status_code=200)

        self.app = app


class SseCollector:
    """Reads an SSE stream in the background."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self.headers = headers
        self.events: list[dict[str, Any]] = []
        self.connected = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=None) as client, client.stream("GET", self.url, headers=self.headers) as r:
            assert r.status_code == 200, await r.aread()
            event: dict[str, Any] = {}
            async for line in r.aiter_lines():
                if line.startswith(": connected"):
                    self.connected.set()
                elif line.startswith("id: "):
                    event["id"] = int(line[4:])
                elif line.startswith("event: "):
                    event["event"] = line[7:]
                elif line.startswith("data: "):
                    event["data"] = json.loads(line[6:])
                elif line == "" and event:
                    self.events.append(event)
                    event = {}

    async def __aenter__(self) -> SseCollector:
        self.task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
