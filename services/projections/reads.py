"""What the read API makes of stored rows. Pure: no I/O.

Rendering with confidentiality, cursors, small-cell suppression of statistics, timelines,
CSV rows and entity tags.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

STATS_DIMENSIONS = (
    "country",
    "pace_method",
    "ccdi_method",
    "persuasion_channel",
    "ir_category",
    "group",
    "year",
)


@dataclass(frozen=True)
class IncidentFilters:
    countries: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()  # PACE methods, CCDI methods or persuasion channels
    ir_categories: tuple[str, ...] = ()
    occurred_from: date | None = None
    occurred_to: date | None = None
    include_retracted: bool = False


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: just after this (occurred_on, incident_id)."""

    occurred_on: date
    incident_id: str

    def encode(self) -> str:
        raw = json.dumps([self.occurred_on.isoformat(), self.incident_id]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Raises ValueError for anything that is not a cursor this API gave out."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            occurred_on, incident_id = json.loads(raw)
            return cls(date.fromisoformat(occurred_on), str(incident_id))
        except (binascii.Error, ValueError, TypeError) as exc:
            raise ValueError("not a cursor from this API") from exc


def render_incident(row: Mapping[str, Any], *, with_confidential: bool) -> dict[str, Any]:
    """The partner-contract §2 shape. Narrative, sources and evidence spans (quoted text)
    only when ``with_confidential`` (the reporting partner, admins)."""
    report = row["report"] or {}
    facts = report.get("facts") or {}
    location = facts.get("location") or {}
    target = facts.get("target") or {}
    body: dict[str, Any] = {
        "incident_id": row["incident_id"],
        "target_ref": row["target_ref"],
        "occurred_on": facts.get("occurred_on"),
        "date_precision": facts.get("date_precision"),
        "country": location.get("country"),
        "city": location.get("city"),
        "group": target.get("group"),
        "status_abroad": target.get("status_abroad"),
        "acts": facts.get("acts", []),
        "outcome": facts.get("outcome"),
        "next_hearing_on": facts.get("next_hearing_on"),
        "retracted": row["retracted"],
        "classification": None,
    }
    classification = row["classification"]
    if classification is not None:
        evidence = [
            item if with_confidential else {k: v for k, v in item.items() if k != "span"}
            for item in classification.get("evidence", [])
        ]
        body["classification"] = {
            "pace_methods": classification.get("pace_methods", []),
            "ccdi_methods": classification.get("ccdi_methods", []),
            "persuasion_channels": classification.get("persuasion_channels", []),
            "ir_categories": classification.get("ir_categories", []),
            "evidence": evidence,
            "classifier_version": classification.get("classifier_version"),
        }
    if with_confidential:
        body["narrative"] = facts.get("narrative")
        body["sources"] = facts.get("sources", [])
    return body


def timeline(
    target_ref: str, incidents: Sequence[Mapping[str, Any]], rendered: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Every incident and act of one target, in date order (acts without a date take the
    incident's date)."""
    entries = []
    for row, body in zip(incidents, rendered, strict=True):
        for index, act in enumerate(body["acts"]):
            entries.append(
                {
                    "on": act.get("on") or body["occurred_on"],
                    "incident_id": row["incident_id"],
                    "act_index": index,
                    "type": act.get("type"),
                    "actor": act.get("actor"),
                    "status": act.get("status"),
                    "country": body["country"],
                }
            )
    entries.sort(key=lambda e: (e["on"] or "", e["incident_id"], e["act_index"]))
    return {"target_ref": target_ref, "incidents": list(rendered), "acts": entries}


def suppress(cells: Sequence[dict[str, Any]], by: Sequence[str], k: int) -> list[dict[str, Any]]:
    """Small-cell suppression for readers without ``incidents:read``.

    Primary: every cell counting fewer than ``k`` incidents loses its count. Secondary: where a
    row or column of the cube (and the whole table) would have exactly one suppressed cell,
    the smallest visible cell beside it is suppressed too, so that the hidden count cannot be
    recovered by subtracting the visible ones from a total."""
    out = [dict(cell) for cell in cells]
    hidden = [cell["incidents"] < k for cell in out]
    changed = True
    while changed:
        changed = False
        groupings: list[tuple[str, ...]] = [()] + [tuple(d for d in by if d != free) for free in by]
        for keep in groupings:
            groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
            for index, cell in enumerate(out):
                groups[tuple(cell[d] for d in keep)].append(index)
            for members in groups.values():
                secret = [i for i in members if hidden[i]]
                visible = [i for i in members if not hidden[i]]
                if len(secret) == 1 and visible:
                    smallest = min(visible, key=lambda i: out[i]["incidents"])
                    hidden[smallest] = True
                    changed = True
    for cell, is_hidden in zip(out, hidden, strict=True):
        if is_hidden:
            cell["incidents"] = None
            cell["suppressed"] = True
    return out


CSV_COLUMNS = (
    "incident_id",
    "target_ref",
    "occurred_on",
    "date_precision",
    "country",
    "city",
    "group",
    "status_abroad",
    "outcome",
    "retracted",
    "act_types",
    "pace_methods",
    "ccdi_methods",
    "persuasion_channels",
    "ir_categories",
    "classifier_version",
)


def csv_row(body: Mapping[str, Any]) -> list[str]:
    """One rendered incident as CSV cells; lists are joined with ';'. Never quoted text."""
    classification = body.get("classification") or {}

    def joined(values: Iterable[Any]) -> str:
        return ";".join(str(v) for v in values)

    return [
        body["incident_id"],
        body["target_ref"],
        body["occurred_on"] or "",
        body["date_precision"] or "",
        body["country"] or "",
        body["city"] or "",
        body["group"] or "",
        body["status_abroad"] or "",
        body["outcome"] or "",
        "true" if body["retracted"] else "false",
        joined(a.get("type") for a in body["acts"]),
        joined(classification.get("pace_methods", [])),
        joined(classification.get("ccdi_methods", [])),
        joined(classification.get("persuasion_channels", [])),
        joined(classification.get("ir_categories", [])),
        classification.get("classifier_version") or "",
    ]


def entity_tag(*parts: object) -> str:
    """A strong ETag from what determines a response: data version, request, reader."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]
    return f'"{digest}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    candidates = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return etag in candidates
