"""An isolated stack for the alerts tests (own database, topics and two partners)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from shared.settings import Settings
from tests.alerts.helpers import Partner
from tests.conftest import Stack, start_stack
from tests.harness import drop_database, isolated_settings, issue_key
from tests.infra import Infra

SCOPES = ["events:write", "incidents:read", "alerts:read", "alerts:write"]


@dataclass
class AlertsWorld:
    stack: Stack
    a: Partner
    b: Partner
    reader: Partner  # alerts:read only


async def partners(settings: Settings) -> tuple[Partner, Partner, Partner]:
    a = Partner(
        "partner-a",
        "urn:partner:a",
        await issue_key(settings, partner="partner-a", sources=["urn:partner:a"], scopes=SCOPES),
    )
    b = Partner(
        "partner-b",
        "urn:partner:b",
        await issue_key(settings, partner="partner-b", sources=["urn:partner:b"], scopes=SCOPES),
    )
    reader = Partner(
        "monitor-readonly",
        "urn:partner:readonly",
        await issue_key(settings, partner="monitor-readonly", sources=["urn:partner:readonly"], scopes=["alerts:read"]),
    )
    return a, b, reader


@pytest.fixture(scope="module")
async def alerts_world(infra: Infra) -> AsyncIterator[AlertsWorld]:
    settings = await isolated_settings(infra.kafka_bootstrap, infra.database_url)
    try:
        a, b, reader = await partners(settings)
        async for stack in start_stack(settings):
            yield AlertsWorld(stack, a, b, reader)
    finally:
        await drop_database(infra.database_url, settings)
