"""The read API for dashboards (partner-contract.md §2), and the dashboard page itself.

Every read runs in one repeatable-read, read-only transaction on the live generation: a
response never mixes two generations or two versions of the data. The ETag is derived from
the generation, its version (bumped by every write), the request and the reader, so a 304 is
answered before any incident is read.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse

from services.projections import store
from services.projections.reads import (
    CSV_COLUMNS,
    STATS_DIMENSIONS,
    Cursor,
    IncidentFilters,
    csv_row,
    entity_tag,
    etag_matches,
    render_incident,
    suppress,
    timeline,
)
from shared.auth import Principal, principal_dependency, require
from shared.problems import PROBLEM_JSON, Problem
from shared.vocabulary import CcdiMethod, IrCategory, PaceMethod, PersuasionChannel, Scope, TargetGroup

router = APIRouter()
authenticated = principal_dependency(lambda request: request.app.state.pool)

DASHBOARD = Path(__file__).parent / "dashboard"
METHODS = {m.value for m in PaceMethod} | {m.value for m in CcdiMethod} | {c.value for c in PersuasionChannel}

PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {
        "description": text,
        "content": {PROBLEM_JSON: {"example": {"type": "about:blank", "title": title, "status": status}}},
    }
    for status, title, text in [
        (401, "Unauthorized", "No API key, or an unknown or revoked one."),
        (403, "Forbidden", "The key lacks the scope this read needs."),
        (404, "Not Found", "Nothing with this id."),
        (422, "Unprocessable Content", "A query parameter is not valid; `errors` says which."),
    ]
}
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Unchanged since the ETag sent in If-None-Match."}
}

INCIDENT_EXAMPLE: dict[str, Any] = {
    "incident_id": "inc_9f2c4b1a",
    "target_ref": "tgt_5e0b7c",
    "occurred_on": "2021-07-19",
    "date_precision": "day",
    "country": "MA",
    "city": "Casablanca",
    "group": "uyghur",
    "status_abroad": "asylum_seeker",
    "acts": [
        {"type": "interpol_red_notice", "on": "2021-07-19", "actor": "prc_mps", "status": "carried_out"},
        {"type": "detention_abroad", "on": "2021-07-19", "actor": "host_police", "status": "carried_out"},
    ],
    "outcome": "detained",
    "next_hearing_on": "2021-12-15",
    "retracted": False,
    "classification": {
        "pace_methods": ["co_opting"],
        "ccdi_methods": ["extradition"],
        "persuasion_channels": [],
        "ir_categories": [],
        "evidence": [{"label": "co_opting", "rule": "act:interpol_red_notice", "from": "acts[0]"}],
        "classifier_version": "taxonomy-v1",
    },
}


def _json_example(example: Any, description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": description, "content": {"application/json": {"example": example}}}}


# --- Reading in one snapshot, with ETags ----------------------------------------------------


@asynccontextmanager
async def _snapshot(request: Request) -> AsyncIterator[tuple[asyncpg.Connection, str, int]]:
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        generation, version = await store.read_generation(conn)
        yield conn, generation, version


def _tag(request: Request, principal: Principal, generation: str, version: int) -> str:
    query = sorted(request.query_params.multi_items())
    return entity_tag(generation, version, request.url.path, query, principal.partner, sorted(principal.scopes))


async def _cached_json(
    request: Request,
    principal: Principal,
    build: Callable[[asyncpg.Connection, str], Awaitable[Any]],
) -> Response:
    async with _snapshot(request) as (conn, generation, version):
        etag = _tag(request, principal, generation, version)
        headers = {"ETag": etag, "Cache-Control": "private, no-cache", "Vary": "Authorization"}
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        body = await build(conn, generation)
    return JSONResponse(body, headers=headers)


def _confidential_for(principal: Principal, row: dict[str, Any]) -> bool:
    return principal.is_admin or principal.partner == row["partner"]


# --- Filters ---------------------------------------------------------------------------------


def _values(raw: list[str]) -> tuple[str, ...]:
    """Repeated parameters and comma-separated lists are the same thing."""
    return tuple(dict.fromkeys(v.strip() for item in raw for v in item.split(",") if v.strip()))


def _check(name: str, values: tuple[str, ...], allowed: set[str] | None, errors: list[dict[str, str]]) -> None:
    for value in values:
        ok = (len(value) == 2 and value.isalpha() and value.isupper()) if allowed is None else value in allowed
        if not ok:
            errors.append({"pointer": f"/query/{name}", "detail": f"unknown value {value!r}"})


def incident_filters(
    country: Annotated[
        list[str], Query(description="ISO 3166-1 alpha-2 host country; repeat or comma-separate", examples=["TH,KG"])
    ] = [],  # noqa: B006
    group: Annotated[
        list[str], Query(description="Target group (partner contract vocabulary)", examples=["uyghur"])
    ] = [],  # noqa: B006
    method: Annotated[
        list[str], Query(description="A PACE method, CCDI method or persuasion channel", examples=["co_opting"])
    ] = [],  # noqa: B006
    ir: Annotated[list[str], Query(description="Involuntary-return category", examples=["IR3"])] = [],  # noqa: B006
    occurred_from: Annotated[date | None, Query(alias="from", description="Occurred on or after (ISO date)")] = None,
    occurred_to: Annotated[date | None, Query(alias="to", description="Occurred on or before (ISO date)")] = None,
    include_retracted: Annotated[
        bool, Query(description="List retracted incidents too (never counted in stats)")
    ] = False,
) -> IncidentFilters:
    filters = IncidentFilters(
        countries=_values(country),
        groups=_values(group),
        methods=_values(method),
        ir_categories=_values(ir),
        occurred_from=occurred_from,
        occurred_to=occurred_to,
        include_retracted=include_retracted,
    )
    errors: list[dict[str, str]] = []
    _check("country", filters.countries, None, errors)
    _check("group", filters.groups, {g.value for g in TargetGroup}, errors)
    _check("method", filters.methods, METHODS, errors)
    _check("ir", filters.ir_categories, {c.value for c in IrCategory}, errors)
    if occurred_from and occurred_to and occurred_from > occurred_to:
        errors.append({"pointer": "/query/from", "detail": "'from' is after 'to'"})
    if errors:
        raise Problem(422, "Unprocessable Content", "A query parameter is not valid.", errors=errors)
    return filters


Filters = Annotated[IncidentFilters, Depends(incident_filters)]
Reader = Annotated[Principal, Depends(authenticated)]


# --- Incidents -------------------------------------------------------------------------------


@router.get(
    "/v1/incidents/{incident_id}",
    tags=["incidents"],
    summary="One incident with its current classification",
    description=(
        "Narrative, sources and evidence spans only for the reporting partner and admins. Scope `incidents:read`."
    ),
    responses={**_json_example(INCIDENT_EXAMPLE, "The incident"), **NOT_MODIFIED, **PROBLEMS},
)
async def get_incident(incident_id: str, request: Request, principal: Reader) -> Response:
    require(principal, Scope.INCIDENTS_READ)

    async def build(conn: asyncpg.Connection, generation: str) -> Any:
        row = await store.get_incident(conn, generation, incident_id)
        if row is None or row["report"] is None:
            raise Problem(404, "Not Found", "No incident with this id.")
        return render_incident(row, with_confidential=_confidential_for(principal, row))

    return await _cached_json(request, principal, build)


@router.get(
    "/v1/incidents",
    tags=["incidents"],
    summary="Incidents matching the filters, newest first, a page at a time",
    description=(
        "Pass `next_cursor` back as `cursor` for the next page; it is null on the last page. Scope `incidents:read`."
    ),
    responses={
        **_json_example(
            {"incidents": [INCIDENT_EXAMPLE], "next_cursor": "WyIyMDIxLTA3LTE5IiwgImluY185ZjJjNGIxYSJd"},
            "A page of incidents",
        ),
        **NOT_MODIFIED,
        **PROBLEMS,
    },
)
async def list_incidents(
    request: Request,
    principal: Reader,
    filters: Filters,
    cursor: Annotated[str | None, Query(description="From the previous page's next_cursor")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size")] = 100,
) -> Response:
    require(principal, Scope.INCIDENTS_READ)
    try:
        after = Cursor.decode(cursor) if cursor else None
    except ValueError as exc:
        raise Problem(
            422, "Unprocessable Content", str(exc), errors=[{"pointer": "/query/cursor", "detail": str(exc)}]
        ) from exc

    async def build(conn: asyncpg.Connection, generation: str) -> Any:
        rows = await store.list_incidents(conn, generation, filters, cursor=after, limit=limit + 1)
        page = rows[:limit]
        more = len(rows) > limit
        return {
            "incidents": [render_incident(r, with_confidential=_confidential_for(principal, r)) for r in page],
            "next_cursor": Cursor(page[-1]["occurred_on"], page[-1]["incident_id"]).encode() if more else None,
        }

    return await _cached_json(request, principal, build)


@router.get(
    "/v1/targets/{target_ref}/timeline",
    tags=["incidents"],
    summary="Every incident and act for one target, in date order",
    description="Scope `incidents:read`. Retracted incidents only with include_retracted=true.",
    responses={
        **_json_example(
            {
                "target_ref": "tgt_5e0b7c",
                "incidents": [INCIDENT_EXAMPLE],
                "acts": [
                    {
                        "on": "2021-07-19",
                        "incident_id": "inc_9f2c4b1a",
                        "act_index": 0,
                        "type": "interpol_red_notice",
                        "actor": "prc_mps",
                        "status": "carried_out",
                        "country": "MA",
                    }
                ],
            },
            "The target's timeline",
        ),
        **NOT_MODIFIED,
        **PROBLEMS,
    },
)
async def target_timeline(
    target_ref: str,
    request: Request,
    principal: Reader,
    include_retracted: Annotated[bool, Query()] = False,
) -> Response:
    require(principal, Scope.INCIDENTS_READ)

    async def build(conn: asyncpg.Connection, generation: str) -> Any:
        rows = await store.target_incidents(conn, generation, target_ref, include_retracted=include_retracted)
        if not rows:
            raise Problem(404, "Not Found", "No incidents for this target.")
        rendered = [render_incident(r, with_confidential=_confidential_for(principal, r)) for r in rows]
        return timeline(target_ref, rows, rendered)

    return await _cached_json(request, principal, build)


# --- Statistics ------------------------------------------------------------------------------


@router.get(
    "/v1/stats",
    tags=["statistics"],
    summary="Incident counts by any of country, pace_method, ccdi_method, persuasion_channel, ir_category, group, year",
    description=(
        "Any valid API key may read statistics. Readers with `incidents:read` get exact counts and "
        "the total; others get cells under k (settings `TNR_STATS_K`, default 3) suppressed "
        "(`incidents: null, suppressed: true`), plus the smallest neighbouring cell where one "
        "hidden cell could otherwise be recovered by subtraction. An incident with two labels of "
        "one scheme counts in both cells; one with none counts under null. Retracted incidents "
        "are never counted."
    ),
    responses={
        **_json_example(
            {
                "by": ["country", "year"],
                "k": 3,
                "suppressed": True,
                "cells": [
                    {"country": "TH", "year": 2024, "incidents": 7},
                    {"country": "KG", "year": 2024, "incidents": None, "suppressed": True},
                ],
            },
            "The cube's cells",
        ),
        **NOT_MODIFIED,
        **PROBLEMS,
    },
)
async def get_stats(
    request: Request,
    principal: Reader,
    filters: Filters,
    by: Annotated[
        str, Query(description="Comma-separated dimensions; empty for the total", examples=["country,year"])
    ] = "",
) -> Response:
    dimensions = list(_values([by]))
    unknown = [d for d in dimensions if d not in STATS_DIMENSIONS]
    if unknown:
        raise Problem(
            422,
            "Unprocessable Content",
            f"Statistics are by {', '.join(STATS_DIMENSIONS)}.",
            errors=[{"pointer": "/query/by", "detail": f"unknown dimension {d!r}"} for d in unknown],
        )
    exact = principal.has(Scope.INCIDENTS_READ)
    k = request.app.state.settings.stats_k

    async def build(conn: asyncpg.Connection, generation: str) -> Any:
        cells = await store.stats(conn, generation, dimensions, filters)
        if exact:
            return {
                "by": dimensions,
                "k": None,
                "suppressed": False,
                "cells": cells,
                "total_incidents": await _total(conn, generation, filters),
            }
        return {"by": dimensions, "k": k, "suppressed": True, "cells": suppress(cells, dimensions, k)}

    return await _cached_json(request, principal, build)


async def _total(conn: asyncpg.Connection, generation: str, filters: IncidentFilters) -> int:
    rows = await store.stats(conn, generation, [], filters)
    return int(rows[0]["incidents"]) if rows else 0


# --- Exports ---------------------------------------------------------------------------------


async def _export(request: Request, principal: Reader, filters: IncidentFilters, kind: str) -> Response:
    require(principal, Scope.INCIDENTS_READ)
    pool: asyncpg.Pool = request.app.state.pool
    conn: asyncpg.Connection = await pool.acquire()
    transaction = conn.transaction(isolation="repeatable_read", readonly=True)
    await transaction.start()
    try:
        generation, version = await store.read_generation(conn)
        etag = _tag(request, principal, generation, version)
        headers = {
            "ETag": etag,
            "Cache-Control": "private, no-cache",
            "Vary": "Authorization",
            "Content-Disposition": f'attachment; filename="incidents.{kind}"',
        }
        if etag_matches(request.headers.get("if-none-match"), etag):
            await transaction.rollback()
            await pool.release(conn)
            return Response(status_code=304, headers=headers)
    except BaseException:
        await transaction.rollback()
        await pool.release(conn)
        raise

    async def lines() -> AsyncIterator[str]:
        # The connection (and its snapshot) is held while the body streams.
        try:
            if kind == "csv":
                yield _csv_line(list(CSV_COLUMNS))
            async for rows in store.iterate_incidents(conn, generation, filters):
                chunk = []
                for row in rows:
                    body = render_incident(row, with_confidential=_confidential_for(principal, row) and kind == "jsonl")
                    chunk.append(
                        _csv_line(csv_row(body)) if kind == "csv" else json.dumps(body, ensure_ascii=False) + "\n"
                    )
                yield "".join(chunk)
        finally:
            await transaction.rollback()
            await pool.release(conn)

    media = "text/csv; charset=utf-8" if kind == "csv" else "application/jsonl; charset=utf-8"
    return StreamingResponse(lines(), media_type=media, headers=headers)


def _csv_line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue()


@router.get(
    "/v1/export.csv",
    tags=["exports"],
    summary="The filtered incident list as CSV (labels only, never quoted text)",
    description="Same filters as /v1/incidents, all pages, one consistent snapshot. Scope `incidents:read`.",
    responses={
        200: {
            "description": "CSV",
            "content": {
                "text/csv": {
                    "example": ",".join(CSV_COLUMNS)
                    + "\r\ninc_9f2c4b1a,tgt_5e0b7c,2021-07-19,day,MA,Casablanca,uyghur,asylum_seeker,detained,"
                    "false,interpol_red_notice;detention_abroad,co_opting,extradition,,,taxonomy-v1\r\n"
                }
            },
        },
        **NOT_MODIFIED,
        **PROBLEMS,
    },
)
async def export_csv(request: Request, principal: Reader, filters: Filters) -> Response:
    return await _export(request, principal, filters, "csv")


@router.get(
    "/v1/export.jsonl",
    tags=["exports"],
    summary="The filtered incident list as JSON Lines, one incident per line",
    description="Same shape and confidentiality as /v1/incidents/{incident_id}. Scope `incidents:read`.",
    responses={
        200: {
            "description": "JSON Lines",
            "content": {"application/jsonl": {"example": json.dumps(INCIDENT_EXAMPLE) + "\n"}},
        },
        **NOT_MODIFIED,
        **PROBLEMS,
    },
)
async def export_jsonl(request: Request, principal: Reader, filters: Filters) -> Response:
    return await _export(request, principal, filters, "jsonl")


# --- Alerts view and status ------------------------------------------------------------------


@router.get(
    "/v1/dashboard/alerts",
    tags=["alerts"],
    summary="Alerts as the dashboard shows them (folded from the alerts service's events)",
    description="Scope `alerts:read`. For acknowledging and resolving, use the alerts service.",
    responses={
        **_json_example(
            {
                "alerts": [
                    {
                        "fingerprint": "R3_kidnapping_or_disappearance:tgt_5e0b7c",
                        "alert_id": "al_1",
                        "rule": "R3_kidnapping_or_disappearance",
                        "severity": "critical",
                        "status": "open",
                        "target_ref": "tgt_5e0b7c",
                        "place": None,
                        "incident_ids": ["inc_9f2c4b1a"],
                        "summary": "Kidnapping reported",
                        "first_seen": "2024-06-01T00:00:00+00:00",
                        "last_seen": "2024-06-01T00:00:00+00:00",
                        "deadline": None,
                    }
                ]
            },
            "Alerts, most severe first",
        ),
        **NOT_MODIFIED,
        **PROBLEMS,
    },
)
async def dashboard_alerts(
    request: Request,
    principal: Reader,
    status: Annotated[list[str], Query(description="open, acknowledged, resolved")] = ["open", "acknowledged"],  # noqa: B006
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> Response:
    require(principal, Scope.ALERTS_READ)
    statuses = _values(status)
    bad = [s for s in statuses if s not in {"open", "acknowledged", "resolved"}]
    if bad:
        raise Problem(
            422,
            "Unprocessable Content",
            "Unknown alert status.",
            errors=[{"pointer": "/query/status", "detail": f"unknown value {s!r}"} for s in bad],
        )

    async def build(conn: asyncpg.Connection, generation: str) -> Any:
        rows = await store.alerts(conn, generation, statuses, limit)
        return {"alerts": [{k: _iso(v) for k, v in r.items()} for r in rows]}

    return await _cached_json(request, principal, build)


@router.get(
    "/v1/projections/status",
    tags=["operations"],
    summary="Which generation serves reads and how many events it has applied",
    responses={
        **_json_example(
            {
                "generation": "projections_g2",
                "version": 412,
                "events_applied": 120345,
                "updated_at": "2026-01-15T10:00:00+00:00",
            },
            "Status",
        ),
        **PROBLEMS,
    },
)
async def projections_status(request: Request, principal: Reader) -> dict[str, Any]:
    async with _snapshot(request) as (conn, generation, _):
        state = await store.progress(conn, generation)
    return {
        "generation": generation,
        "version": state["version"],
        "events_applied": state["events_applied"],
        "updated_at": state["updated_at"].isoformat(),
    }


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date | datetime) else value


# --- The dashboard page ----------------------------------------------------------------------

_ASSETS = {
    "app.js": "text/javascript",
    "style.css": "text/css",
    "chart.umd.min.js": "text/javascript",
}


# Everything the page runs comes from this service: no inline script, no third-party origin.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@router.get("/dashboard", include_in_schema=False)
async def dashboard_page() -> HTMLResponse:
    return HTMLResponse(
        (DASHBOARD / "src" / "index.html").read_text(encoding="utf-8"),
        headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"},
    )


@router.get("/dashboard/assets/{name}", include_in_schema=False)
async def dashboard_asset(name: str) -> Response:
    media = _ASSETS.get(name)
    path = DASHBOARD / ("vendor" if name == "chart.umd.min.js" else "src") / name
    if media is None or not path.is_file():
        detail = (
            "The charting library is not built: run `npm --prefix services/projections/dashboard ci"
            " && npm --prefix services/projections/dashboard run build`."
            if name == "chart.umd.min.js"
            else "No such asset."
        )
        raise Problem(404, "Not Found", detail)
    return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})
