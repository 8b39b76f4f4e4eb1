"""Intake fixtures: one intake in this process per test module, on its own database and
topics, with keys for a partner, a second partner, an admin and a read-only reader."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.kafka import topics_for
from shared.settings import Settings
from tests.harness import drop_database, in_process, isolated_settings, issue_key
from tests.infra import Infra

DATA = Path(__file__).resolve().parent.parent / "data"
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
SOURCE = "urn:partner:sample-ngo"
OTHER_SOURCE = "urn:partner:other-ngo"


@dataclass
class Keys:
    partner: str  # events:write on SOURCE
    other: str  # events:write on OTHER_SOURCE (a second partner)
    admin: str  # admin on urn:tnrwatch:ops
    reader: str  # incidents:read only, on SOURCE


def auth(key: str, content_type: str | None = STRUCTURED) -> dict[str, str]:
    headers = {"authorization": f"Bearer {key}"}
    if content_type:
        headers["content-type"] = content_type
    return headers


def samples() -> list[dict[str, Any]]:
    return [json.loads(line)["event"] for line in (DATA / "incidents.jsonl").read_text().splitlines() if line]


def report(event_id: str, *, subject: str | None = None, source: str = SOURCE, **data: Any) -> dict[str, Any]:
    """A valid incident report (sample 01's data) with a fresh id; ``data`` overrides fields."""
    event = copy.deepcopy(samples()[0])
    event.update(id=event_id, subject=subject or f"REF-{event_id}", source=source)
    event["data"].update(data)
    return dict(event)


def body(event: Any) -> bytes:
    return json.dumps(event).encode()


async def make_settings(infra: Infra, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"rate_limit_per_minute": 1_000_000, "kafka_request_timeout_ms": 3000}
    values.update(overrides)
    return await isolated_settings(infra.kafka_bootstrap, infra.database_url, **values)


async def make_keys(settings: Settings) -> Keys:
    return Keys(
        partner=await issue_key(settings, partner="sample-ngo", sources=[SOURCE],
                                scopes=["events:write", "incidents:read"]),
        other=await issue_key(settings, partner="other-ngo", sources=[OTHER_SOURCE], scopes=["events:write"]),
        admin=await issue_key(settings, partner="tnrwatch-ops", sources=["urn:tnrwatch:ops"], scopes=["admin"]),
        reader=await issue_key(settings, partner="sample-ngo", sources=[SOURCE], scopes=["incidents:read"]),
    )


@pytest.fixture(scope="module")
async def intake_settings(infra: Infra) -> AsyncIterator[Settings]:
    value = await make_settings(infra)
    yield value
    await drop_database(infra.database_url, value)


@pytest.fixture(scope="module")
async def keys(intake_settings: Settings) -> Keys:
    return await make_keys(intake_settings)


@pytest.fixture(scope="module")
async def intake(intake_settings: Settings, keys: Keys) -> AsyncIterator[httpx.AsyncClient]:
    from services.intake.main import create_app

    async with in_process(create_app(intake_settings)) as client:
        yield client


async def log_records(settings: Settings) -> list[Any]:
    """Every record on the incidents topic (the log), from the beginning to the end."""
    topic = topics_for(settings).incidents
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        records: list[Any] = []
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            batch = await consumer.getmany(timeout_ms=1000)
            for items in batch.values():
                records.extend(items)
        return records
    finally:
        await consumer.stop()
