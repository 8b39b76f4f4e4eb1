"""Folding the log into incident read models. Pure: no I/O.

Events for one incident arrive from two topics (the log and the classifier's output) and so
may interleave in any order; the fold keeps the newest report and the classification of the
newest report it has seen, whatever order they came in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from shared.events import Classification, IncidentClassified, IncidentRecorded, IncidentRetracted


@dataclass(frozen=True)
class IncidentView:
    incident_id: str
    target_ref: str
    partner: str
    report: IncidentRecorded | None = None
    classification: Classification | None = None
    classified_report_id: str | None = None
    classified_received_at: datetime | None = None
    retracted: bool = False
    retraction_reason: str | None = None

    def public(self, *, with_confidential: bool) -> dict[str, Any]:
        """The partner-contract §2 shape; narrative and sources only when allowed."""
        facts = self.report.facts if self.report else None
        body: dict[str, Any] = {
            "incident_id": self.incident_id,
            "target_ref": self.target_ref,
            "occurred_on": facts.occurred_on.isoformat() if facts else None,
            "date_precision": facts.date_precision.value if facts else None,
            "country": facts.location.country if facts else None,
            "city": facts.location.city if facts else None,
            "group": facts.target.group.value if facts else None,
            "status_abroad": facts.target.status_abroad.value if facts else None,
            "acts": [a.model_dump(mode="json") for a in facts.acts] if facts else [],
            "outcome": facts.outcome.value if facts else None,
            "next_hearing_on": facts.next_hearing_on.isoformat() if facts and facts.next_hearing_on else None,
            "retracted": self.retracted,
            "classification": None,
        }
        if self.classification is not None:
            classification = self.classification.model_dump(mode="json", by_alias=True)
            if not with_confidential:
                for item in classification["evidence"]:
                    item.pop("span", None)  # quoted text stays with the reporting partner
            body["classification"] = classification
        if with_confidential and facts is not None:
            body["narrative"] = facts.narrative.model_dump(mode="json") if facts.narrative else None
            body["sources"] = [s.model_dump(mode="json") for s in facts.sources]
        return body


def _newer(a: datetime | None, b: datetime) -> bool:
    return a is None or b >= a


def apply(view: IncidentView | None, data: BaseModel) -> IncidentView | None:
    """The view after one event; events of other kinds leave it unchanged."""
    if isinstance(data, IncidentRecorded):
        base = view or IncidentView(data.incident_id, data.target_ref, data.partner)
        if base.report is None or _newer(base.report.received_at, data.received_at):
            return replace(base, report=data, target_ref=data.target_ref)
        return base
    if isinstance(data, IncidentClassified):
        incident = data.incident
        base = view or IncidentView(incident.incident_id, incident.target_ref, incident.partner)
        if _newer(base.classified_received_at, incident.received_at):
            base = replace(
                base,
                classification=data.classification,
                classified_report_id=incident.report_id,
                classified_received_at=incident.received_at,
            )
        if base.report is None or _newer(base.report.received_at, incident.received_at):
            base = replace(base, report=incident)
        return base
    if isinstance(data, IncidentRetracted):
        base = view or IncidentView(data.incident_id, data.target_ref, data.partner)
        return replace(base, retracted=True, retraction_reason=data.reason)
    return view
