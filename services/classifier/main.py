"""Classifier wiring: the transactional loop, and health and metrics on port 8084."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.classifier.service import ClassifierLoop
from shared.kafka import ensure_topics
from shared.runtime import Supervised, configure_logging, serve
from shared.settings import Settings, get_settings
from shared.telemetry import setup_tracing
from shared.web import ReadinessCheck, create_service_app

DEFAULT_PORT = 8084


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    loop = ClassifierLoop(settings)
    supervised = Supervised("classifier-loop", loop.run)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_tracing("classifier")
        await ensure_topics(settings)
        supervised.start()
        try:
            yield
        finally:
            await supervised.stop(loop.stop)

    def readiness(app: FastAPI) -> list[ReadinessCheck]:
        async def consuming() -> str | None:
            return None if loop.ready else (supervised.last_error or "not yet consuming")

        return [consuming]

    app = create_service_app(
        title="tnrwatch classifier", version="1", lifespan=lifespan, readiness=readiness
    )
    app.state.classifier = loop
    return app


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    serve(create_app(settings), default_port=DEFAULT_PORT)


if __name__ == "__main__":
    main()
