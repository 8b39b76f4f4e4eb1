"""The act table and the mapping of acts to labels, from structured acts and from narrative
text. Pure: no I/O beyond reading the rule files once."""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from services.classifier.narrative import Finding, Lexicon, default_lexicon, find_acts
from shared.events import Act, Classification, Evidence, Narrative, TextSpan
from shared.vocabulary import ActType, CcdiMethod, IrCategory, PaceMethod, PersuasionChannel

ACT_TABLE_FILE = Path(__file__).parent / "act_table.toml"

SCHEMES = ("pace_methods", "ccdi_methods", "persuasion_channels", "ir_categories")


@dataclass(frozen=True)
class ActLabels:
    pace: PaceMethod
    ccdi: CcdiMethod | None
    channel: PersuasionChannel | None
    ir: IrCategory | None

    def by_scheme(self) -> dict[str, str]:
        pairs = {"pace_methods": self.pace, "ccdi_methods": self.ccdi,
                 "persuasion_channels": self.channel, "ir_categories": self.ir}
        return {scheme: str(label) for scheme, label in pairs.items() if label is not None}


@dataclass(frozen=True)
class ActTable:
    version: str
    rows: dict[ActType, ActLabels]
    digest: str = ""  # of the file's bytes: a changed row is a changed classifier

    def labels(self, act_type: ActType) -> ActLabels:
        return self.rows[act_type]


def parse_act_table(text: str) -> ActTable:
    raw = tomllib.loads(text)
    rows: dict[ActType, ActLabels] = {}
    for name, (pace, ccdi, channel, ir) in raw["acts"].items():
        rows[ActType(name)] = ActLabels(
            pace=PaceMethod(pace),
            ccdi=CcdiMethod(ccdi) if ccdi else None,
            channel=PersuasionChannel(channel) if channel else None,
            ir=IrCategory(ir) if ir else None,
        )
    missing = set(ActType) - set(rows)
    if missing:
        raise ValueError(f"act table lacks rows for: {sorted(missing)}")
    return ActTable(
        version=str(raw["version"]), rows=rows, digest=hashlib.sha256(text.encode()).hexdigest()
    )


@lru_cache(maxsize=1)
def default_act_table() -> ActTable:
    return parse_act_table(ACT_TABLE_FILE.read_text())


def classifier_version(table: ActTable, lexicon: Lexicon) -> str:
    """Names both rule files and a hash of their contents: editing either changes it, so a
    re-classification after a rule change is told apart from the one it replaces."""
    digest = hashlib.sha256(f"{table.digest}|{lexicon.digest}".encode()).hexdigest()[:12]
    return f"{table.version}+{lexicon.version}+{digest}"


def labels_from_acts(table: ActTable, acts: list[Act]) -> list[Evidence]:
    """One evidence item per (label, act); blocked acts count too (the attempt is the incident)."""
    evidence: list[Evidence] = []
    for index, act in enumerate(acts):
        for label in table.labels(act.type).by_scheme().values():
            evidence.append(Evidence(label=label, rule=f"act:{act.type.value}", from_=f"acts[{index}]"))
    return evidence


def assemble(evidence: list[Evidence], version: str) -> Classification:
    """Fold evidence into the four label lists (sorted, unique)."""
    schemes: dict[str, set[str]] = {s: set() for s in SCHEMES}
    for item in evidence:
        schemes[scheme_of(item.label)].add(item.label)
    return Classification(
        pace_methods=sorted(schemes["pace_methods"]),
        ccdi_methods=sorted(schemes["ccdi_methods"]),
        persuasion_channels=sorted(schemes["persuasion_channels"]),
        ir_categories=sorted(schemes["ir_categories"]),
        evidence=evidence,
        classifier_version=version,
    )


_SCHEME_OF: dict[str, str] = {
    member.value: scheme
    for scheme, enum in (("pace_methods", PaceMethod), ("ccdi_methods", CcdiMethod),
                         ("persuasion_channels", PersuasionChannel), ("ir_categories", IrCategory))
    for member in enum
}


def scheme_of(label: str) -> str:
    try:
        return _SCHEME_OF[label]
    except KeyError:
        raise ValueError(f"unknown label {label!r}") from None


def labels_from_findings(table: ActTable, findings: list[Finding]) -> list[Evidence]:
    """One evidence item per (label, finding), quoting the span of narrative text."""
    evidence: list[Evidence] = []
    for finding in findings:
        span = TextSpan(start=finding.start, end=finding.end, text=finding.text)
        for label in table.labels(finding.act).by_scheme().values():
            evidence.append(
                Evidence(label=label, rule=f"text:{finding.act.value}/{finding.rule}", from_="narrative", span=span)
            )
    return evidence


def classify_acts(acts: list[Act], table: ActTable | None = None) -> Classification:
    """Structured acts only (the act table, nothing else)."""
    table = table or default_act_table()
    return assemble(labels_from_acts(table, acts), table.version)


def classify_report(
    acts: list[Act],
    narrative: Narrative | None,
    table: ActTable | None = None,
    lexicon: Lexicon | None = None,
) -> Classification:
    """Structured acts through the table, plus the acts the narrative describes through the
    same table; every label keeps the evidence of each act or span that gave it."""
    table = table or default_act_table()
    lexicon = lexicon or default_lexicon()
    evidence = labels_from_acts(table, acts)
    if narrative is not None and narrative.text.strip():
        evidence += labels_from_findings(table, find_acts(narrative.text, lexicon))
    return assemble(evidence, classifier_version(table, lexicon))
