"""Projections wiring: the read models, the read API and the dashboard (port 8082)."""

from __future__ import annotations

from fastapi import FastAPI

from services.projections import service
from services.projections.api import router
from services.projections.rebuild import COMPONENT, MIGRATIONS
from shared.consumer_app import ConsumerService, create_consumer_app
from shared.runtime import collect_less, configure_logging, serve
from shared.settings import Settings, get_settings

DEFAULT_PORT = 8082

SPEC = ConsumerService(
    component=COMPONENT,
    title="tnrwatch projections",
    migrations=MIGRATIONS,
    topics=lambda t: [t.incidents, t.classifications, t.alerts],
    decode=service.decode,
    handle=service.handle,
    routers=[router],
    # Dashboards can wait a quarter of a second; the alert path cannot. Without this every
    # record appended to any of the three topics answered a fetch of its own
    # (fetch_min_bytes=1): hundreds of fetch round trips a second at 200 reports/s, broker and
    # PostgreSQL CPU taken from the classifier and alerts on the same machine. Each batch has
    # a fixed cost (a dozen statements): 250 ms rather than 100 took the projections' CPU per
    # report at 200/s from 0.60-0.62 to 0.44-0.52 ms (3 Dec 2026).
    consumer_options={"fetch_min_bytes": 1 << 20, "fetch_max_wait_ms": 250},
)

DESCRIPTION = """Read models folded from the log: incidents with their current classification,
targets' timelines, a statistics cube, the alerts view; and the dashboard at `/dashboard`.

Authentication: `Authorization: Bearer <API key>`. `incidents:read` sees incidents and exact
statistics; any other valid key sees statistics with small cells suppressed. Narrative, sources
and evidence spans go only to the reporting partner and admins. Errors are
`application/problem+json` (RFC 9457). Every read has an `ETag` and honours `If-None-Match`."""


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_consumer_app(SPEC, settings or get_settings(), description=DESCRIPTION)


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    collect_less()
    serve(app, default_port=DEFAULT_PORT)


if __name__ == "__main__":
    main()
