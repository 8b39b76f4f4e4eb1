"""Alerts wiring: the consumer of classified incidents and the alerts API (port 8083)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.alerts import service
from services.alerts.api import router
from shared.consumer_app import ConsumerService, create_consumer_app
from shared.runtime import configure_logging, serve
from shared.settings import Settings, get_settings

DEFAULT_PORT = 8083

SPEC = ConsumerService(
    component="alerts",
    title="tnrwatch alerts",
    migrations=Path(__file__).parent / "migrations",
    topics=lambda t: [t.classifications],
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
