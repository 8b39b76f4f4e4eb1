"""Projections wiring: the read models and the read API (port 8082)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.projections import service
from services.projections.api import router
from shared.consumer_app import ConsumerService, create_consumer_app
from shared.runtime import configure_logging, serve
from shared.settings import Settings, get_settings

DEFAULT_PORT = 8082

SPEC = ConsumerService(
    component="projections",
    title="tnrwatch projections",
    migrations=Path(__file__).parent / "migrations",
    topics=lambda t: [t.incidents, t.classifications],
    decode=service.decode,
    handle=service.handle,
    routers=[router],
)


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_consumer_app(SPEC, settings or get_settings())


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    serve(create_app(settings), default_port=DEFAULT_PORT)


if __name__ == "__main__":
    main()
