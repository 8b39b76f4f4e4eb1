"""The rule engine: fold one incident change into one key's state, return what the rules now
find. Pure: no I/O, no clock (event time comes from the acts; the watermark is passed in).

State per key (a target or a place) is the latest version of every incident that concerns it,
plus, per rule, what the rule found last time, so a re-applied event (replay, redelivery)
finds nothing new and emits nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any

from services.alerts.rules import AllOf, AnyOf, Condition, KeyKind, Leaf, Rule, RuleSet, leaves
from shared.events import AlertSeverity, IncidentRecorded, MatchedAct
from shared.vocabulary import ActStatus, ActType


class Cause(StrEnum):
    REPORTED = "reported"
    AMENDED = "amended"
    RETRACTED = "retracted"


@dataclass(frozen=True, slots=True)
class ActFact:
    type: str
    on: date  # the act's date, or the incident's occurred_on when the act has none
    actor: str
    status: str


@dataclass(frozen=True, slots=True)
class IncidentSnapshot:
    """What the rules may see of one version of an incident (no personal data)."""

    incident_id: str
    target_ref: str
    partner: str
    received_at: datetime
    occurred_on: date
    country: str
    city: str | None
    nationality: str | None
    group: str
    status_abroad: str
    outcome: str
    next_hearing_on: date | None
    acts: tuple[ActFact, ...]

    @classmethod
    def from_recorded(cls, incident: IncidentRecorded) -> IncidentSnapshot:
        facts = incident.facts
        return cls(
            incident_id=incident.incident_id,
            target_ref=incident.target_ref,
            partner=incident.partner,
            received_at=incident.received_at,
            occurred_on=facts.occurred_on,
            country=facts.location.country,
            city=facts.location.city,
            nationality=facts.target.nationality,
            group=facts.target.group.value,
            status_abroad=facts.target.status_abroad.value,
            outcome=facts.outcome.value,
            next_hearing_on=facts.next_hearing_on,
            acts=tuple(
                ActFact(a.type.value, a.on or facts.occurred_on, a.actor.value, a.status.value)
                for a in facts.acts
            ),
        )

    @property
    def place(self) -> str | None:
        return place_of(self.country, self.city)

    @property
    def latest_date(self) -> date:
        return max([self.occurred_on, *(a.on for a in self.acts)])

    def to_json(self) -> dict[str, Any]:
        return {
            "incident_id": self.incident_id, "target_ref": self.target_ref, "partner": self.partner,
            "received_at": self.received_at.isoformat(), "occurred_on": self.occurred_on.isoformat(),
            "country": self.country, "city": self.city, "nationality": self.nationality,
            "group": self.group, "status_abroad": self.status_abroad, "outcome": self.outcome,
            "next_hearing_on": self.next_hearing_on.isoformat() if self.next_hearing_on else None,
            "acts": [[a.type, a.on.isoformat(), a.actor, a.status] for a in self.acts],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> IncidentSnapshot:
        hearing = raw.get("next_hearing_on")
        return cls(
            incident_id=raw["incident_id"], target_ref=raw["target_ref"], partner=raw["partner"],
            received_at=datetime.fromisoformat(raw["received_at"]),
            occurred_on=date.fromisoformat(raw["occurred_on"]),
            country=raw["country"], city=raw.get("city"), nationality=raw.get("nationality"),
            group=raw["group"], status_abroad=raw["status_abroad"], outcome=raw["outcome"],
            next_hearing_on=date.fromisoformat(hearing) if hearing else None,
            acts=tuple(ActFact(t, date.fromisoformat(on), actor, st) for t, on, actor, st in raw["acts"]),
        )


def place_of(country: str, city: str | None) -> str | None:
    """A city, named the same however partners space or capitalise it."""
    if not city or not city.strip():
        return None
    return f"{country}/{' '.join(city.split()).casefold()}"


def state_key(kind: KeyKind, value: str) -> str:
    return f"{kind}:{value}"


def split_key(key: str) -> tuple[KeyKind, str]:
    kind, _, value = key.partition(":")
    if kind == "target_ref":
        return "target_ref", value
    if kind == "place":
        return "place", value
    raise ValueError(f"not a state key: {key!r}")


def fingerprint(rule: str, key_value: str) -> str:
    return hashlib.sha256(f"{rule}|{key_value}".encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class FindingMemo:
    """What a rule found for a key last time (enough to tell whether anything changed)."""

    incident_ids: tuple[str, ...]
    acts: tuple[tuple[str, int], ...]
    deadline: date | None

    def to_json(self) -> dict[str, Any]:
        return {
            "incident_ids": list(self.incident_ids),
            "acts": [list(a) for a in self.acts],
            "deadline": self.deadline.isoformat() if self.deadline else None,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FindingMemo:
        return cls(
            incident_ids=tuple(raw["incident_ids"]),
            acts=tuple((i, int(n)) for i, n in raw["acts"]),
            deadline=date.fromisoformat(raw["deadline"]) if raw.get("deadline") else None,
        )


@dataclass
class KeyState:
    incidents: dict[str, IncidentSnapshot] = field(default_factory=dict)
    findings: dict[str, FindingMemo] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "incidents": {i: s.to_json() for i, s in self.incidents.items()},
            "findings": {r: f.to_json() for r, f in self.findings.items()},
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> KeyState:
        if not raw:
            return cls()
        return cls(
            incidents={i: IncidentSnapshot.from_json(s) for i, s in raw.get("incidents", {}).items()},
            findings={r: FindingMemo.from_json(f) for r, f in raw.get("findings", {}).items()},
        )

    @property
    def empty(self) -> bool:
        return not self.incidents and not self.findings


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A rule's verdict on one key after a change: it holds (with why), or it stopped holding."""

    rule: str
    severity: AlertSeverity
    key_kind: KeyKind
    key_value: str
    fingerprint: str
    holds: bool
    cause: Cause
    incident_ids: tuple[str, ...] = ()
    matched_acts: tuple[MatchedAct, ...] = ()
    summary: str = ""
    deadline: date | None = None
    deadline_as_of: datetime | None = None  # when the report that set the deadline arrived
    first_received: datetime | None = None
    last_received: datetime | None = None

    @property
    def target_ref(self) -> str | None:
        return self.key_value if self.key_kind == "target_ref" else None

    @property
    def place(self) -> str | None:
        return self.key_value if self.key_kind == "place" else None


# --- Rows: what conditions select from ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Row:
    when: date
    incident: IncidentSnapshot
    act_index: int  # -1 for an incident row
    attrs: dict[str, str | None]


def _rows(state: KeyState, rules: RuleSet) -> list[_Row]:
    rows: list[_Row] = []
    for inc in state.incidents.values():
        base: dict[str, str | None] = {
            "incident_id": inc.incident_id, "target_ref": inc.target_ref, "partner": inc.partner,
            "country": inc.country, "city": inc.city, "place": inc.place,
            "nationality": inc.nationality, "group": inc.group,
            "status_abroad": inc.status_abroad, "outcome": inc.outcome,
        }
        rows.append(_Row(inc.occurred_on, inc, -1, base))
        for i, act in enumerate(inc.acts):
            attrs = dict(base)
            attrs["type"], attrs["actor"], attrs["status"] = act.type, act.actor, act.status
            for name, by_type in rules.derived.items():
                attrs[name] = by_type.get(act.type)
            rows.append(_Row(act.on, inc, i, attrs))
    rows.sort(key=lambda r: (r.when, r.incident.incident_id, r.act_index))
    return rows


def _selects(leaf: Leaf, row: _Row) -> bool:
    if (leaf.scope == "acts") != (row.act_index >= 0):
        return False
    return all(f.accepts(row.attrs.get(f.attribute)) for f in leaf.filters)


def _holds(cond: Condition, rows: Sequence[_Row], selected: dict[int, set[int]]) -> list[_Row] | None:
    """The rows that make ``cond`` hold among ``rows`` (the witness), or None."""
    if isinstance(cond, Leaf):
        chosen = [r for r in rows if id(r) in selected[id(cond)]]
        if cond.distinct is not None:
            count = len({r.attrs.get(cond.distinct) for r in chosen} - {None})
        else:
            count = len(chosen)
        return chosen if count >= cond.at_least else None
    results = [_holds(part, rows, selected) for part in cond.parts]
    if isinstance(cond, AllOf):
        if any(r is None for r in results):
            return None
        return [row for r in results if r is not None for row in r]
    assert isinstance(cond, AnyOf)
    held = [row for r in results if r is not None for row in r]
    return held if any(r is not None for r in results) else None


def match_rule(rule: Rule, rows: Sequence[_Row]) -> list[_Row]:
    """Every row that takes part in some window where the rule holds; empty when it does not."""
    selected: dict[int, set[int]] = {}
    candidates: list[_Row] = []
    seen: set[int] = set()
    for leaf in leaves(rule.when):
        ids = {id(r) for r in rows if _selects(leaf, r)}
        selected[id(leaf)] = ids
        seen |= ids
    candidates = [r for r in rows if id(r) in seen]  # still in date order
    if not candidates:
        return []
    if rule.window_days is None:
        return _holds(rule.when, candidates, selected) or []
    width = timedelta(days=rule.window_days)
    witness: dict[int, _Row] = {}
    starts = sorted({r.when for r in candidates})
    for start in starts:
        end = start + width
        window = [r for r in candidates if start <= r.when <= end]
        found = _holds(rule.when, window, selected)
        if found:
            witness.update((id(r), r) for r in found)
    return sorted(witness.values(), key=lambda r: (r.when, r.incident.incident_id, r.act_index))


# --- Folding ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upsert:
    """A new incident, or a new version (amendment) of a known one."""

    incident: IncidentSnapshot
    cause: Cause = Cause.REPORTED


@dataclass(frozen=True, slots=True)
class Removal:
    incident_id: str
    cause: Cause = Cause.RETRACTED


Change = Upsert | Removal


class Engine:
    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self._by_kind = {kind: rules.for_key(kind) for kind in rules.key_kinds}

    def keys_for(self, incident: IncidentSnapshot) -> list[str]:
        keys = []
        for kind in self._by_kind:
            value = incident.target_ref if kind == "target_ref" else incident.place
            if value:
                keys.append(state_key(kind, value))
        return keys

    def fold(
        self, key: str, state: KeyState, change: Change, watermark: date | None
    ) -> tuple[KeyState, list[Evaluation]]:
        """Apply ``change`` to ``state`` (not modified); return the new state and what changed."""
        kind, value = split_key(key)
        incidents = dict(state.incidents)
        if isinstance(change, Upsert):
            incidents[change.incident.incident_id] = change.incident
        else:
            incidents.pop(change.incident_id, None)
        new = KeyState(incidents=incidents, findings=dict(state.findings))
        evaluations = []
        rows = _rows(new, self.rules)
        for rule in self._by_kind.get(kind, ()):
            ev = self._evaluate(rule, kind, value, rows, change.cause)
            before = state.findings.get(rule.id)
            if ev is None:
                if before is not None:
                    del new.findings[rule.id]
                    evaluations.append(
                        Evaluation(rule=rule.id, severity=rule.severity, key_kind=kind, key_value=value,
                                   fingerprint=fingerprint(rule.id, value), holds=False, cause=change.cause,
                                   incident_ids=before.incident_ids)
                    )
                continue
            memo = FindingMemo(
                incident_ids=ev.incident_ids,
                acts=tuple((m.incident_id, m.act_index) for m in ev.matched_acts),
                deadline=ev.deadline,
            )
            if memo != before:
                new.findings[rule.id] = memo
                evaluations.append(ev)
        if watermark is not None:
            self._expire(new, kind, watermark)
        return new, evaluations

    def _evaluate(self, rule: Rule, kind: KeyKind, value: str, rows: Sequence[_Row], cause: Cause) -> Evaluation | None:
        witness = match_rule(rule, rows)
        if not witness:
            return None
        incidents = {r.incident.incident_id: r.incident for r in witness}
        ordered = sorted(incidents.values(), key=lambda i: (i.received_at, i.incident_id))
        matched = tuple(
            MatchedAct(
                incident_id=r.incident.incident_id, act_index=r.act_index,
                type=ActType(r.incident.acts[r.act_index].type), on=r.when,
                status=ActStatus(r.incident.acts[r.act_index].status),
            )
            for r in witness
            if r.act_index >= 0
        )
        deadline, deadline_as_of = None, None
        if rule.deadline == "next_hearing_on":
            # The latest report that names a hearing wins: a new report moves the deadline.
            with_hearing = [i for i in ordered if i.next_hearing_on is not None]
            if with_hearing:
                deadline, deadline_as_of = with_hearing[-1].next_hearing_on, with_hearing[-1].received_at
        return Evaluation(
            rule=rule.id, severity=rule.severity, key_kind=kind, key_value=value,
            fingerprint=fingerprint(rule.id, value), holds=True, cause=cause,
            incident_ids=tuple(sorted(incidents)), matched_acts=matched,
            summary=_summary(rule, kind, value, matched, incidents.values(), deadline),
            deadline=deadline, deadline_as_of=deadline_as_of,
            first_received=ordered[0].received_at, last_received=ordered[-1].received_at,
        )

    def _expire(self, state: KeyState, kind: KeyKind, watermark: date) -> None:
        """Drop incidents no window can use any more, unless an alert still stands on them."""
        horizon = watermark - timedelta(days=self.rules.horizon_days(kind))
        kept = {i for memo in state.findings.values() for i in memo.incident_ids}
        for incident_id, incident in list(state.incidents.items()):
            if incident_id not in kept and incident.latest_date < horizon:
                del state.incidents[incident_id]


def _summary(
    rule: Rule, kind: KeyKind, value: str, matched: Iterable[MatchedAct],
    incidents: Iterable[IncidentSnapshot], deadline: date | None,
) -> str:
    acts = sorted({(m.on, m.type.value) for m in matched if m.on is not None})
    shown = ", ".join(f"{t} {on.isoformat()}" for on, t in acts[:8])
    if len(acts) > 8:
        shown += f", +{len(acts) - 8} more"
    incident_list = list(incidents)
    countries = ", ".join(sorted({i.country for i in incident_list}))
    who = f"place {value}" if kind == "place" else f"target {value[:12]}"
    parts = [f"{rule.summary} ({who}; {len(incident_list)} incident(s); {countries})"]
    if shown:
        parts.append(f"acts: {shown}")
    partners = sorted({i.partner for i in incident_list})
    if len(partners) > 1:
        parts.append(f"partners: {', '.join(partners)}")
    if deadline is not None:
        parts.append(f"deadline {deadline.isoformat()}")
    return ". ".join(parts)
