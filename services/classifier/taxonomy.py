"""The act table and the mapping of structured acts to labels. Pure: no I/O beyond reading
the table file once."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from shared.events import Act, Classification, Evidence
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
    return ActTable(version=str(raw["version"]), rows=rows)


@lru_cache(maxsize=1)
def default_act_table() -> ActTable:
    return parse_act_table(ACT_TABLE_FILE.read_text())


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


def scheme_of(label: str) -> str:
    for scheme, enum in (("pace_methods", PaceMethod), ("ccdi_methods", CcdiMethod),
                         ("persuasion_channels", PersuasionChannel), ("ir_categories", IrCategory)):
        if label in {m.value for m in enum}:
            return scheme
    raise ValueError(f"unknown label {label!r}")


def classify_acts(acts: list[Act], table: ActTable | None = None) -> Classification:
    table = table or default_act_table()
    return assemble(labels_from_acts(table, acts), table.version)
