"""Intake service wiring: settings, database, producer, app."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from services.intake.api import EVENTS_PATH, EventsFastPath, IntakeHttp, openapi_components, router
from services.intake.service import IntakeContext, stop_background
from services.intake.vault import master_key_from
from shared.db import create_pool, prepare_database
from shared.kafka import ensure_topics, make_producer, topics_for
from shared.runtime import collect_less, configure_logging, serve
from shared.settings import Settings, get_settings
from shared.telemetry import setup_tracing
from shared.web import ReadinessCheck, create_service_app, pool_check

MIGRATIONS = Path(__file__).parent / "migrations"
DEFAULT_PORT = 8081
# Larger record batches: under load many requests share a produce request (fewer round trips
# to the broker, measured +25% events per CPU-second in batch mode); the guarantees (acks=all,
# idempotence) are make_producer's and unchanged. Linger 1 ms, not 5: aiokafka keeps one
# produce request in flight per broker, so records batch up behind it anyway, and 5 ms of
# linger held each wave of concurrent single posts with the worker idle (0.76-0.81 of a core
# busy at 64 connections, against 0.92-0.93 with 1 ms; docs/intake.md, "Night round").
PRODUCER_TUNING: dict[str, Any] = {"linger_ms": 1, "max_batch_size": 256 * 1024}
log = logging.getLogger(__name__)
# One generic plan per prepared statement and connection, never a custom one: planning
# intake's claim for one report cost ~0.4 ms against ~0.25 ms running it, on every request.
# Its statements read intake_reports and intake_target_keys only by primary-key probes (see
# store.py), and with sequential scans off those are the plans whatever the table's size was
# at planning time (an empty or small table made "scan it all" look cheaper: a generic plan
# keeps that as the table grows). Checked with EXPLAIN ANALYZE at 1, 100 and 5,000 rows a
# statement, planned on an empty, a 60-row and a 100,000-row table (docs/intake.md).
# (force_custom_plan before this: with the default "auto" PostgreSQL switched to generic plans
# made while the table was small, and a batch's settlement took 190-420 ms.) JIT off: a
# sequential scan with no other path (partner_sources in the API key's look-up) still costs
# the planner's "disabled" penalty, far above jit_above_cost, and compiling it took ~250 ms
# on every request; none of intake's statements is long enough for JIT to pay.
SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off", "jit": "off"}


async def _no_session_reset(conn: asyncpg.Connection) -> None:
    """Intake leaves no session state on a connection (no SET, LISTEN or lock held past its
    statement; transactions are closed by asyncpg itself), so the default reset query, one
    more round trip on every pooled statement, is skipped."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    key = settings.pseudonym_key.get_secret_value()
    if not key:
        raise RuntimeError("TNR_PSEUDONYM_KEY is not set: intake refuses to start without it")
    master = settings.identity_master_key.get_secret_value()
    if not master:
        raise RuntimeError("TNR_IDENTITY_MASTER_KEY is not set: intake refuses to start without it")
    master_key = master_key_from(master)
    publish_timeout = settings.kafka_request_timeout_ms / 1000

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_tracing("intake")
        pool = await create_pool(settings.database_url, max_size=20, reset=_no_session_reset,
                                 server_settings=SERVER_SETTINGS)
        await prepare_database(pool, "intake", MIGRATIONS)
        await ensure_topics(settings)
        producer = make_producer(settings.model_copy(update={"service_name": "intake"}), **PRODUCER_TUNING)
        await producer.start()
        ctx = IntakeContext(
            pool=pool,
            producer=producer,
            incidents_topic=topics_for(settings).incidents,
            pseudonym_key=key.encode(),
            master_key=master_key,
            # Claims carry the instance that made them: a restarted intake is a new instance.
            instance=f"intake-{uuid.uuid4().hex[:12]}",
            publish_timeout=publish_timeout,
        )
        app.state.intake = ctx
        app.state.intake_http = IntakeHttp.create(
            auth_cache_seconds=settings.auth_cache_seconds,
            rate_limit_per_minute=settings.rate_limit_per_minute,
            max_event_bytes=settings.max_event_bytes,
            max_batch_bytes=settings.max_batch_bytes,
        )
        try:
            yield
        finally:
            await stop_background(ctx, within=publish_timeout * 2)
            try:
                # Flushes what is still buffered; bounded, since the broker may be gone.
                await asyncio.wait_for(producer.stop(), publish_timeout * 2)
            except TimeoutError:
                log.warning("the producer did not stop in time; unsettled claims are taken over later")
            await pool.close()

    def readiness(app: FastAPI) -> list[ReadinessCheck]:
        async def kafka() -> str | None:
            ctx = getattr(app.state, "intake", None)
            if ctx is None:
                return "starting"
            try:  # bounded: a broker that does not answer makes intake unready, not hung
                await asyncio.wait_for(ctx.producer.client.fetch_all_metadata(), 2.0)
            except TimeoutError:
                return "kafka: no metadata within 2 s"
            return None

        return [pool_check(lambda: getattr(getattr(app.state, "intake", None), "pool", None)), kafka]

    app = create_service_app(
        title="tnrwatch intake", version="1", lifespan=lifespan, readiness=readiness
    )
    app.include_router(router)
    # POST /v1/events past FastAPI's routing layers (api.EventsFastPath); the route stays for
    # the OpenAPI document and names the server span.
    events_route = next(r for r in router.routes if getattr(r, "path", None) == EVENTS_PATH)
    app.add_middleware(EventsFastPath, route=events_route)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(openapi_components())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def worker_app() -> FastAPI:
    """The app of one of several worker processes (``TNR_INTAKE_WORKERS`` > 1): uvicorn calls
    this in each worker."""
    settings = get_settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    collect_less()
    return app


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    if settings.intake_workers > 1:
        # Each worker has its own producer, pool, key cache and rate buckets; claims in
        # PostgreSQL keep a report posted to two workers at once written once.
        serve(None, default_port=DEFAULT_PORT, workers=settings.intake_workers,
              app_factory="services.intake.main:worker_app")
        return
    app = create_app(settings)
    collect_less()
    serve(app, default_port=DEFAULT_PORT)


if __name__ == "__main__":
    main()
