"""Alerts' service layer: one batch of classified incidents and retractions in, one database
transaction out (rule state, alerts, their history, the outbox, and the consumer offsets)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
from prometheus_client import Counter
from pydantic import BaseModel

from services.alerts import store
from services.alerts.engine import (
    Cause,
    Change,
    Engine,
    Evaluation,
    IncidentSnapshot,
    KeyState,
    Removal,
    Upsert,
)
from services.alerts.lifecycle import AlertChange, on_evaluation
from services.alerts.receivers import KAFKA_RECEIVER, ReceiversConfig
from services.alerts.store import IncidentFiling, Outgoing, Silence
from shared.consumer import Consumed
from shared.events import CloudEvent, IncidentClassified, IncidentRetracted
from shared.serialization import event_data

log = logging.getLogger(__name__)

ALERT_CHANGES = Counter("tnrwatch_alert_changes_total", "Alert changes", ["rule", "kind"])
_ALERT_NAMESPACE = uuid.UUID("0b7f6c52-3a0e-4c71-9d3c-6f4f0e2a9b15")


def alert_id_for(fingerprint: str) -> str:
    """Stable: the same situation has the same alert id, even after a rebuild."""
    return str(uuid.uuid5(_ALERT_NAMESPACE, fingerprint))


def decode(event: CloudEvent) -> BaseModel:
    return event_data(event)


def outgoing_for(
    change: AlertChange,
    receivers: ReceiversConfig,
    silenced: bool,
    event_json: dict[str, Any] | None = None,
    api_json: dict[str, Any] | None = None,
) -> list[Outgoing]:
    """Every change is published on the alerts topic; receivers hear of it only when it is
    worth notifying (raised, resolved, severity up, deadline new or moved) and not silenced."""
    record = change.record
    event = event_json if event_json is not None else record.event_json()
    out = [Outgoing(KAFKA_RECEIVER, f"rev:{record.revision}", {"type": change.kind.event_type.value, "data": event})]
    if change.notify_key is not None and not silenced:
        alert = api_json if api_json is not None else record.to_api(event)
        out.extend(
            Outgoing(r.name, change.notify_key, {"kind": change.kind.value, "alert": alert})
            for r in receivers.receivers
            if r.wants(record.rule, record.severity)
        )
    return out


def recorded(
    change: AlertChange, receivers: ReceiversConfig, silences: Sequence[Silence], now: datetime
) -> store.Recorded:
    r = change.record
    silenced = any(s.mutes(r.rule, r.target_ref, r.place, now) for s in silences)
    ALERT_CHANGES.labels(r.rule, change.kind.value).inc()
    event = r.event_json()  # once per change: the alert row, its history and the outbox share it
    api = r.to_api(event)
    return store.Recorded(change, silenced, outgoing_for(change, receivers, silenced, event, api), event, api)


async def commit_changes(
    conn: asyncpg.Connection, changes: Sequence[AlertChange], receivers: ReceiversConfig, now: datetime
) -> list[int]:
    """Record the changes (alerts, history, outbox) and announce them once committed."""
    if not changes:
        return []
    silences = await store.active_silences(conn)
    change_ids = await store.record_changes(conn, [recorded(c, receivers, silences, now) for c in changes])
    await store.announce(conn, change_ids)
    return change_ids


class AlertsHandler:
    """The consumer's handler: it gets the connection inside the offsets' transaction."""

    def __init__(self, engine: Engine, receivers: ReceiversConfig) -> None:
        self.engine = engine
        self.receivers = receivers
        self.states = store.StateCache()

    async def __call__(self, conn: asyncpg.Connection, batch: Sequence[Consumed[BaseModel]]) -> None:
        now = datetime.now(UTC)
        items = [i.value for i in batch if isinstance(i.value, IncidentClassified | IncidentRetracted)]
        if not items:
            return
        ids = [v.incident.incident_id if isinstance(v, IncidentClassified) else v.incident_id for v in items]
        filings = await store.load_filings(conn, ids)
        snapshots = {
            id(v): IncidentSnapshot.from_recorded(v.incident) for v in items if isinstance(v, IncidentClassified)
        }
        wanted: set[str] = {k for f in filings.values() for k in f.keys}
        for snap in snapshots.values():
            wanted.update(self.engine.keys_for(snap))
        states = await store.load_states(conn, sorted(wanted), self.states)
        watermark = await store.load_watermark(conn)
        touched_states: set[str] = set()
        touched_filings: set[str] = set()
        evaluations: list[Evaluation] = []

        def fold(key: str, change: Change) -> None:
            states[key], found = self.engine.fold(key, states.get(key, KeyState()), change, watermark)
            touched_states.add(key)
            evaluations.extend(found)

        for value in items:
            if isinstance(value, IncidentClassified):
                snap = snapshots[id(value)]
                filing = filings.get(snap.incident_id)
                if filing is not None and (filing.retracted or filing.received_at > snap.received_at):
                    continue  # retracted, or an older version than the one we hold
                cause = Cause.AMENDED if filing is not None else Cause.REPORTED
                latest = snap.latest_date
                watermark = latest if watermark is None else max(watermark, latest)
                keys = self.engine.keys_for(snap)
                for key in filing.keys if filing else []:
                    if key not in keys:  # the amendment moved the incident (e.g. another city)
                        fold(key, Removal(snap.incident_id, Cause.AMENDED))
                for key in keys:
                    fold(key, Upsert(snap, cause))
                filings[snap.incident_id] = IncidentFiling(keys, snap.received_at)
                touched_filings.add(snap.incident_id)
            else:
                filing = filings.get(value.incident_id)
                for key in filing.keys if filing and not filing.retracted else []:
                    fold(key, Removal(value.incident_id, Cause.RETRACTED))
                filings[value.incident_id] = IncidentFiling([], value.received_at, retracted=True)
                touched_filings.add(value.incident_id)

        await store.save_states(conn, {k: states[k] for k in touched_states}, self.states)
        await store.save_filings(conn, {i: filings[i] for i in touched_filings})
        if watermark is not None:
            await store.save_watermark(conn, watermark)
        if evaluations:
            await self._alert(conn, evaluations, now)

    async def _alert(self, conn: asyncpg.Connection, evaluations: Sequence[Evaluation], now: datetime) -> None:
        alerts = await store.load_alerts(conn, {e.fingerprint for e in evaluations})
        changes = []
        for ev in evaluations:
            change = on_evaluation(alerts.get(ev.fingerprint), ev, new_alert_id=alert_id_for(ev.fingerprint), now=now)
            if change is None:
                continue
            alerts[ev.fingerprint] = change.record
            changes.append(change)
            log.info("alert %s %s (%s)", change.kind.value, change.record.alert_id, change.record.rule)
        await commit_changes(conn, changes, self.receivers, now)
