"""Intake's HTTP surface: ``POST /v1/events`` (partner-contract.md §1)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.intake.service import IntakeContext, accept
from shared.auth import Principal, principal_dependency
from shared.events import CloudEvent
from shared.problems import Problem, validation_errors

router = APIRouter()


def _ctx(request: Request) -> IntakeContext:
    ctx: IntakeContext = request.app.state.intake
    return ctx


authenticated = principal_dependency(lambda request: _ctx(request).pool)

STRUCTURED = "application/cloudevents+json"


def _envelope(raw: Any) -> CloudEvent:
    if not isinstance(raw, dict):
        raise Problem(422, "Unprocessable Content", "A CloudEvent must be a JSON object.")
    if raw.get("specversion") != "1.0":
        raise Problem(422, "Unprocessable Content", "specversion must be \"1.0\".",
                      errors=[{"pointer": "/specversion", "detail": "must be 1.0"}])
    try:
        return CloudEvent.model_validate(raw)
    except ValidationError as exc:
        raise Problem(422, "Unprocessable Content", "The CloudEvent envelope is not valid.",
                      errors=validation_errors(exc)) from exc


@router.post("/v1/events", status_code=202, tags=["intake"], summary="Post incident reports")
async def post_events(request: Request, principal: Principal = Depends(authenticated)) -> JSONResponse:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != STRUCTURED:
        raise Problem(415, "Unsupported Media Type", f"Use {STRUCTURED}.")
    body = await request.body()
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Problem(400, "Bad Request", f"The body is not valid JSON: {exc.msg if hasattr(exc, 'msg') else exc}") from exc
    result = await accept(_ctx(request), principal, [_envelope(raw)])
    return JSONResponse({"accepted": result.accepted, "duplicates": result.duplicates}, status_code=202)
