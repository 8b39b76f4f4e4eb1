"""Alerts wiring: rules and receivers from their files (validated before anything starts), the
consumer of classified incidents, the delivery workers and the alerts API (port 8083)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from fastapi import FastAPI

from services.alerts import service
from services.alerts.api import router
from services.alerts.delivery import delivery_extra
from services.alerts.engine import Engine
from services.alerts.receivers import load_receivers
from services.alerts.rules import load_rules
from shared.consumer_app import ConsumerService, Extra, create_consumer_app
from shared.runtime import Supervised, configure_logging, serve
from shared.settings import Settings, get_settings

DEFAULT_PORT = 8083
COMPONENT = "alerts"
MIGRATIONS = Path(__file__).parent / "migrations"


def build_spec(settings: Settings) -> ConsumerService:
    """Raises RulesError / ReceiversError with every problem listed: the service does not start."""
    rules = load_rules(settings.rules_file or None)
    receivers = load_receivers(settings.receivers_file or None)
    handler = service.AlertsHandler(Engine(rules), receivers, settings.alerts_state_cache)
    return ConsumerService(
        component=COMPONENT,
        title="tnrwatch alerts",
        migrations=MIGRATIONS,
        topics=lambda t: [t.classifications],
        decode=service.decode,
        handle=handler,
        staged=handler,  # batch N+1 is folded while batch N commits
        routers=[router],
        extras=[delivery_extra(settings, receivers), restore_extra(handler)],
    )


def restore_extra(handler: service.AlertsHandler) -> Extra:
    """The state cache filled from the table beside the consumer (retried if it fails)."""

    @asynccontextmanager
    async def extra(app: FastAPI, pool: asyncpg.Pool) -> AsyncIterator[None]:
        async def run() -> None:
            await handler.restore(pool)

        restore = Supervised("alerts-restore", run)
        restore.start()
        try:
            yield
        finally:
            await restore.stop(None, 0.0)

    return extra


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    spec = build_spec(settings)
    app = create_consumer_app(spec, settings)
    handler = spec.handle
    assert isinstance(handler, service.AlertsHandler)
    app.state.receivers = handler.receivers
    return app


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    # The rule state held in memory is millions of long-lived objects: full collections of
    # them are what the default thresholds spend most time on (see benchmarks/alerts_engine).
    gc.set_threshold(100_000, 50, 100)
    service.HEAP.enable()  # what each committed batch leaves is frozen (see HeapFreezer)
    serve(create_app(settings), default_port=DEFAULT_PORT)


if __name__ == "__main__":
    main()
