"""``tnrwatch import FILE.csv|FILE.jsonl``: post a partner's backlog through intake.

Every row goes through intake's own validation (batch mode, ``--batch-size`` rows a request).
A batch is all-or-nothing at intake, so when some rows are refused the importer records their
reasons and re-posts the rest. Row ids that the file does not give are derived from the row's
content, so running the same import twice accepts nothing twice (duplicates are listed).

JSONL: one CloudEvent per line; ``specversion``, ``source`` (``--source``) and ``type``
(``org.tnrwatch.incident.reported.v1``) are filled in when missing.

CSV: columns ``id``, ``subject``, ``type`` and either ``data`` (the report as JSON) or the
report's fields flattened: ``occurred_on``, ``date_precision``, ``country``, ``city``, ``group``,
``nationality``, ``status_abroad``, ``name``, ``name_zh``, ``birth_date``, ``acts`` (a JSON
array, or ``type|on|actor|status`` items separated by ``;``), ``outcome``, ``next_hearing_on``,
``narrative``, ``narrative_lang``, ``source_url``, ``source_reliability``, ``source_credibility``.
Empty cells are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

REPORTED = "org.tnrwatch.incident.reported.v1"
BATCH = "application/cloudevents-batch+json"
MAX_ATTEMPTS = 8


@dataclass
class Row:
    line: int  # 1-based line (JSONL) or record number after the header (CSV)
    event: dict[str, Any] | None
    error: str | None = None

    @property
    def label(self) -> str:
        ident = self.event.get("id") if self.event else None
        return f"row {self.line}" + (f" (id {ident})" if ident else "")


@dataclass
class Summary:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (row label, reason)


class ImportAborted(Exception):
    """Nothing more can be posted (bad key, intake unreachable): the summary so far stands."""


def _derived_id(text: str) -> str:
    return "import-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def _complete(event: dict[str, Any], source: str | None, raw: str) -> dict[str, Any]:
    event.setdefault("specversion", "1.0")
    if source:
        event.setdefault("source", source)
    event.setdefault("type", REPORTED)
    event.setdefault("id", _derived_id(raw))
    return event


def read_jsonl(path: Path, source: str | None) -> Iterator[Row]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Row(number, None, f"not JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(value, dict):
                yield Row(number, None, "a line must be a JSON object (a CloudEvent)")
                continue
            yield Row(number, _complete(value, source, line.strip()))


def _acts(cell: str) -> list[dict[str, Any]]:
    cell = cell.strip()
    if cell.startswith("["):
        acts = json.loads(cell)
        if not isinstance(acts, list):
            raise ValueError("acts must be a JSON array")
        return acts
    out = []
    for item in filter(None, (part.strip() for part in cell.split(";"))):
        parts = [p.strip() for p in item.split("|")]
        names = ("type", "on", "actor", "status")
        out.append({k: v for k, v in zip(names, parts, strict=False) if v})
    return out


def _report_from_columns(row: dict[str, str]) -> dict[str, Any]:
    def cell(name: str) -> str | None:
        value = (row.get(name) or "").strip()
        return value or None

    data: dict[str, Any] = {}
    for name in ("occurred_on", "date_precision", "outcome", "next_hearing_on"):
        if cell(name):
            data[name] = cell(name)
    location = {k: cell(c) for k, c in (("country", "country"), ("city", "city")) if cell(c)}
    if location:
        data["location"] = location
    target: dict[str, Any] = {k: cell(k) for k in ("group", "nationality", "status_abroad") if cell(k)}
    identity = {k: cell(k) for k in ("name", "name_zh", "birth_date") if cell(k)}
    if identity:
        target["identity"] = identity
    if target:
        data["target"] = target
    if cell("acts"):
        data["acts"] = _acts(row["acts"])
    if cell("narrative"):
        narrative = {"text": cell("narrative"), "lang": cell("narrative_lang")}
        data["narrative"] = {k: v for k, v in narrative.items() if v}
    if cell("source_url"):
        reference: dict[str, Any] = {"url": cell("source_url")}
        if cell("source_reliability"):
            reference["reliability"] = cell("source_reliability")
        credibility = cell("source_credibility")
        if credibility:
            reference["credibility"] = int(credibility) if credibility.isdigit() else credibility
        data["sources"] = [reference]
    return data


def read_csv(path: Path, source: str | None) -> Iterator[Row]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for number, record in enumerate(reader, start=1):
            try:
                if None in record:
                    raise ValueError("more cells than header columns")
                given = (record.get("data") or "").strip()
                data = json.loads(given) if given else _report_from_columns(record)
            except (ValueError, KeyError) as exc:
                yield Row(number, None, f"cannot read the row: {exc}")
                continue
            event: dict[str, Any] = {"data": data}
            for attr in ("id", "subject", "type", "source", "time"):
                if (record.get(attr) or "").strip():
                    event[attr] = record[attr].strip()
            raw = json.dumps(record, sort_keys=True, ensure_ascii=False)
            yield Row(number, _complete(event, source, raw))


def read_rows(path: Path, source: str | None) -> list[Row]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return list(read_csv(path, source))
    if suffix in (".jsonl", ".ndjson"):
        return list(read_jsonl(path, source))
    raise ValueError(f"{path.name}: use a .csv or .jsonl file")


def _index_of(pointer: str) -> int | None:
    head = pointer.lstrip("/").split("/", 1)[0]
    return int(head) if head.isdigit() else None


async def post_rows(client: httpx.AsyncClient, rows: list[Row], summary: Summary, progress: tqdm[Any]) -> None:
    """Post one batch; refused rows are recorded and the rest re-posted until all settle."""
    pending = list(rows)
    attempts = 0
    while pending:
        attempts += 1
        try:
            response = await client.post("/v1/events", content=json.dumps([r.event for r in pending]).encode(),
                                         headers={"content-type": BATCH})
        except httpx.HTTPError as exc:
            if attempts >= MAX_ATTEMPTS:
                raise ImportAborted(f"intake unreachable: {type(exc).__name__}") from exc
            await asyncio.sleep(min(2**attempts, 30))
            continue
        status = response.status_code
        if status == 202:
            body = response.json()
            summary.accepted += len(body["accepted"])
            summary.duplicates += len(body["duplicates"])
            progress.update(len(pending))
            return
        problem = response.json() if response.headers.get("content-type", "").endswith("json") else {}
        if status in (429, 503) and attempts < MAX_ATTEMPTS:
            await asyncio.sleep(float(response.headers.get("retry-after", "2")))
            continue
        if status == 413 and len(pending) > 1:
            half = len(pending) // 2
            await post_rows(client, pending[:half], summary, progress)
            await post_rows(client, pending[half:], summary, progress)
            return
        if status in (401,) or status >= 500 or status in (429, 503):
            raise ImportAborted(f"intake answered {status}: {problem.get('detail') or problem.get('title')}")
        reasons: dict[int, list[str]] = {}
        for error in problem.get("errors") or []:
            index = _index_of(error.get("pointer", ""))
            if index is not None and index < len(pending):
                where = error["pointer"][len(f"/{index}"):] or "/"
                reasons.setdefault(index, []).append(f"{where}: {error.get('detail')}")
        if not reasons:  # the whole request was refused (e.g. 413 for one row)
            reasons = {i: [f"{status} {problem.get('title', '')}: {problem.get('detail', '')}"]
                       for i in range(len(pending))}
        for index, why in sorted(reasons.items()):
            summary.rejected.append((pending[index].label, "; ".join(why)))
        progress.update(len(reasons))
        pending = [r for i, r in enumerate(pending) if i not in reasons]


async def run_import(client: httpx.AsyncClient, rows: list[Row], batch_size: int, *, quiet: bool = False) -> Summary:
    summary = Summary()
    with tqdm(total=len(rows), unit="row", file=sys.stderr, disable=quiet) as progress:
        ready = []
        for row in rows:
            if row.event is None:
                summary.rejected.append((row.label, row.error or "unreadable"))
                progress.update(1)
            else:
                ready.append(row)
        for start in range(0, len(ready), batch_size):
            await post_rows(client, ready[start:start + batch_size], summary, progress)
    return summary


def print_summary(summary: Summary) -> None:
    print(f"accepted:   {summary.accepted}")
    print(f"duplicates: {summary.duplicates}")
    print(f"rejected:   {len(summary.rejected)}")
    for label, reason in summary.rejected:
        print(f"  {label}: {reason}")


async def import_command(args: argparse.Namespace) -> int:
    key = args.key or os.environ.get("TNR_API_KEY")
    if not key:
        print("give the partner's API key with --key or TNR_API_KEY", file=sys.stderr)
        return 2
    try:
        rows = read_rows(Path(args.file), args.source)
    except (OSError, ValueError) as exc:
        print(f"cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=60) as client:
        try:
            summary = await run_import(client, rows, max(1, min(args.batch_size, 500)), quiet=args.quiet)
        except ImportAborted as exc:
            print(f"import stopped: {exc}", file=sys.stderr)
            return 2
    print_summary(summary)
    return 1 if summary.rejected else 0


def register(sub: Any) -> None:
    parser = sub.add_parser("import", help="post a partner's backlog (CSV or JSONL) through intake")
    parser.add_argument("file", help="FILE.csv or FILE.jsonl")
    parser.add_argument("--url", default=os.environ.get("TNR_INTAKE_URL", "http://127.0.0.1:8081"),
                        help="intake's base URL (TNR_INTAKE_URL)")
    parser.add_argument("--key", help="the partner's API key (default: TNR_API_KEY)")
    parser.add_argument("--source", help="CloudEvents source for rows that give none")
    parser.add_argument("--batch-size", type=int, default=100, help="rows per request (at most 500)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=import_command)
