"""A projections service of its own per test module, on its own database and topics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from services.projections.main import create_app
from shared.settings import Settings
from tests.harness import drop_database, in_process, isolated_settings, issue_key
from tests.infra import Infra


@dataclass
class Projections:
    settings: Settings
    client: httpx.AsyncClient
    keys: dict[str, str]

    def auth(self, who: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[who]}"}


async def make_keys(settings: Settings) -> dict[str, str]:
    return {
        "ngo_a": await issue_key(
            settings, partner="ngo-a", sources=["urn:partner:ngo-a"], scopes=["incidents:read", "alerts:read"]
        ),
        "ngo_b": await issue_key(settings, partner="ngo-b", sources=["urn:partner:ngo-b"], scopes=["incidents:read"]),
        "public": await issue_key(settings, partner="newsroom", sources=[], scopes=[]),
        "admin": await issue_key(settings, partner="ops", sources=[], scopes=["admin"]),
    }


@pytest.fixture(scope="module")
async def module_settings(infra: Infra) -> AsyncIterator[Settings]:
    value = await isolated_settings(infra.kafka_bootstrap, infra.database_url)
    yield value
    await drop_database(infra.database_url, value)


@pytest.fixture(scope="module")
async def projections(module_settings: Settings) -> AsyncIterator[Projections]:
    async with in_process(create_app(module_settings)) as client:
        yield Projections(module_settings, client, await make_keys(module_settings))
