"""Precision, recall and F1 of the classifier against a labelled file. Pure: no I/O.

A labelled line is ``{"event": <CloudEvent with an incident report as data>,
"expected_classification": {<scheme>: [labels]}}`` (the format of the shared samples). Each
(incident, label) pair counts once; micro averages pool every label of every scheme.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter

from services.classifier.taxonomy import SCHEMES, classify_report
from shared.events import Act, Classification, Narrative

_ACTS = TypeAdapter(list[Act])


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


@dataclass
class Mismatch:
    case: str
    missing: list[str]
    unexpected: list[str]


@dataclass
class Report:
    per_label: dict[str, Counts] = field(default_factory=dict)
    overall: Counts = field(default_factory=Counts)
    cases: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)


def labels_of(classification: Mapping[str, Any]) -> set[str]:
    return {f"{scheme}:{label}" for scheme in SCHEMES for label in classification.get(scheme, [])}


def classify_labelled(event: Mapping[str, Any]) -> Classification:
    """Classify the report inside a labelled line as the service would (identity ignored)."""
    data = event.get("data") or {}
    acts = _ACTS.validate_python(data.get("acts", []))
    narrative = Narrative.model_validate(data["narrative"]) if data.get("narrative") else None
    return classify_report(acts, narrative)


def evaluate(lines: Iterable[Mapping[str, Any]]) -> Report:
    report = Report()
    for index, line in enumerate(lines):
        event = line["event"]
        expected = labels_of(line["expected_classification"])
        got = labels_of(classify_labelled(event).model_dump())
        report.cases += 1
        for label in expected | got:
            counts = report.per_label.setdefault(label, Counts())
            if label in expected and label in got:
                counts.tp += 1
                report.overall.tp += 1
            elif label in got:
                counts.fp += 1
                report.overall.fp += 1
            else:
                counts.fn += 1
                report.overall.fn += 1
        if expected != got:
            report.mismatches.append(
                Mismatch(str(event.get("id", index)), sorted(expected - got), sorted(got - expected))
            )
    return report


def format_report(report: Report, *, show_errors: bool = False) -> str:
    rows = [f"{'label':<42} {'precision':>9} {'recall':>7} {'f1':>6} {'tp':>4} {'fp':>4} {'fn':>4}"]
    for label in sorted(report.per_label):
        c = report.per_label[label]
        rows.append(f"{label:<42} {c.precision:>9.3f} {c.recall:>7.3f} {c.f1:>6.3f} {c.tp:>4} {c.fp:>4} {c.fn:>4}")
    o = report.overall
    rows.append(
        f"{'overall (micro, ' + str(report.cases) + ' reports)':<42} {o.precision:>9.3f} {o.recall:>7.3f} "
        f"{o.f1:>6.3f} {o.tp:>4} {o.fp:>4} {o.fn:>4}"
    )
    if show_errors:
        for m in report.mismatches:
            rows.append(f"  {m.case}: missing {m.missing or '-'}; unexpected {m.unexpected or '-'}")
    return "\n".join(rows)
