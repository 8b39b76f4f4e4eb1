"""Fixtures: the real infrastructure, isolated settings per test module, the running stack."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.settings import Settings
from shared.telemetry import setup_tracing
from tests.harness import drop_database, in_process, isolated_settings, issue_key
from tests.infra import Infra, start_infra

# Installed before any service starts, so every span of the session lands here.
SPANS = InMemorySpanExporter()
setup_tracing("tnrwatch-tests", exporter=SPANS)


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with ExitStack() as stack:
        yield start_infra(stack)


@pytest.fixture(scope="session")
async def settings(infra: Infra) -> AsyncIterator[Settings]:
    """One isolated database and topic prefix for the whole session's shared stack."""
    value = await isolated_settings(infra.kafka_bootstrap, infra.database_url)
    yield value
    await drop_database(infra.database_url, value)


@pytest.fixture
async def fresh_settings(infra: Infra) -> AsyncIterator[Settings]:
    """A clean slate (own database and topics) for tests that count everything."""
    value = await isolated_settings(infra.kafka_bootstrap, infra.database_url)
    yield value
    await drop_database(infra.database_url, value)


@dataclass
class Stack:
    settings: Settings
    intake: httpx.AsyncClient
    classifier: httpx.AsyncClient
    alerts: httpx.AsyncClient
    projections: httpx.AsyncClient


async def start_stack(settings: Settings) -> AsyncIterator[Stack]:
    from services.alerts.main import create_app as alerts_app
    from services.classifier.main import create_app as classifier_app
    from services.intake.main import create_app as intake_app
    from services.projections.main import create_app as projections_app

    async with (
        in_process(intake_app(settings)) as intake,
        in_process(classifier_app(settings)) as classifier,
        in_process(alerts_app(settings)) as alerts,
        in_process(projections_app(settings)) as projections,
    ):
        yield Stack(settings, intake, classifier, alerts, projections)


@pytest.fixture(scope="session")
async def stack(settings: Settings) -> AsyncIterator[Stack]:
    """All four services in this process, on the session's database and topics."""
    async for value in start_stack(settings):
        yield value


@pytest.fixture(scope="session")
async def partner_key(settings: Settings) -> str:
    return await issue_key(
        settings,
        partner="sample-ngo",
        sources=["urn:partner:sample-ngo"],
        scopes=["events:write", "incidents:read", "alerts:read", "alerts:write"],
    )
