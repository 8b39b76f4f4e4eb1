"""The read API for dashboards (partner-contract.md §2)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from services.projections.store import load_views
from shared.auth import Principal, principal_dependency, require
from shared.problems import Problem
from shared.vocabulary import Scope

router = APIRouter()
authenticated = principal_dependency(lambda request: request.app.state.pool)


@router.get("/v1/incidents/{incident_id}", tags=["incidents"], summary="One incident with its classification")
async def get_incident(
    incident_id: str, request: Request, principal: Principal = Depends(authenticated)
) -> dict[str, Any]:
    require(principal, Scope.INCIDENTS_READ)
    views = await load_views(request.app.state.pool, [incident_id])
    view = views.get(incident_id)
    if view is None or view.report is None:
        raise Problem(404, "Not Found", "No incident with this id.")
    return view.public(with_confidential=principal.is_admin or principal.partner == view.partner)
