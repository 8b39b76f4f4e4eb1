"""The peer for benchmarks.classifier_throughput: the same consume-classify-produce pipeline
written with Quix Streams (exactly-once), running the very same classification function.

Run by the benchmark as a subprocess (so that it can live in its own virtual environment:
quixstreams pins pydantic below the version tnrwatch pins). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

from quixstreams import Application

from services.classifier.pipeline import classify_incident, downstream_event
from shared.serialization import from_record, to_record


def classify_record(value: bytes, key: Any, timestamp: int, headers: Any) -> dict[str, Any] | None:
    """Same work as ClassifierLoop._one: decode, classify, encode the output record."""
    out = downstream_event(from_record(value, headers), classify_incident)
    if out is None:
        return None
    out_key, event = out
    record = to_record(event, key=out_key)
    return {"value": record.value, "headers": record.headers}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()

    started = time.perf_counter()
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        loglevel="WARNING",
        use_changelog_topics=False,
    )
    source = app.topic(args.input, key_deserializer="bytes", value_deserializer="bytes")
    sink = app.topic(args.output, key_serializer="bytes", value_serializer="bytes")
    sdf = app.dataframe(source)
    sdf = sdf.apply(classify_record, metadata=True).filter(lambda out: out is not None)
    sdf = sdf.set_headers(lambda value, key, timestamp, headers: value["headers"])
    sdf = sdf.apply(lambda out: out["value"])
    sdf.to_topic(sink)
    app.run(count=args.count, collect=False)
    print(json.dumps({"seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
