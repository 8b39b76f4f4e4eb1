"""One situation, one alert: how an alert changes when a rule's verdict or a monitor acts.
Pure: no I/O, the clock is passed in.

Notifications are keyed by ``notify_key``, a description of *what* is being notified (the
alert's epoch, the kind of change, the severity and deadline), not a counter, so a replay of
the log that walks an alert through the same situations again yields keys already delivered.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from services.alerts.engine import Cause, Evaluation
from shared.events import AlertChanged, AlertSeverity, AlertStatus, EventType, MatchedAct

SEVERITY_RANK = {AlertSeverity.INFO: 0, AlertSeverity.MEDIUM: 1, AlertSeverity.HIGH: 2, AlertSeverity.CRITICAL: 3}
ENGINE = "engine"  # who resolves an alert when its incidents are retracted or amended away


class ChangeKind(StrEnum):
    RAISED = "raised"
    UPDATED = "updated"
    RESOLVED = "resolved"

    @property
    def event_type(self) -> EventType:
        return {
            ChangeKind.RAISED: EventType.ALERT_RAISED,
            ChangeKind.UPDATED: EventType.ALERT_UPDATED,
            ChangeKind.RESOLVED: EventType.ALERT_RESOLVED,
        }[self]


class LifecycleError(Exception):
    """A monitor asked for a transition the alert's state does not allow."""


@dataclass(frozen=True)
class AlertRecord:
    alert_id: str
    fingerprint: str
    rule: str
    severity: AlertSeverity
    status: AlertStatus
    target_ref: str | None
    place: str | None
    incident_ids: tuple[str, ...]
    matched_acts: tuple[MatchedAct, ...]
    summary: str
    first_seen: datetime
    last_seen: datetime
    deadline: date | None = None
    deadline_as_of: datetime | None = None
    epoch: int = 0  # bumped when a resolved alert opens again
    revision: int = 1  # bumped on every change
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    acknowledged_reason: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolved_reason: str | None = None
    updated_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_event(self) -> AlertChanged:
        # Constructed, not validated: every field comes typed from this record, and validating
        # hundreds of matched acts per change was a tenth of the handler's time on busy places.
        return AlertChanged.model_construct(
            alert_id=self.alert_id,
            fingerprint=self.fingerprint,
            rule=self.rule,
            severity=self.severity,
            status=self.status,
            target_ref=self.target_ref,
            place=self.place,
            incident_ids=list(self.incident_ids),
            matched_acts=list(self.matched_acts),
            summary=self.summary,
            first_seen=self.first_seen,
            last_seen=self.last_seen,
            deadline=self.deadline,
        )

    def event_json(self) -> dict[str, Any]:
        """The ``AlertChanged`` data as JSON, as ``to_event().model_dump(mode="json")`` makes it
        (written out: pydantic's dump was a tenth of the handler's CPU; a test holds them equal)."""
        return {
            "alert_id": self.alert_id,
            "fingerprint": self.fingerprint,
            "rule": self.rule,
            "severity": self.severity.value,
            "status": self.status.value,
            "target_ref": self.target_ref,
            "place": self.place,
            "incident_ids": list(self.incident_ids),
            "matched_acts": [
                {
                    "incident_id": m.incident_id,
                    "act_index": m.act_index,
                    "type": m.type.value,
                    "on": m.on.isoformat() if m.on is not None else None,
                    "status": m.status.value,
                }
                for m in self.matched_acts
            ],
            "summary": self.summary,
            "first_seen": _json_datetime(self.first_seen),
            "last_seen": _json_datetime(self.last_seen),
            "deadline": self.deadline.isoformat() if self.deadline is not None else None,
        }

    def to_api(self, event_json: dict[str, Any] | None = None) -> dict[str, Any]:
        body = dict(event_json) if event_json is not None else self.event_json()
        body.update(
            revision=self.revision,
            acknowledged_at=self.acknowledged_at.isoformat() if self.acknowledged_at else None,
            acknowledged_by=self.acknowledged_by,
            acknowledged_reason=self.acknowledged_reason,
            resolved_at=self.resolved_at.isoformat() if self.resolved_at else None,
            resolved_by=self.resolved_by,
            resolved_reason=self.resolved_reason,
        )
        return body


def _json_datetime(value: datetime) -> str:
    """A datetime as pydantic writes it in JSON mode (UTC as ``Z``)."""
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


@dataclass(frozen=True)
class AlertChange:
    kind: ChangeKind
    record: AlertRecord
    notify_key: str | None  # None: recorded and published, but receivers are not notified


def _merge_acts(old: tuple[MatchedAct, ...], new: tuple[MatchedAct, ...]) -> tuple[MatchedAct, ...]:
    by_key = {(m.incident_id, m.act_index): m for m in old}
    by_key.update({(m.incident_id, m.act_index): m for m in new})
    return tuple(sorted(by_key.values(), key=lambda m: (m.on or date.min, m.incident_id, m.act_index)))


def on_evaluation(
    current: AlertRecord | None, ev: Evaluation, *, new_alert_id: str, now: datetime
) -> AlertChange | None:
    """What a rule's new verdict does to the alert of its fingerprint (None: nothing)."""
    seen = ev.last_received or now
    if current is None:
        if not ev.holds:
            return None
        record = AlertRecord(
            alert_id=new_alert_id,
            fingerprint=ev.fingerprint,
            rule=ev.rule,
            severity=ev.severity,
            status=AlertStatus.OPEN,
            target_ref=ev.target_ref,
            place=ev.place,
            incident_ids=ev.incident_ids,
            matched_acts=ev.matched_acts,
            summary=ev.summary,
            first_seen=seen,
            last_seen=seen,
            deadline=ev.deadline,
            deadline_as_of=ev.deadline_as_of,
            updated_at=now,
        )
        return AlertChange(ChangeKind.RAISED, record, f"{record.epoch}:raised")

    if not ev.holds:
        if current.status == AlertStatus.RESOLVED:
            return None
        why = (
            "every incident it stood on was retracted"
            if ev.cause == Cause.RETRACTED
            else "the rule no longer holds after an amendment"
        )
        return _resolved(current, who=ENGINE, why=why, now=now)

    if current.status == AlertStatus.RESOLVED:
        # A new incident after resolution is a new development of the same situation: reopen.
        # Incidents the alert already knew (a replay, an amendment) do not reopen it.
        if not set(ev.incident_ids) - set(current.incident_ids):
            return None
        epoch = current.epoch + 1
        record = replace(
            current,
            status=AlertStatus.OPEN,
            severity=ev.severity,
            incident_ids=tuple(sorted(set(current.incident_ids) | set(ev.incident_ids))),
            matched_acts=_merge_acts(current.matched_acts, ev.matched_acts),
            summary=ev.summary,
            last_seen=max(current.last_seen, seen),
            deadline=ev.deadline or current.deadline,
            deadline_as_of=ev.deadline_as_of or current.deadline_as_of,
            epoch=epoch,
            revision=current.revision + 1,
            acknowledged_at=None,
            acknowledged_by=None,
            acknowledged_reason=None,
            resolved_at=None,
            resolved_by=None,
            resolved_reason=None,
            updated_at=now,
        )
        return AlertChange(ChangeKind.RAISED, record, f"{epoch}:raised")

    if ev.cause == Cause.REPORTED:
        # New reports add to what the alert knows; they never take incidents away.
        incident_ids = tuple(sorted(set(current.incident_ids) | set(ev.incident_ids)))
        matched = _merge_acts(current.matched_acts, ev.matched_acts)
    else:
        incident_ids, matched = ev.incident_ids, ev.matched_acts
    deadline, deadline_as_of = current.deadline, current.deadline_as_of
    if ev.deadline_as_of is not None and (deadline_as_of is None or ev.deadline_as_of >= deadline_as_of):
        # Only a report at least as recent as the one that set the deadline may move it
        # (a replay walking through older versions must not move it back).
        deadline, deadline_as_of = ev.deadline, ev.deadline_as_of
    severity = ev.severity if SEVERITY_RANK[ev.severity] > SEVERITY_RANK[current.severity] else current.severity
    if (incident_ids, matched, deadline, severity) == (
        current.incident_ids,
        current.matched_acts,
        current.deadline,
        current.severity,
    ):
        return None
    record = replace(
        current,
        incident_ids=incident_ids,
        matched_acts=matched,
        summary=ev.summary,
        severity=severity,
        deadline=deadline,
        deadline_as_of=deadline_as_of,
        last_seen=max(current.last_seen, seen),
        revision=current.revision + 1,
        updated_at=now,
    )
    notify = None
    if severity != current.severity or (deadline is not None and deadline != current.deadline):
        notify = f"{record.epoch}:updated:{severity.value}:{deadline.isoformat() if deadline else '-'}"
    return AlertChange(ChangeKind.UPDATED, record, notify)


def acknowledge(current: AlertRecord, *, who: str, why: str, now: datetime) -> AlertChange:
    if current.status != AlertStatus.OPEN:
        raise LifecycleError(f"only an open alert can be acknowledged; this one is {current.status.value}")
    record = replace(
        current,
        status=AlertStatus.ACKNOWLEDGED,
        acknowledged_at=now,
        acknowledged_by=who,
        acknowledged_reason=why,
        revision=current.revision + 1,
        updated_at=now,
    )
    return AlertChange(ChangeKind.UPDATED, record, None)


def resolve(current: AlertRecord, *, who: str, why: str, now: datetime) -> AlertChange:
    if current.status == AlertStatus.RESOLVED:
        raise LifecycleError("the alert is already resolved")
    return _resolved(current, who=who, why=why, now=now)


def _resolved(current: AlertRecord, *, who: str, why: str, now: datetime) -> AlertChange:
    """Resolution, by the engine or by hand: recorded with who and why, notified once."""
    record = replace(
        current,
        status=AlertStatus.RESOLVED,
        resolved_at=now,
        resolved_by=who,
        resolved_reason=why,
        revision=current.revision + 1,
        updated_at=now,
    )
    return AlertChange(ChangeKind.RESOLVED, record, f"{record.epoch}:resolved")
