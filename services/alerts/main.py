"""Alerts wiring: rules and receivers from their files (validated before anything starts), the
consumer of classified incidents, the delivery workers and the alerts API (port 8083)."""

from __future__ import annotations

import gc
from pathlib import Path

from fastapi import FastAPI

from services.alerts import service
from services.alerts.api import router
from services.alerts.delivery import delivery_extra
from services.alerts.engine import Engine
from services.alerts.receivers import load_receivers
from services.alerts.rules import load_rules
from shared.consumer_app import ConsumerService, create_consumer_app
from shared.runtime import configure_logging, serve
from shared.settings import Settings, get_settings

DEFAULT_PORT = 8083
COMPONENT = "alerts"
MIGRATIONS = Path(__file__).parent / "migrations"


def build_spec(settings: Settings) -> ConsumerService:
    """Raises RulesError / ReceiversError with every problem listed: the service does not start."""
    rules = load_rules(settings.rules_file or None)
    receivers = load_receivers(settings.receivers_file or None)
    handler = service.AlertsHandler(Engine(rules), receivers)
    return ConsumerService(
        component=COMPONENT,
        title="tnrwatch alerts",
        migrations=MIGRATIONS,
        topics=lambda t: [t.classifications],
        decode=service.decode,
        handle=handler,
        staged=handler,  # batch N+1 is folded while batch N commits
        routers=[router],
        extras=[delivery_extra(settings, receivers)],
    )


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
