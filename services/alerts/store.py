"""Alerts in PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from services.alerts.engine import Finding


async def upsert_alert(conn: asyncpg.Connection, finding: Finding) -> None:
    await conn.execute(
        """INSERT INTO alerts (alert_id, fingerprint, rule, severity, target_ref, place,
                               incident_ids, matched_acts, summary, deadline)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
           ON CONFLICT (fingerprint) DO UPDATE SET
               incident_ids = (SELECT array_agg(DISTINCT i) FROM unnest(alerts.incident_ids || EXCLUDED.incident_ids) i),
               matched_acts = alerts.matched_acts || EXCLUDED.matched_acts,
               summary = EXCLUDED.summary,
               last_seen = now()""",
        str(uuid.uuid4()),
        finding.fingerprint,
        finding.rule,
        finding.severity.value,
        finding.target_ref,
        finding.place,
        list(finding.incident_ids),
        [m.model_dump(mode="json") for m in finding.matched_acts],
        finding.summary,
        finding.deadline,
    )


async def list_alerts(
    pool: asyncpg.Pool, *, status: str | None, severity: str | None, target_ref: str | None
) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """SELECT * FROM alerts
            WHERE ($1::text IS NULL OR status = $1)
              AND ($2::text IS NULL OR severity = $2)
              AND ($3::text IS NULL OR target_ref = $3)
            ORDER BY last_seen DESC LIMIT 500""",
        status,
        severity,
        target_ref,
    )
    return [
        {
            "alert_id": r["alert_id"],
            "fingerprint": r["fingerprint"],
            "rule": r["rule"],
            "severity": r["severity"],
            "status": r["status"],
            "target_ref": r["target_ref"],
            "place": r["place"],
            "incident_ids": list(r["incident_ids"]),
            "matched_acts": r["matched_acts"],
            "summary": r["summary"],
            "first_seen": r["first_seen"].isoformat(),
            "last_seen": r["last_seen"].isoformat(),
            "deadline": r["deadline"].isoformat() if r["deadline"] else None,
        }
        for r in rows
    ]
