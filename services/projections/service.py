"""Projections' service layer: fold a batch of events into the read models in one transaction."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from opentelemetry import trace
from pydantic import BaseModel

from services.projections.folding import IncidentView, apply
from services.projections.store import load_views, save_views
from shared.consumer import Consumed
from shared.events import CloudEvent, IncidentClassified, IncidentRecorded, IncidentRetracted
from shared.serialization import event_data




def decode(event: CloudEvent) -> BaseModel:
    return event_data(event)


def _incident_id(data: BaseModel) -> str | None:
    if isinstance(data, IncidentRecorded | IncidentRetracted):
        return data.incident_id
    if isinstance(data, IncidentClassified):
        return data.incident.incident_id
    return None


async def handle(conn: asyncpg.Connection, batch: Sequence[Consumed[BaseModel]]) -> None:
    with trace.get_tracer("tnrwatch.projections").start_as_current_span("projections write"):
        ids = sorted({i for item in batch if (i := _incident_id(item.value)) is not None})
        views: dict[str, IncidentView | None] = dict(await load_views(conn, ids))
        changed: set[str] = set()
        for item in batch:
            incident_id = _incident_id(item.value)
            if incident_id is None:
                continue
            views[incident_id] = apply(views.get(incident_id), item.value)
            changed.add(incident_id)
        await save_views(conn, [v for i in sorted(changed) if (v := views[i]) is not None])
