"""Alerts' service layer: one batch of classified events in, one database transaction out."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from pydantic import BaseModel

from services.alerts.engine import evaluate
from services.alerts.store import upsert_alert
from shared.consumer import Consumed
from shared.events import CloudEvent, IncidentClassified
from shared.serialization import event_data




def decode(event: CloudEvent) -> BaseModel:
    return event_data(event)


async def handle(conn: asyncpg.Connection, batch: Sequence[Consumed[BaseModel]]) -> None:
    for item in batch:
        if isinstance(item.value, IncidentClassified):
            for finding in evaluate(item.value):
                await upsert_alert(conn, finding)
