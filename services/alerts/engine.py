"""Rule matching over classified incidents. Pure: no I/O.

Walking-skeleton scope: rule R3 (kidnapping or disappearance). The full, data-driven rule
engine replaces this module (issue: alerts).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date

from shared.events import AlertSeverity, IncidentClassified, MatchedAct
from shared.vocabulary import ActType

R3 = "R3_kidnapping_or_disappearance"
R3_ACTS = frozenset(
    {ActType.KIDNAPPING, ActType.FORCED_RENDITION, ActType.ENFORCED_DISAPPEARANCE, ActType.IRREGULAR_HANDOVER}
)


@dataclass(frozen=True)
class Finding:
    """A rule holds for a key: what the store turns into a new or updated alert."""

    rule: str
    severity: AlertSeverity
    fingerprint: str
    target_ref: str | None
    place: str | None
    incident_ids: tuple[str, ...]
    matched_acts: tuple[MatchedAct, ...]
    summary: str
    deadline: date | None = None


def fingerprint(rule: str, key: str) -> str:
    return hashlib.sha256(f"{rule}|{key}".encode()).hexdigest()[:32]


def evaluate(event: IncidentClassified) -> list[Finding]:
    incident = event.incident
    matched = tuple(
        MatchedAct(incident_id=incident.incident_id, act_index=i, type=act.type, on=act.on, status=act.status)
        for i, act in enumerate(incident.facts.acts)
        if act.type in R3_ACTS
    )
    if not matched:
        return []
    kinds = ", ".join(sorted({m.type.value for m in matched}))
    return [
        Finding(
            rule=R3,
            severity=AlertSeverity.CRITICAL,
            fingerprint=fingerprint(R3, incident.target_ref),
            target_ref=incident.target_ref,
            place=None,
            incident_ids=(incident.incident_id,),
            matched_acts=matched,
            summary=f"Kidnapping or disappearance reported ({kinds}) in {incident.facts.location.country}",
        )
    ]
