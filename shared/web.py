"""What every service's HTTP side shares: health, readiness, metrics, problem details.

Server spans come from FastAPI's own OpenTelemetry support (W3C trace context in, one span
per request named by the route template).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.problems import install_problem_handlers

ReadinessCheck = Callable[[], Awaitable[str | None]]  # None when ready, else the reason

log = logging.getLogger(__name__)


def create_service_app(
    *,
    title: str,
    version: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    readiness: Callable[[FastAPI], list[ReadinessCheck]],
    description: str = "",
    **kwargs: Any,
) -> FastAPI:
    app = FastAPI(title=title, version=version, lifespan=lifespan, description=description, **kwargs)
    install_problem_handlers(app)

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Connected to Kafka and PostgreSQL")
    async def readyz() -> JSONResponse:
        reasons = []
        for check in readiness(app):
            try:
                reason = await check()
            except Exception as exc:  # a failing check is an unready service, not a 500
                reason = f"{type(exc).__name__}: {exc}"
            if reason:
                reasons.append(reason)
        if reasons:
            return JSONResponse({"status": "unready", "reasons": reasons}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["operations"], summary="Prometheus text format")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def pool_check(get_pool: Callable[[], Any]) -> ReadinessCheck:
    async def check() -> str | None:
        pool = get_pool()
        if pool is None:
            return "database pool not open"
        await pool.fetchval("SELECT 1")
        return None

    return check
