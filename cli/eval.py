"""``tnrwatch eval FILE.jsonl``: precision, recall and F1 per label and overall."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from services.classifier.evaluation import evaluate, format_report


def read_labelled(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


async def run_eval(args: argparse.Namespace) -> int:
    path = Path(args.file)
    lines: list[dict[str, Any]] = []
    for number, text in enumerate(read_labelled(path), start=1):
        if not text.strip():
            continue
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError as exc:
            print(f"{path}:{number}: not JSON: {exc}", file=sys.stderr)
            return 2
    report = evaluate(lines)
    print(format_report(report, show_errors=args.errors))
    if args.min_f1 is not None and report.overall.f1 < args.min_f1:
        print(f"micro-F1 {report.overall.f1:.3f} is below {args.min_f1}", file=sys.stderr)
        return 1
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser("eval", help="score the classifier against a labelled JSONL file")
    parser.add_argument("file", help="JSONL: {event, expected_classification} per line")
    parser.add_argument("--errors", action="store_true", help="list the reports whose labels differ")
    parser.add_argument("--min-f1", type=float, default=None, help="exit 1 when micro-F1 is below this")
    parser.set_defaults(run=run_eval)
