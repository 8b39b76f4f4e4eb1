"""Intake service wiring: settings, database, producer, app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from services.intake.api import router
from services.intake.service import IntakeContext
from shared.db import create_pool, prepare_database
from shared.kafka import ensure_topics, make_producer, topics_for
from shared.runtime import configure_logging, serve
from shared.settings import Settings, get_settings
from shared.telemetry import setup_tracing
from shared.web import ReadinessCheck, create_service_app, pool_check

MIGRATIONS = Path(__file__).parent / "migrations"
DEFAULT_PORT = 8081


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    key = settings.pseudonym_key.get_secret_value()
    if not key:
        raise RuntimeError("TNR_PSEUDONYM_KEY is not set: intake refuses to start without it")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_tracing("intake")
        pool = await create_pool(settings.database_url)
        await prepare_database(pool, "intake", MIGRATIONS)
        await ensure_topics(settings)
        producer = make_producer(settings.model_copy(update={"service_name": "intake"}))
        await producer.start()
        app.state.intake = IntakeContext(
            pool=pool,
            producer=producer,
            incidents_topic=topics_for(settings).incidents,
            pseudonym_key=key.encode(),
        )
        try:
            yield
        finally:
            await producer.stop()
            await pool.close()

    def readiness(app: FastAPI) -> list[ReadinessCheck]:
        async def kafka() -> str | None:
            ctx = getattr(app.state, "intake", None)
            if ctx is None:
                return "starting"
            await ctx.producer.client.fetch_all_metadata()
            return None

        return [pool_check(lambda: getattr(getattr(app.state, "intake", None), "pool", None)), kafka]

    app = create_service_app(
        title="tnrwatch intake", version="1", lifespan=lifespan, readiness=readiness
    )
    app.include_router(router)
    return app


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    serve(create_app(settings), default_port=DEFAULT_PORT)


if __name__ == "__main__":
    main()
