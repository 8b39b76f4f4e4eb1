"""Alerts' HTTP surface (partner-contract.md §3): list, ack, resolve, silences, the SSE stream."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.alerts import store
from services.alerts.lifecycle import LifecycleError, acknowledge, resolve
from services.alerts.receivers import ReceiversConfig
from services.alerts.service import commit_changes
from services.alerts.store import Silence
from shared.auth import Principal, principal_dependency, require
from shared.problems import Problem
from shared.vocabulary import Scope

router = APIRouter()
authenticated = principal_dependency(lambda request: request.app.state.pool)
HEARTBEAT_SECONDS = 15.0


class Transition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=2000, description="Why; recorded with who did it")


class SilenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rule: str | None = None
    target_ref: str | None = None
    place: str | None = None
    until: datetime = Field(description="When the silence ends (ISO 8601 with a time zone)")
    reason: str = Field(min_length=1, max_length=2000)

    @model_validator(mode="after")
    def _something_to_mute(self) -> SilenceRequest:
        if not (self.rule or self.target_ref or self.place):
            raise ValueError("a silence needs a rule, a target_ref or a place")
        if self.until.tzinfo is None:
            raise ValueError("until needs a time zone")
        return self


def who(principal: Principal) -> str:
    return f"{principal.partner}/{principal.key_id}"


@router.get("/v1/alerts", tags=["alerts"], summary="List alerts")
async def get_alerts(
    request: Request,
    status: str | None = Query(default=None, pattern="^(open|acknowledged|resolved)$"),
    severity: str | None = Query(default=None, pattern="^(critical|high|medium|info)$"),
    target_ref: str | None = None,
    rule: str | None = None,
    place: str | None = None,
    limit: int = Query(default=500, ge=1, le=5000),
    principal: Principal = Depends(authenticated),
) -> dict[str, Any]:
    require(principal, Scope.ALERTS_READ)
    alerts = await store.list_alerts(
        request.app.state.pool,
        status=status,
        severity=severity,
        target_ref=target_ref,
        rule=rule,
        place=place,
        limit=limit,
    )
    return {"alerts": [a.to_api() for a in alerts]}


@router.get("/v1/alerts/stream", tags=["alerts"], summary="Server-Sent Events: one event per alert change")
async def stream(
    request: Request,
    principal: Principal = Depends(authenticated),
    last_event_id: str | None = Header(default=None),
) -> StreamingResponse:
    require(principal, Scope.ALERTS_READ)
    hub = getattr(request.app.state, "hub", None)
    if hub is None:
        raise Problem(503, "Service Unavailable", "The alert stream is starting.", headers={"Retry-After": "1"})
    pool: asyncpg.Pool = request.app.state.pool
    queue = hub.subscribe()  # before reading the backlog, so nothing falls in between
    try:
        after = int(last_event_id) if last_event_id and last_event_id.isdigit() else await store.last_change_id(pool)
    except Exception:
        hub.unsubscribe(queue)
        raise

    async def events() -> AsyncIterator[str]:
        sent = after
        try:
            yield ": connected\n\n"
            for row in await store.changes_after(pool, after, limit=10_000):
                sent = row["change_id"]
                yield _sse(row)
            while True:
                try:
                    row = await asyncio.wait_for(queue.get(), timeout=HEARTBEAT_SECONDS)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if row is None:
                    return  # dropped for being too slow; the client resumes with Last-Event-ID
                if row["change_id"] <= sent:
                    continue
                sent = row["change_id"]
                yield _sse(row)
        finally:
            hub.unsubscribe(queue)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _sse(row: asyncpg.Record) -> str:
    data = json.dumps({"kind": row["kind"], "alert": row["payload"]}, separators=(",", ":"), default=str)
    return f"id: {row['change_id']}\nevent: alert.{row['kind']}\ndata: {data}\n\n"


@router.get("/v1/alerts/{alert_id}", tags=["alerts"], summary="One alert")
async def get_one(alert_id: str, request: Request, principal: Principal = Depends(authenticated)) -> dict[str, Any]:
    require(principal, Scope.ALERTS_READ)
    alert = await store.get_alert(request.app.state.pool, alert_id)
    if alert is None:
        raise Problem(404, "Not Found", "No alert with this id.")
    return alert.to_api()


async def _transition(
    request: Request, alert_id: str, principal: Principal, body: Transition, action: str
) -> dict[str, Any]:
    require(principal, Scope.ALERTS_WRITE)
    pool: asyncpg.Pool = request.app.state.pool
    receivers: ReceiversConfig = request.app.state.receivers
    now = datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        current = await store.get_alert(conn, alert_id, for_update=True)
        if current is None:
            raise Problem(404, "Not Found", "No alert with this id.")
        try:
            step = acknowledge if action == "ack" else resolve
            change = step(current, who=who(principal), why=body.reason, now=now)
        except LifecycleError as exc:
            raise Problem(409, "Conflict", str(exc)) from exc
        await commit_changes(conn, [change], receivers, now)
    return change.record.to_api()


@router.post("/v1/alerts/{alert_id}/ack", tags=["alerts"], summary="Acknowledge an open alert")
async def ack(
    alert_id: str, request: Request, body: Transition | None = None, principal: Principal = Depends(authenticated)
) -> dict[str, Any]:
    return await _transition(request, alert_id, principal, body or Transition(), "ack")


@router.post("/v1/alerts/{alert_id}/resolve", tags=["alerts"], summary="Resolve an alert by hand")
async def resolve_alert(
    alert_id: str, request: Request, body: Transition | None = None, principal: Principal = Depends(authenticated)
) -> dict[str, Any]:
    return await _transition(request, alert_id, principal, body or Transition(), "resolve")


@router.post("/v1/silences", tags=["silences"], status_code=201, summary="Mute notifications until a time")
async def create_silence(
    body: SilenceRequest, request: Request, response: Response, principal: Principal = Depends(authenticated)
) -> dict[str, Any]:
    require(principal, Scope.ALERTS_WRITE)
    if body.until <= datetime.now(UTC):
        raise Problem(
            422,
            "Unprocessable Content",
            "The silence would already be over.",
            errors=[{"pointer": "/until", "detail": "must be in the future"}],
        )
    silence = await store.create_silence(
        request.app.state.pool,
        Silence(
            silence_id=str(uuid.uuid4()),
            rule=body.rule,
            target_ref=body.target_ref,
            place=body.place,
            ends_at=body.until,
            reason=body.reason,
            created_by=who(principal),
            created_at=datetime.now(UTC),
        ),
    )
    response.headers["Location"] = f"/v1/silences/{silence.silence_id}"
    return silence.to_api()


@router.get("/v1/silences", tags=["silences"], summary="Active silences")
async def list_silences(request: Request, principal: Principal = Depends(authenticated)) -> dict[str, Any]:
    require(principal, Scope.ALERTS_READ)
    return {"silences": [s.to_api() for s in await store.active_silences(request.app.state.pool)]}


@router.delete("/v1/silences/{silence_id}", tags=["silences"], status_code=204, summary="End a silence now")
async def delete_silence(silence_id: str, request: Request, principal: Principal = Depends(authenticated)) -> Response:
    require(principal, Scope.ALERTS_WRITE)
    if not await store.delete_silence(request.app.state.pool, silence_id, who(principal)):
        raise Problem(404, "Not Found", "No active silence with this id.")
    return Response(status_code=204)
