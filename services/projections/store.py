"""Incident views in PostgreSQL: loaded and written a batch at a time."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from services.projections.folding import IncidentView
from shared.events import Classification, IncidentRecorded


def _to_json(view: IncidentView) -> dict[str, Any]:
    return {
        "incident_id": view.incident_id,
        "target_ref": view.target_ref,
        "partner": view.partner,
        "report": view.report.model_dump(mode="json") if view.report else None,
        "classification": view.classification.model_dump(mode="json", by_alias=True) if view.classification else None,
        "classified_report_id": view.classified_report_id,
        "classified_received_at": view.classified_received_at.isoformat() if view.classified_received_at else None,
        "retracted": view.retracted,
        "retraction_reason": view.retraction_reason,
    }


def _from_json(raw: dict[str, Any]) -> IncidentView:
    return IncidentView(
        incident_id=raw["incident_id"],
        target_ref=raw["target_ref"],
        partner=raw["partner"],
        report=IncidentRecorded.model_validate(raw["report"]) if raw["report"] else None,
        classification=Classification.model_validate(raw["classification"]) if raw["classification"] else None,
        classified_report_id=raw["classified_report_id"],
        classified_received_at=datetime.fromisoformat(raw["classified_received_at"]) if raw["classified_received_at"] else None,
        retracted=raw["retracted"],
        retraction_reason=raw["retraction_reason"],
    )


async def load_views(conn: asyncpg.Connection | asyncpg.Pool, incident_ids: list[str]) -> dict[str, IncidentView]:
    rows = await conn.fetch("SELECT view FROM incidents WHERE incident_id = ANY($1::text[])", incident_ids)
    return {r["view"]["incident_id"]: _from_json(r["view"]) for r in rows}


async def save_views(conn: asyncpg.Connection, views: list[IncidentView]) -> None:
    await conn.executemany(
        """INSERT INTO incidents (incident_id, target_ref, partner, occurred_on, country, retracted, view)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (incident_id) DO UPDATE SET
               target_ref = EXCLUDED.target_ref, occurred_on = EXCLUDED.occurred_on,
               country = EXCLUDED.country, retracted = EXCLUDED.retracted,
               view = EXCLUDED.view, updated_at = now()""",
        [
            (
                v.incident_id,
                v.target_ref,
                v.partner,
                v.report.facts.occurred_on if v.report else None,
                v.report.facts.location.country if v.report else None,
                v.retracted,
                _to_json(v),
            )
            for v in views
        ],
    )
