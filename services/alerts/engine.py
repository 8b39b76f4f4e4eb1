"""The rule engine: fold one incident change into one key's state, return what the rules now
find. Pure: no I/O, no clock (event time comes from the acts; the watermark is passed in).

State per key (a target or a place) is the latest version of every incident that concerns it,
plus, per rule, what the rule found last time, so a re-applied event (replay, redelivery)
finds nothing new and emits nothing.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right, insort
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from functools import partial
from operator import attrgetter
from typing import Any

from services.alerts.rules import (
    INCIDENT_ATTRIBUTES,
    AllOf,
    AnyOf,
    Condition,
    KeyKind,
    Leaf,
    Rule,
    RuleSet,
    leaves,
)
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


@dataclass(frozen=True, slots=True, eq=False)
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
    raw: dict[str, Any] | None = field(default=None, repr=False)  # its JSON, once made or read
    # Its rows and the engine they were computed for (a cache; two fields, not a tuple: one
    # object less per incident held for the cyclic GC to scan).
    rows: list[Any] | None = field(default=None, repr=False)
    rows_for: Any = field(default=None, repr=False)

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
            # ``_value_``: the enums' ``value`` is a Python-level property (6x slower per access).
            group=facts.target.group._value_,
            status_abroad=facts.target.status_abroad._value_,
            outcome=facts.outcome._value_,
            next_hearing_on=facts.next_hearing_on,
            acts=tuple(
                ActFact(a.type._value_, a.on or facts.occurred_on, a.actor._value_, a.status._value_)
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
        if self.raw is not None:
            return self.raw
        raw = {
            "incident_id": self.incident_id,
            "target_ref": self.target_ref,
            "partner": self.partner,
            "received_at": self.received_at.isoformat(),
            "occurred_on": self.occurred_on.isoformat(),
            "country": self.country,
            "city": self.city,
            "nationality": self.nationality,
            "group": self.group,
            "status_abroad": self.status_abroad,
            "outcome": self.outcome,
            "next_hearing_on": self.next_hearing_on.isoformat() if self.next_hearing_on else None,
            "acts": [[a.type, a.on.isoformat(), a.actor, a.status] for a in self.acts],
        }
        object.__setattr__(self, "raw", raw)  # immutable snapshot: its JSON never changes
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> IncidentSnapshot:
        # Positional, in field order, and a list for the acts: every cold state read decodes
        # its incidents (17 % fewer instructions than keywords and a generator).
        hearing = raw.get("next_hearing_on")
        return cls(
            raw["incident_id"],
            raw["target_ref"],
            raw["partner"],
            _datetime_from_iso(raw["received_at"]),
            _date_from_iso(raw["occurred_on"]),
            raw["country"],
            raw.get("city"),
            raw.get("nationality"),
            raw["group"],
            raw["status_abroad"],
            raw["outcome"],
            _date_from_iso(hearing) if hearing else None,
            tuple([ActFact(t, _date_from_iso(on), actor, st) for t, on, actor, st in raw["acts"]]),
            raw,
        )


_date_from_iso = date.fromisoformat
_datetime_from_iso = datetime.fromisoformat


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
    raw: dict[str, Any] | None = field(default=None, repr=False, compare=False)  # its JSON, once made

    def to_json(self) -> dict[str, Any]:
        if self.raw is None:
            object.__setattr__(
                self,
                "raw",
                {
                    "incident_ids": list(self.incident_ids),
                    "acts": [list(a) for a in self.acts],
                    "deadline": self.deadline.isoformat() if self.deadline else None,
                },
            )
        assert self.raw is not None
        return self.raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FindingMemo:
        return cls(
            incident_ids=tuple(raw["incident_ids"]),
            acts=tuple((i, int(n)) for i, n in raw["acts"]),
            deadline=date.fromisoformat(raw["deadline"]) if raw.get("deadline") else None,
            raw=raw,
        )


@dataclass
class KeyState:
    incidents: dict[str, IncidentSnapshot] = field(default_factory=dict)
    findings: dict[str, FindingMemo] = field(default_factory=dict)
    # The engine's rows of these incidents in date order (a cache, never stored).
    rows_cache: list[Any] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "incidents": {i: s.to_json() for i, s in self.incidents.items()},
            "findings": {r: f.to_json() for r, f in self.findings.items()},
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> KeyState:
        if not raw:
            return cls()
        snapshot = IncidentSnapshot.from_json
        return cls(
            {i: snapshot(s) for i, s in raw.get("incidents", {}).items()},
            {r: FindingMemo.from_json(f) for r, f in raw.get("findings", {}).items()},
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


_ACT_TYPES = {t.value: t for t in ActType}
_ACT_STATUSES = {s.value: s for s in ActStatus}
_MATCHED_ACT_FIELDS = frozenset(MatchedAct.model_fields)
_new = object.__new__
_set = object.__setattr__


def matched_act(incident_id: str, act_index: int, type_: str, on: date | None, status: str) -> MatchedAct:
    """A MatchedAct of values this service made or wrote, as ``model_construct`` makes it without
    its generic work (1 us instead of 6; alerts quote every act of their witness; a test holds
    the two equal)."""
    act = _new(MatchedAct)
    _set(
        act,
        "__dict__",
        {
            "incident_id": incident_id,
            "act_index": act_index,
            "type": _ACT_TYPES[type_],
            "on": on,
            "status": _ACT_STATUSES[status],
        },
    )
    _set(act, "__pydantic_fields_set__", set(_MATCHED_ACT_FIELDS))
    _set(act, "__pydantic_extra__", None)
    _set(act, "__pydantic_private__", None)
    return act


@dataclass(slots=True)
class _Row:
    # No reference to the snapshot: the snapshot caches its rows, and a row pointing back would
    # make every state a reference cycle (freed only by the cyclic GC, and never once frozen).
    when: date
    incident_id: str
    act_index: int  # -1 for an incident row
    act: ActFact | None  # None for an incident row
    mask: int  # bit i set: leaf i of the rule set selects this row
    values: dict[str, str | None]  # the attributes rules count distinct values of
    matched_act: MatchedAct | None = None  # built when an alert first quotes it

    @property
    def matched(self) -> MatchedAct | None:
        act = self.act
        if act is None:
            return None
        if self.matched_act is None:
            self.matched_act = matched_act(self.incident_id, self.act_index, act.type, act.on, act.status)
        return self.matched_act


def _getter(names: Sequence[str]) -> Callable[[IncidentSnapshot], tuple[Any, ...]]:
    """A snapshot's values of ``names``, as a tuple."""
    if len(names) > 1:
        return attrgetter(*names)
    return lambda inc: tuple(getattr(inc, n) for n in names)


class _Compiled:
    """The rule set with every leaf numbered, so each row knows once which leaves select it."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.leaves: list[Leaf] = []
        self.leaf_bits: dict[int, int] = {}  # id(leaf) -> bit
        self.rule_mask: dict[str, int] = {}
        for rule in rules.rules:
            mask = 0
            for leaf in leaves(rule.when):
                bit = 1 << len(self.leaves)
                self.leaves.append(leaf)
                self.leaf_bits[id(leaf)] = bit
                mask |= bit
            self.rule_mask[rule.id] = mask
        self.distinct = sorted({leaf.distinct for leaf in self.leaves if leaf.distinct})
        self.filtered = sorted({f.attribute for leaf in self.leaves for f in leaf.filters})
        self._masks: dict[tuple[object, ...], int] = {}
        self._possible_cache: dict[tuple[str, int], bool] = {}
        self._act_masks: dict[tuple[object, ...], tuple[int, tuple[tuple[str, str], ...]]] = {}
        act_level = {"type", "actor", "status", *rules.derived}
        self._act_distinct = [name for name in self.distinct if name in act_level]
        self._incident_signature = _getter([n for n in self.filtered if n in INCIDENT_ATTRIBUTES])
        self._incident_masks: dict[object, int] = {}
        self._distinct_of_incident = [n for n in self.distinct if n in INCIDENT_ATTRIBUTES]
        self._distinct_values = _getter(self._distinct_of_incident)
        self.kind_mask = {kind: sum((self.rule_mask[r.id] for r in rules.for_key(kind)), 0) for kind in rules.key_kinds}
        # Each rule's condition as nested closures (no dispatch on the condition's type per
        # window); ``holds`` is the same thing interpreted, kept as the reference.
        self.checks: dict[str, Callable[[Sequence[_Row]], list[_Row] | None]] = {
            rule.id: self._check(rule.when) for rule in rules.rules
        }
        self.prune = True  # skip windows that lie inside the window tried before (see ``match``)

    def _attributes(self, inc: IncidentSnapshot) -> dict[str, str | None]:
        """An incident's attributes by the rule language's names (each an IncidentSnapshot one)."""
        return {name: getattr(inc, name) for name in INCIDENT_ATTRIBUTES}

    def rows_of(self, inc: IncidentSnapshot) -> list[_Row]:
        # Masks are memoised on the incident's filtered values (and the act's own three for an
        # act row): most rows cost a tuple and a dictionary lookup.
        signature = self._incident_signature(inc)
        mask = self._incident_masks.get(signature)
        if mask is None:
            mask = self._incident_masks[signature] = self._mask(self._attributes(inc), is_act=False)
        values: dict[str, str | None] = dict(zip(self._distinct_of_incident, self._distinct_values(inc), strict=True))
        for name in self._act_distinct:
            values[name] = None
        incident_id = inc.incident_id
        rows = [_Row(inc.occurred_on, incident_id, -1, None, mask, values)]
        act_masks = self._act_masks
        for i, act in enumerate(inc.acts):
            key = (signature, act.type, act.actor, act.status)
            memo = act_masks.get(key)
            if memo is None:
                memo = act_masks[key] = self._act_row(inc, act)
            act_mask, act_values = memo
            row_values = values  # shared when the act has no value of its own to count
            if act_values:
                row_values = dict(values)
                row_values.update(act_values)
            rows.append(_Row(act.on, incident_id, i, act, act_mask, row_values))
        return rows

    def _act_row(self, inc: IncidentSnapshot, act: ActFact) -> tuple[int, tuple[tuple[str, str], ...]]:
        """An act row's mask, and the act-level values rules count that it has (not None)."""
        attrs = self._attributes(inc)
        attrs["type"], attrs["actor"], attrs["status"] = act.type, act.actor, act.status
        for name, by_type in self.rules.derived.items():
            attrs[name] = by_type.get(act.type)
        own = tuple((name, value) for name in self._act_distinct if (value := attrs.get(name)) is not None)
        return self._mask(attrs, is_act=True), own

    def _mask(self, attrs: dict[str, str | None], *, is_act: bool) -> int:
        # Memoised on the values the filters look at: rows repeat the same few combinations.
        signature = (is_act, *map(attrs.get, self.filtered))
        mask = self._masks.get(signature)
        if mask is None:
            mask = self._masks[signature] = self._compute_mask(attrs, is_act=is_act)
        return mask

    def _compute_mask(self, attrs: dict[str, str | None], *, is_act: bool) -> int:
        mask = 0
        for n, leaf in enumerate(self.leaves):
            if (leaf.scope == "acts") == is_act and all(f.accepts(attrs.get(f.attribute)) for f in leaf.filters):
                mask |= 1 << n
        return mask

    def could_hold(self, cond: Condition, present: int) -> bool:
        """Whether ``cond`` can hold on rows whose leaf bits together are ``present``: a leaf that
        selects no row fails (``at_least`` >= 1), so this rules out most keys without counting."""
        if isinstance(cond, Leaf):
            return bool(present & self.leaf_bits[id(cond)])
        if isinstance(cond, AllOf):
            return all(self.could_hold(part, present) for part in cond.parts)
        return any(self.could_hold(part, present) for part in cond.parts)

    def _possible(self, rule: Rule, present: int) -> bool:
        signature = (rule.id, present)
        possible = self._possible_cache.get(signature)
        if possible is None:
            possible = self._possible_cache[signature] = self.could_hold(rule.when, present)
        return possible

    def _check(self, cond: Condition) -> Callable[[Sequence[_Row]], list[_Row] | None]:
        """``cond`` compiled: a function of the rows returning what ``holds`` returns."""
        if isinstance(cond, Leaf):
            bit, at_least, name = self.leaf_bits[id(cond)], cond.at_least, cond.distinct

            def leaf(rows: Sequence[_Row]) -> list[_Row] | None:
                chosen = [r for r in rows if r.mask & bit]
                if len(chosen) < at_least:
                    return None  # too few rows, so too few distinct values too
                if name is not None:
                    values = {r.values[name] for r in chosen}
                    values.discard(None)
                    if len(values) < at_least:
                        return None
                return chosen

            return leaf
        parts = [self._check(part) for part in cond.parts]
        if isinstance(cond, AllOf):

            def all_of(rows: Sequence[_Row]) -> list[_Row] | None:
                witness: list[_Row] = []
                for part in parts:
                    found = part(rows)
                    if found is None:
                        return None
                    witness += found
                return witness

            return all_of

        def any_of(rows: Sequence[_Row]) -> list[_Row] | None:
            witness: list[_Row] | None = None
            for part in parts:  # every part: the witness is all that holds
                found = part(rows)
                if found is not None:
                    witness = found if witness is None else witness + found
            return witness

        return any_of

    def holds(self, cond: Condition, rows: Sequence[_Row]) -> list[_Row] | None:
        """The rows that make ``cond`` hold among ``rows`` (the witness), or None."""
        if isinstance(cond, Leaf):
            bit = self.leaf_bits[id(cond)]
            chosen = [r for r in rows if r.mask & bit]
            if cond.distinct is not None:
                name = cond.distinct
                count = len({r.values[name] for r in chosen} - {None})
            else:
                count = len(chosen)
            return chosen if count >= cond.at_least else None
        results = [self.holds(part, rows) for part in cond.parts]
        if isinstance(cond, AllOf):
            if any(r is None for r in results):
                return None
            return [row for r in results if r is not None for row in r]
        assert isinstance(cond, AnyOf)
        held = [row for r in results if r is not None for row in r]
        return held if any(r is not None for r in results) else None

    def match(self, rule: Rule, rows: Sequence[_Row], focus: tuple[date, date] | None = None) -> list[_Row]:
        """Every row that takes part in some window where the rule holds; empty when it does not.

        ``focus``: only windows that contain a date in this range are tried (a new incident
        cannot change windows it is not in)."""
        mask = self.rule_mask[rule.id]
        candidates: list[_Row] = []  # rows come in date order
        present = 0
        for r in rows:
            if r.mask & mask:
                candidates.append(r)
                present |= r.mask
        if not candidates or not self._possible(rule, present & mask):
            return []
        check = self.checks[rule.id] if self.prune else partial(self.holds, rule.when)
        if rule.window_days is None:
            return check(candidates) or []
        width = timedelta(days=rule.window_days)
        dates = [r.when for r in candidates]
        first, last = (focus[0] - width, focus[1]) if focus is not None else (dates[0], dates[-1])
        witness: dict[int, _Row] = {}
        last_hi = -1
        previous: date | None = None
        # Each distinct date (in [first, last]) starts a window; ``lo`` is its first row.
        for lo, start in enumerate(dates):
            if start == previous or start < first:
                continue
            if start > last:
                break
            previous = start
            hi = bisect_right(dates, start + width, lo)
            if hi == last_hi and self.prune:
                # Inside the window tried before (same end, later start): conditions are
                # monotone in their rows, so it holds only if that one did, with a witness
                # inside that one's.
                continue
            last_hi = hi
            window = candidates[lo:hi]
            present = 0
            for r in window:
                present |= r.mask
            if not self._possible(rule, present & mask):
                continue
            found = check(window)
            if found:
                for r in found:
                    witness[id(r)] = r
        return sorted(witness.values(), key=_order)


_WHEN = attrgetter("when")


def _order(row: _Row) -> tuple[date, str, int]:
    return row.when, row.incident_id, row.act_index


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
        self._compiled = _Compiled(rules)
        self._horizon = {kind: rules.horizon_days(kind) for kind in rules.key_kinds}

    def rows(self, incident: IncidentSnapshot) -> list[_Row]:
        """An incident version's rows, computed once (snapshots are immutable). Kept on the
        snapshot with the engine they were computed for (masks depend on the rules)."""
        cached = incident.rows
        if cached is not None and incident.rows_for is self:
            return cached
        rows = self._compiled.rows_of(incident)
        object.__setattr__(incident, "rows", rows)
        object.__setattr__(incident, "rows_for", self)
        return rows

    def keys_for(self, incident: IncidentSnapshot) -> list[str]:
        """The keys an incident is filed under: only where some rule of that key can use it."""
        keys = []
        mask = 0
        for row in self.rows(incident):
            mask |= row.mask
        for kind in self._by_kind:
            if not mask & self._compiled.kind_mask[kind]:
                continue
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
        touched: list[_Row] = []
        changed_id = change.incident.incident_id if isinstance(change, Upsert) else change.incident_id
        before = state.incidents.get(changed_id)
        if before is not None:
            touched += self.rows(before)
        if isinstance(change, Upsert):
            incidents[changed_id] = change.incident
            touched += self.rows(change.incident)
        else:
            incidents.pop(changed_id, None)
        rows = self._sorted_rows(state)
        if before is not None:
            rows = [r for r in rows if r.incident_id != changed_id]
        if isinstance(change, Upsert):
            rows = list(rows) if before is None else rows
            for row in self.rows(change.incident):
                insort(rows, row, key=_WHEN)
        new = KeyState(incidents=incidents, findings=dict(state.findings), rows_cache=rows)
        touched_mask = 0
        for row in touched:
            touched_mask |= row.mask
        # Only a brand-new incident is a pure addition: windows without it cannot change.
        added = isinstance(change, Upsert) and before is None
        focus = (min(r.when for r in touched), max(r.when for r in touched)) if added and touched else None
        evaluations = []
        for rule in self._by_kind.get(kind, ()):
            if not touched_mask & self._compiled.rule_mask[rule.id]:
                continue  # the change has nothing this rule selects: its verdict stands
            memo = state.findings.get(rule.id)
            result = self._evaluate(rule, kind, value, rows, change.cause, focus, memo, incidents)
            if result is None:
                if memo is not None:
                    del new.findings[rule.id]
                    evaluations.append(
                        Evaluation(
                            rule=rule.id,
                            severity=rule.severity,
                            key_kind=kind,
                            key_value=value,
                            fingerprint=fingerprint(rule.id, value),
                            holds=False,
                            cause=change.cause,
                            incident_ids=memo.incident_ids,
                        )
                    )
                continue
            found, ev = result
            if ev is not None:
                new.findings[rule.id] = found
                evaluations.append(ev)
        if watermark is not None:
            self._expire(new, kind, watermark)
        return new, evaluations

    def _witness(
        self,
        rule: Rule,
        rows: Sequence[_Row],
        focus: tuple[date, date] | None,
        memo: FindingMemo | None,
        incidents: dict[str, IncidentSnapshot],
    ) -> list[_Row] | None:
        """The rows that make the rule hold (empty: it does not); None: as in ``memo``."""
        if focus is None or rule.window_days is None:
            return self._compiled.match(rule, rows)
        witness = self._compiled.match(rule, rows, focus)
        if memo is None:
            return witness
        # Windows without the new incident are as they were: if none with it holds, or it
        # adds nothing to the witness, the verdict stands.
        keep_acts = set(memo.acts)
        known = set(memo.incident_ids)
        if all(
            (r.incident_id, r.act_index) in keep_acts or (r.act_index < 0 and r.incident_id in known)
            for r in witness
        ):
            return None
        merged = {id(r): r for r in [*self._memo_rows(rule, memo, incidents), *witness]}
        return sorted(merged.values(), key=_order)

    def _memo_rows(self, rule: Rule, memo: FindingMemo, incidents: dict[str, IncidentSnapshot]) -> list[_Row]:
        keep_acts = set(memo.acts)
        mask = self._compiled.rule_mask[rule.id]
        old = [
            r
            for inc_id in memo.incident_ids
            if inc_id in incidents
            for r in self.rows(incidents[inc_id])
            if r.mask & mask and ((inc_id, r.act_index) in keep_acts or r.act_index < 0)
        ]
        return sorted(old, key=_order)

    def _evaluate(
        self,
        rule: Rule,
        kind: KeyKind,
        value: str,
        rows: Sequence[_Row],
        cause: Cause,
        focus: tuple[date, date] | None,
        memo: FindingMemo | None,
        incidents: dict[str, IncidentSnapshot],
    ) -> tuple[FindingMemo, Evaluation | None] | None:
        """None: the rule does not hold. Else the memo, and the evaluation if anything changed."""
        witness = self._witness(rule, rows, focus, memo, incidents)
        if witness is None:
            assert memo is not None
            return memo, None
        if not witness:
            return None
        by_id = {r.incident_id: incidents[r.incident_id] for r in witness}
        ordered = sorted(by_id.values(), key=lambda i: (i.received_at, i.incident_id))
        deadline, deadline_as_of = None, None
        if rule.deadline == "next_hearing_on":
            # The latest report that names a hearing wins: a new report moves the deadline.
            with_hearing = [i for i in ordered if i.next_hearing_on is not None]
            if with_hearing:
                deadline, deadline_as_of = with_hearing[-1].next_hearing_on, with_hearing[-1].received_at
        found = FindingMemo(
            incident_ids=tuple(sorted(by_id)),
            acts=tuple((r.incident_id, r.act_index) for r in witness if r.act_index >= 0),
            deadline=deadline,
        )
        if found == memo:
            return found, None  # nothing new: skip building the evaluation
        matched = tuple(m for r in witness if (m := r.matched) is not None)
        return found, Evaluation(
            rule=rule.id,
            severity=rule.severity,
            key_kind=kind,
            key_value=value,
            fingerprint=fingerprint(rule.id, value),
            holds=True,
            cause=cause,
            incident_ids=found.incident_ids,
            matched_acts=matched,
            summary=_summary(rule, kind, value, matched, by_id.values(), deadline),
            deadline=deadline,
            deadline_as_of=deadline_as_of,
            first_received=ordered[0].received_at,
            last_received=ordered[-1].received_at,
        )

    def prepare(self, state: KeyState) -> None:
        """Compute a state's rows now (a restored state, off the batches' path)."""
        self._sorted_rows(state)

    def _sorted_rows(self, state: KeyState) -> list[_Row]:
        if state.rows_cache is None:
            state.rows_cache = sorted((r for inc in state.incidents.values() for r in self.rows(inc)), key=_WHEN)
        rows: list[_Row] = state.rows_cache
        return rows

    def _expire(self, state: KeyState, kind: KeyKind, watermark: date) -> None:
        """Drop incidents no window can use any more, unless an alert still stands on them."""
        horizon = watermark - timedelta(days=self._horizon[kind])
        if state.rows_cache and state.rows_cache[0].when >= horizon:
            return  # the oldest row is still usable, so is every incident
        kept = {i for memo in state.findings.values() for i in memo.incident_ids}
        dropped = False
        for incident_id, incident in list(state.incidents.items()):
            if incident_id not in kept and incident.latest_date < horizon:
                del state.incidents[incident_id]
                dropped = True
        if dropped and state.rows_cache is not None:
            state.rows_cache = [r for r in state.rows_cache if r.incident_id in state.incidents]


def _summary(
    rule: Rule,
    kind: KeyKind,
    value: str,
    matched: Iterable[MatchedAct],
    incidents: Iterable[IncidentSnapshot],
    deadline: date | None,
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
