"""The alert rules file: its language, its loading and its validation. Pure: no I/O beyond
reading the file once at start-up.

A rule is data: a key (the target or the place), an event-time window, and a condition made
of ``all``/``any`` over leaves. A leaf selects the rows of one key's state (each act, or each
incident) by attribute filters and holds when at least ``at_least`` rows (or distinct values of
one attribute) are selected. docs/alerts.md describes the language for operators.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml

from shared.events import AlertSeverity
from shared.vocabulary import Actor, ActStatus, ActType, Outcome, StatusAbroad, TargetGroup

DEFAULT_RULES_FILE = Path(__file__).parent / "rules.yaml"

KeyKind = Literal["target_ref", "place"]
Scope = Literal["acts", "incidents"]
KEY_KINDS: tuple[KeyKind, ...] = ("target_ref", "place")
DEADLINE_SOURCES = ("next_hearing_on",)

# Attributes every row has (taken from its incident); None = any value is allowed.
INCIDENT_ATTRIBUTES: dict[str, type[StrEnum] | None] = {
    "incident_id": None,
    "target_ref": None,
    "partner": None,
    "country": None,
    "city": None,
    "place": None,
    "nationality": None,
    "group": TargetGroup,
    "status_abroad": StatusAbroad,
    "outcome": Outcome,
}
# Attributes only act rows have.
ACT_ATTRIBUTES: dict[str, type[StrEnum] | None] = {
    "type": ActType,
    "status": ActStatus,
    "actor": Actor,
}


class RulesError(ValueError):
    """The rules file is invalid; ``problems`` lists every problem with where it is."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid alert rules in {source}:\n{lines}")


@dataclass(frozen=True, slots=True)
class Filter:
    attribute: str
    values: frozenset[str]
    negate: bool = False

    def accepts(self, value: str | None) -> bool:
        inside = value is not None and value in self.values
        return not inside if self.negate else inside


@dataclass(frozen=True, slots=True)
class Leaf:
    scope: Scope
    filters: tuple[Filter, ...]
    at_least: int = 1
    distinct: str | None = None


@dataclass(frozen=True, slots=True)
class AllOf:
    parts: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    parts: tuple[Condition, ...]


Condition = Leaf | AllOf | AnyOf


def leaves(condition: Condition) -> list[Leaf]:
    if isinstance(condition, Leaf):
        return [condition]
    return [leaf for part in condition.parts for leaf in leaves(part)]


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    severity: AlertSeverity
    key: KeyKind
    window_days: int | None  # None: the whole (unexpired) history of the key
    summary: str
    when: Condition
    deadline: str | None = None


@dataclass(frozen=True, slots=True)
class RuleSet:
    version: int
    allowed_lateness_days: int
    rules: tuple[Rule, ...]
    # Derived act attributes: attribute -> act type -> value.
    derived: Mapping[str, Mapping[str, str]]

    def for_key(self, kind: KeyKind) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.key == kind)

    def horizon_days(self, kind: KeyKind) -> int:
        """How far behind the watermark a row of this key kind can still be used."""
        windows = [r.window_days or 0 for r in self.for_key(kind)]
        return self.allowed_lateness_days + max(windows, default=0)

    @property
    def key_kinds(self) -> tuple[KeyKind, ...]:
        return tuple(k for k in KEY_KINDS if self.for_key(k))


# --- Parsing and validation ------------------------------------------------------------------


class _Parser:
    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw
        self.problems: list[str] = []
        self.sets: dict[str, list[str]] = {}
        self.derived: dict[str, dict[str, str]] = {}

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def parse(self) -> RuleSet | None:
        raw = self.raw
        known = {"version", "allowed_lateness_days", "sets", "attributes", "rules"}
        for extra in sorted(set(raw) - known):
            self.problem(extra, "unknown top-level field")
        version = raw.get("version")
        if version != 1:
            self.problem("version", f"must be 1, got {version!r}")
        lateness = raw.get("allowed_lateness_days", 1095)
        if not isinstance(lateness, int) or isinstance(lateness, bool) or lateness < 0:
            self.problem("allowed_lateness_days", "must be a whole number of days >= 0")
            lateness = 0
        self._parse_sets(raw.get("sets") or {})
        self._parse_derived(raw.get("attributes") or {})
        rules_raw = raw.get("rules")
        rules: list[Rule] = []
        if not isinstance(rules_raw, list) or not rules_raw:
            self.problem("rules", "must be a non-empty list")
        else:
            seen: set[str] = set()
            for i, item in enumerate(rules_raw):
                rule = self._parse_rule(f"rules[{i}]", item)
                if rule is None:
                    continue
                if rule.id in seen:
                    self.problem(f"rules[{i}].id", f"duplicate rule id {rule.id!r}")
                seen.add(rule.id)
                rules.append(rule)
        if self.problems:
            return None
        return RuleSet(version=1, allowed_lateness_days=lateness, rules=tuple(rules), derived=self.derived)

    def _parse_sets(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            self.problem("sets", "must be a mapping of name -> list of values")
            return
        for name, values in raw.items():
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                self.problem(f"sets.{name}", "must be a list of strings")
                continue
            self.sets[str(name)] = values

    def _parse_derived(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            self.problem("attributes", "must be a mapping of attribute -> value -> act types")
            return
        for attribute, mapping in raw.items():
            where = f"attributes.{attribute}"
            if attribute in INCIDENT_ATTRIBUTES or attribute in ACT_ATTRIBUTES:
                self.problem(where, "shadows a built-in attribute")
                continue
            if not isinstance(mapping, dict):
                self.problem(where, "must map each value to a list of act types")
                continue
            by_type: dict[str, str] = {}
            for value, types in mapping.items():
                for act_type in self._values(f"{where}.{value}", types, ActType):
                    if act_type in by_type:
                        self.problem(f"{where}.{value}", f"act type {act_type!r} already maps to {by_type[act_type]!r}")
                    by_type[act_type] = str(value)
            self.derived[str(attribute)] = by_type

    def _values(self, where: str, raw: Any, vocabulary: type[StrEnum] | None) -> list[str]:
        """A value, a list of values, or "$set"; checked against the vocabulary if there is one."""
        items = raw if isinstance(raw, list) else [raw]
        out: list[str] = []
        for item in items:
            if not isinstance(item, str):
                self.problem(where, f"values must be strings, got {item!r}")
                continue
            if item.startswith("$"):
                if item[1:] not in self.sets:
                    self.problem(where, f"unknown set {item!r}")
                    continue
                out.extend(self.sets[item[1:]])
            else:
                out.append(item)
        if vocabulary is not None:
            allowed = {v.value for v in vocabulary}
            for value in out:
                if value not in allowed:
                    self.problem(where, f"{value!r} is not a known {vocabulary.__name__} (one of {sorted(allowed)})")
        return out

    def _attributes(self, scope: Scope) -> dict[str, type[StrEnum] | None]:
        if scope == "incidents":
            return INCIDENT_ATTRIBUTES
        return {**INCIDENT_ATTRIBUTES, **ACT_ATTRIBUTES}

    def _parse_rule(self, where: str, raw: Any) -> Rule | None:
        if not isinstance(raw, dict):
            self.problem(where, "must be a mapping")
            return None
        known = {"id", "severity", "key", "window_days", "summary", "when", "deadline"}
        for extra in sorted(set(raw) - known):
            self.problem(f"{where}.{extra}", "unknown field")
        rule_id = raw.get("id")
        if not isinstance(rule_id, str) or not rule_id:
            self.problem(f"{where}.id", "required, a non-empty string")
            rule_id = "?"
        where = f"{where} ({rule_id})"
        severity = raw.get("severity")
        if severity not in {s.value for s in AlertSeverity}:
            self.problem(f"{where}.severity", f"must be one of {[s.value for s in AlertSeverity]}, got {severity!r}")
        key = raw.get("key")
        if key not in KEY_KINDS:
            self.problem(f"{where}.key", f"must be one of {list(KEY_KINDS)}, got {key!r}")
        if "window_days" not in raw:
            self.problem(f"{where}.window_days", "required: a number of days, or null for no window")
        window = raw.get("window_days")
        if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 0):
            self.problem(f"{where}.window_days", f"must be a whole number of days >= 0 or null, got {window!r}")
        summary = raw.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            self.problem(f"{where}.summary", "required, a sentence for the monitors")
        deadline = raw.get("deadline")
        if deadline is not None and deadline not in DEADLINE_SOURCES:
            self.problem(f"{where}.deadline", f"must be one of {list(DEADLINE_SOURCES)}, got {deadline!r}")
        if "when" not in raw:
            self.problem(f"{where}.when", "required: the condition")
            return None
        when = self._condition(f"{where}.when", raw["when"])
        if when is None or self.problems:
            return None
        assert isinstance(severity, str) and isinstance(summary, str) and key in KEY_KINDS
        return Rule(
            id=rule_id,
            severity=AlertSeverity(severity),
            key=key,
            window_days=window,
            summary=summary.strip(),
            when=when,
            deadline=deadline,
        )

    def _condition(self, where: str, raw: Any) -> Condition | None:
        if not isinstance(raw, dict):
            self.problem(where, "a condition is a mapping with 'all', 'any', 'acts' or 'incidents'")
            return None
        combinators = [k for k in ("all", "any") if k in raw]
        scopes = [k for k in ("acts", "incidents") if k in raw]
        if len(combinators) + len(scopes) != 1:
            self.problem(where, "needs exactly one of 'all', 'any', 'acts', 'incidents'")
            return None
        if combinators:
            name = combinators[0]
            for extra in sorted(set(raw) - {name}):
                self.problem(f"{where}.{extra}", f"unknown field beside '{name}'")
            items = raw[name]
            if not isinstance(items, list) or not items:
                self.problem(f"{where}.{name}", "must be a non-empty list of conditions")
                return None
            parts = [self._condition(f"{where}.{name}[{i}]", item) for i, item in enumerate(items)]
            if any(p is None for p in parts):
                return None
            done = tuple(p for p in parts if p is not None)
            return AllOf(done) if name == "all" else AnyOf(done)
        return self._leaf(where, scopes[0], raw)  # type: ignore[arg-type]

    def _leaf(self, where: str, scope: Scope, raw: dict[str, Any]) -> Leaf | None:
        for extra in sorted(set(raw) - {scope, "at_least", "distinct"}):
            self.problem(f"{where}.{extra}", "unknown field (a leaf has the scope, 'at_least', 'distinct')")
        attributes = self._attributes(scope)
        derived = set(self.derived) if scope == "acts" else set()
        selector = raw[scope] if raw[scope] is not None else {}
        if not isinstance(selector, dict):
            self.problem(f"{where}.{scope}", "must be a mapping of attribute -> value(s)")
            return None
        filters: list[Filter] = []
        for attribute, spec in selector.items():
            at = f"{where}.{scope}.{attribute}"
            if attribute not in attributes and attribute not in derived:
                self.problem(at, f"unknown attribute for {scope} (one of {sorted([*attributes, *derived])})")
                continue
            vocabulary = attributes.get(attribute)
            negate = isinstance(spec, dict)
            if negate:
                if set(spec) != {"not"}:
                    self.problem(at, "a mapping here must be {not: value(s)}")
                    continue
                spec = spec["not"]
            values = self._values(at, spec, vocabulary)
            if attribute in derived:
                allowed = set(self.derived[attribute].values())
                for value in values:
                    if value not in allowed:
                        self.problem(at, f"{value!r} is not a value of {attribute} ({sorted(allowed)})")
            filters.append(Filter(attribute, frozenset(values), negate))
        at_least = raw.get("at_least", 1)
        if not isinstance(at_least, int) or isinstance(at_least, bool) or at_least < 1:
            self.problem(f"{where}.at_least", f"must be a whole number >= 1, got {at_least!r}")
            at_least = 1
        distinct = raw.get("distinct")
        if distinct is not None and distinct not in attributes and distinct not in derived:
            self.problem(f"{where}.distinct", f"unknown attribute {distinct!r} for {scope}")
        return Leaf(scope=scope, filters=tuple(filters), at_least=at_least, distinct=distinct)


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(source, [f"not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise RulesError(source, ["the file must be a mapping with 'version' and 'rules'"])
    parser = _Parser(raw)
    rules = parser.parse()
    if rules is None:
        raise RulesError(source, parser.problems)
    return rules


def load_rules(path: str | Path | None = None) -> RuleSet:
    file = Path(path) if path else DEFAULT_RULES_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(str(file), [f"cannot read: {exc}"]) from exc
    return parse_rules(text, str(file))
