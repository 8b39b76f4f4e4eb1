"""What every service's HTTP side shares: health, readiness, metrics, problem details.

One server span per request (W3C trace context in, named by the route template, never by
the path's values), from a plain ASGI middleware: FastAPI's own telemetry is switched off, as it
adds two spans a request on the hot path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from opentelemetry import propagate, trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.problems import install_problem_handlers

NO_NATIVE_TELEMETRY: dict[str, Any] = {
    "tracing": False, "metrics": False, "logs": False, "operation_spans": False,
}

ReadinessCheck = Callable[[], Awaitable[str | None]]  # None when ready, else the reason

log = logging.getLogger(__name__)


class ServerSpanMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.tracer = trace.get_tracer("tnrwatch.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracer.start_as_current_span(
            method, context=propagate.extract(carrier), kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method},
        ) as span:
            try:
                await self.app(scope, receive, send_with_status)
            finally:
                route = scope.get("route")
                if route is not None:
                    span.update_name(f"{method} {getattr(route, 'path', '')}")
                span.set_attribute("http.response.status_code", status)


def create_service_app(
    *,
    title: str,
    version: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    readiness: Callable[[FastAPI], list[ReadinessCheck]],
    description: str = "",
    **kwargs: Any,
) -> FastAPI:
    kwargs.setdefault("telemetry", NO_NATIVE_TELEMETRY)
    app = FastAPI(title=title, version=version, lifespan=lifespan, description=description, **kwargs)
    install_problem_handlers(app)
    app.add_middleware(ServerSpanMiddleware)

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
