"""Alerts' HTTP surface (partner-contract.md §3)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from services.alerts.store import list_alerts
from shared.auth import Principal, principal_dependency, require
from shared.vocabulary import Scope

router = APIRouter()
authenticated = principal_dependency(lambda request: request.app.state.pool)


@router.get("/v1/alerts", tags=["alerts"], summary="List alerts")
async def get_alerts(
    request: Request,
    status: str | None = Query(default=None, pattern="^(open|acknowledged|resolved)$"),
    severity: str | None = Query(default=None, pattern="^(critical|high|medium|info)$"),
    target_ref: str | None = None,
    principal: Principal = Depends(authenticated),
) -> dict[str, Any]:
    require(principal, Scope.ALERTS_READ)
    alerts = await list_alerts(request.app.state.pool, status=status, severity=severity, target_ref=target_ref)
    return {"alerts": alerts}
