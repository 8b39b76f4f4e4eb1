"""Microseconds per event of the pure classification step (decode, classify acts and narrative,
encode), the part every pipeline shares, on the labelled sets' reports.

    .venv/bin/python -m benchmarks.classifier_function [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from services.classifier.narrative import find_acts
from services.classifier.pipeline import process_record
from shared.events import EventType, IncidentFacts, IncidentRecorded, new_event
from shared.serialization import to_record

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def records() -> list[tuple[bytes, list[tuple[str, bytes]], str]]:
    out = []
    for name in ("incidents.jsonl", "classifier_hard_cases.jsonl"):
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            data = json.loads(line)["event"]["data"]
            data.get("target", {}).pop("identity", None)
            facts = IncidentFacts.model_validate(data)
            incident = IncidentRecorded(
                incident_id="i", target_ref="t", partner="p", source="urn:p", subject="s", report_id="r",
                received_at="2024-01-01T00:00:00Z", facts=facts,
            )
            rec = to_record(new_event(EventType.INCIDENT_REPORTED, incident), key="t")
            out.append((rec.value, rec.headers, facts.narrative.text if facts.narrative else ""))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    items = records()
    timings = {}
    for label, step in (
        ("narrative only (find_acts)", lambda item: find_acts(item[2])),
        ("whole step (process_record)", lambda item: process_record(item[0], item[1])),
    ):
        best = float("inf")
        for _ in range(args.rounds):
            started = time.perf_counter()
            for item in items:
                step(item)
            best = min(best, time.perf_counter() - started)
        timings[label] = best / len(items) * 1e6
    print(f"{len(items)} reports (the samples and the hard set), best of {args.rounds} rounds")
    print(f"{'step':<32} {'us/event':>9}")
    for label, micros in timings.items():
        print(f"{label:<32} {micros:>9.0f}")


if __name__ == "__main__":
    main()
