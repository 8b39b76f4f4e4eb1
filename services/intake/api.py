"""Intake's HTTP surface: ``POST /v1/events`` (partner-contract.md §1) and the admins'
identity look-up. Every answer, accepted or refused, leaves an audit record."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from services.intake import store
from services.intake.binding import BATCH, BINARY, STRUCTURED, Mode, mode_for, parse
from services.intake.limits import RateLimiter, TtlCache, retry_after
from services.intake.models import ErasureRequest, Identity, IncidentReport, RetractionData
from services.intake.service import IntakeContext, accept
from services.intake.validation import prepare
from services.intake.vault import VaultError, open_identity, unwrap_data_key
from shared.auth import Principal, authenticate, bearer_token
from shared.problems import Problem, problem_response
from shared.web import ServerSpanMiddleware

log = logging.getLogger(__name__)
router = APIRouter()


@dataclass
class IntakeHttp:
    """Per-process HTTP state: authenticated keys (briefly) and the partners' rate buckets."""

    keys: TtlCache[Principal]
    limiter: RateLimiter
    max_event_bytes: int
    max_batch_bytes: int

    @classmethod
    def create(cls, *, auth_cache_seconds: float, rate_limit_per_minute: int,
               max_event_bytes: int, max_batch_bytes: int) -> IntakeHttp:
        return cls(TtlCache(auth_cache_seconds, time.monotonic),
                   RateLimiter(rate_limit_per_minute, time.monotonic),
                   max_event_bytes, max_batch_bytes)


def _ctx(request: Request) -> IntakeContext:
    ctx: IntakeContext = request.app.state.intake
    return ctx


def _http(request: Request) -> IntakeHttp:
    http: IntakeHttp = request.app.state.intake_http
    return http


async def _principal(request: Request) -> Principal:
    token = bearer_token(request)
    if token is None:
        raise Problem(401, "Unauthorized", "Send 'Authorization: Bearer <API key>'.",
                      headers={"WWW-Authenticate": "Bearer"})
    http = _http(request)
    principal = http.keys.get(token)
    if principal is None:
        principal = await authenticate(_ctx(request).pool, token)
        if principal is None:
            raise Problem(401, "Unauthorized", "The API key is unknown or revoked.",
                          headers={"WWW-Authenticate": "Bearer"})
        http.keys.put(token, principal)
    request.state.principal = principal
    return principal


def _presented_key_id(request: Request) -> str | None:
    """The public half of a presented key, for the audit of refused requests."""
    token = bearer_token(request) or ""
    parts = token.split("_", 2)
    return parts[1][:40] if len(parts) == 3 and parts[0] == "tnr" else None


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over ``limit`` bytes: from
    Content-Length before reading, else while streaming."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Problem(400, "Bad Request", "Content-Length is not a number.")
        if int(declared) > limit:
            raise Problem(413, "Content Too Large", f"The body is over {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, "Content Too Large", f"The body is over {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _refuse_large_events(events: list[Any], limit: int) -> None:
    """One event of a batch is held to the single-event limit too (only checked when the
    batch as a whole is over it: a smaller batch cannot hold a larger event)."""
    errors = [
        {"pointer": f"/{index}", "detail": f"this event is over {limit} bytes"}
        for index, event in enumerate(events)
        if len(json.dumps(event, ensure_ascii=False).encode()) > limit
    ]
    if errors:
        raise Problem(413, "Content Too Large", f"An event of the batch is over {limit} bytes.", errors=errors)


async def _audit(request: Request, record: store.AuditRecord) -> None:
    try:  # grouped with other requests' statements (service.IntakeContext.settle)
        await _ctx(request).settle.submit([((), record)])
    except Exception as exc:  # the answer stands; the operators see the gap in the logs
        log.error("audit record not written: %s", type(exc).__name__)


# --- OpenAPI: the request bodies, described for clients and schema-driven tests -------------


class PartnerCloudEvent(BaseModel):
    """A CloudEvents 1.0 event as a partner posts it (structured mode; binary mode sends the
    attributes as ce-* headers and ``data`` as the body). Extension attributes are allowed."""

    model_config = ConfigDict(extra="allow")

    specversion: str
    id: str
    source: str
    type: str
    subject: str | None = None
    time: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    data: IncidentReport | RetractionData | ErasureRequest


def openapi_components() -> dict[str, Any]:
    _, top = models_json_schema(
        [(PartnerCloudEvent, "validation"), (IncidentReport, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    defs: dict[str, Any] = top.get("$defs", {})
    return defs


_REF = {"$ref": "#/components/schemas/PartnerCloudEvent"}
_DATA_REF = {"$ref": "#/components/schemas/IncidentReport"}
_PROBLEM = {"application/problem+json": {"schema": {"type": "object"}}}
POST_EVENTS_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            STRUCTURED: {"schema": _REF},
            BATCH: {"schema": {"type": "array", "items": _REF, "maxItems": 500}},
            BINARY: {"schema": _DATA_REF},
        },
    },
    "responses": {
        "202": {"description": "Written to the log (acks=all): accepted and duplicates"},
        **{
            str(code): {"description": what, "content": _PROBLEM}
            for code, what in [
                (400, "Malformed JSON"), (401, "No or bad key"), (403, "Source not owned or scope missing"),
                (413, "Body too large"), (415, "Unsupported content type"), (422, "Schema violation"),
                (429, "Over the partner's rate limit (Retry-After)"),
                (503, "The log cannot take the write (Retry-After); NOT accepted"),
            ]
        },
    },
}


@router.post("/v1/events", status_code=202, tags=["intake"], summary="Post incident reports",
             openapi_extra=POST_EVENTS_OPENAPI)
async def post_events(request: Request) -> Response:
    principal: Principal | None = None
    mode: Mode | None = None
    report_ids: tuple[str, ...] = ()
    try:
        principal = await _principal(request)
        http = _http(request)
        mode = mode_for(request.headers.get("content-type"))
        wait = http.limiter.peek(principal.partner)  # an empty bucket: not even the body is read
        if wait:
            raise Problem(429, "Too Many Requests", "Over this partner's rate limit.",
                          headers={"Retry-After": retry_after(wait)})
        limit = http.max_batch_bytes if mode is Mode.BATCH else http.max_event_bytes
        body = await _read_body(request, limit)
        parsed = parse(request.headers.get("content-type"), request.headers, body)
        report_ids = tuple(str(e.get("id"))[:200].replace("\x00", "")
                           for e in parsed.events if isinstance(e, dict) and "id" in e)
        wait = http.limiter.take(principal.partner, max(len(parsed.events), 1))
        if wait:
            raise Problem(429, "Too Many Requests", "Over this partner's rate limit.",
                          headers={"Retry-After": retry_after(wait)})
        if mode is Mode.BATCH and len(body) > http.max_event_bytes:
            _refuse_large_events(parsed.events, http.max_event_bytes)
        prepared = prepare(parsed.events, principal, _ctx(request).pseudonym_key, batch=mode is Mode.BATCH)
        # Shielded: a client that hangs up mid-write must not leave claims half-settled.
        accepting = asyncio.ensure_future(accept(_ctx(request), principal, prepared, store.AuditRecord(
            action="post_events", status=202, outcome="accepted", key_id=principal.key_id,
            partner=principal.partner, mode=mode, report_ids=report_ids,
        )))
        try:
            result = await asyncio.shield(accepting)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("the database refused the write: %s", type(exc).__name__)
            raise Problem(503, "Service Unavailable", "The database cannot take the write; the events "
                          "were NOT accepted.", headers={"Retry-After": "5"}) from exc
    except Problem as problem:
        await _audit(request, store.AuditRecord(
            action="post_events", status=problem.status, outcome="refused",
            key_id=principal.key_id if principal else _presented_key_id(request),
            partner=principal.partner if principal else None, mode=mode, report_ids=report_ids,
            detail=problem.title,
        ))
        raise
    except Exception:
        await _audit(request, store.AuditRecord(
            action="post_events", status=500, outcome="error", key_id=principal.key_id if principal else None,
            partner=principal.partner if principal else None, mode=mode, report_ids=report_ids,
        ))
        raise
    # orjson: the bytes JSONResponse renders (compact, UTF-8, ids never hold surrogates).
    return Response(orjson.dumps({"accepted": result.accepted, "duplicates": result.duplicates}),
                    status_code=202, media_type="application/json")


class TargetIdentities(BaseModel):
    target_ref: str
    identities: list[Identity]


@router.get("/v1/targets/{target_ref}/identity", tags=["intake"], response_model=TargetIdentities,
            summary="The clear identity of a target (admin only; audited; gone after erasure)")
async def target_identity(target_ref: str, request: Request) -> TargetIdentities:
    principal: Principal | None = None
    try:
        principal = await _principal(request)
        if not principal.is_admin:
            raise Problem(403, "Forbidden", "This key lacks the 'admin' scope.")
        ctx = _ctx(request)
        key, sealed = await store.sealed_identities(ctx.pool, target_ref)
        if key is not None and key.erased:
            raise Problem(410, "Gone", "This target's identity was erased.")
        if key is None or not sealed:
            raise Problem(404, "Not Found", "No identity is held for this target.")
        assert key.wrapped_key is not None
        try:
            data_key = unwrap_data_key(ctx.master_key, bytes(key.wrapped_key), target_ref)
            found = [open_identity(data_key, s, target_ref) for s in sealed]
        except VaultError as exc:
            log.error("an identity does not open: %s", exc)
            raise Problem(500, "Internal Server Error", "The identity cannot be opened.") from exc
        unique = list({i.model_dump_json(): i for i in found}.values())
    except Problem as problem:
        await _audit(request, store.AuditRecord(
            action="read_identity", status=problem.status, outcome="refused",
            key_id=principal.key_id if principal else _presented_key_id(request),
            partner=principal.partner if principal else None,
            detail=f"{problem.title}; target_ref={target_ref[:100]}",
        ))
        raise
    await _audit(request, store.AuditRecord(
        action="read_identity", status=200, outcome="read", key_id=principal.key_id,
        partner=principal.partner, detail=f"target_ref={target_ref}",
    ))
    return TargetIdentities(target_ref=target_ref, identities=unique)


EVENTS_PATH = "/v1/events"


class EventsFastPath:
    """``POST /v1/events`` straight to :func:`post_events`, past FastAPI's routing, dependency
    solving and exception layers: they were a third of a single post's CPU (py-spy, see
    docs/intake.md), and the handler needs none of them (it reads the raw request, answers
    problems itself). Inside the same server span as any request; everything else (other
    paths and methods, the OpenAPI document built from the route) goes through FastAPI."""

    def __init__(self, app: ASGIApp, route: BaseRoute | None = None) -> None:
        self.app = app
        self.route = route
        self.traced = ServerSpanMiddleware(self._post_events)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == EVENTS_PATH:
            await self.traced(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _post_events(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route  # names the server span by the route, as FastAPI would
        request = Request(scope, receive, send)
        try:
            response = await post_events(request)
        except Problem as problem:  # as shared.problems' handler answers it
            response = problem_response(problem, request.url.path)
        await response(scope, receive, send)
