"""The peer for benchmarks.classifier_throughput: the same consume-classify-produce pipeline
written with Quix Streams (exactly-once), running the very same classification function.

Run by the benchmark as a subprocess (so that it can live in its own virtual environment:
quixstreams pins pydantic below the version tnrwatch pins). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from services.classifier.pipeline import Output, Poison, classify_incident, downstream_event, process_record
from shared.serialization import from_record, to_record


def classify_record(value: bytes, key: Any, timestamp: int, headers: Any) -> dict[str, Any] | None:
    """``--step generic``: the same classification function (classify_incident), with the
    project's general record codec (shared.serialization), as a Quix user of tnrwatch writes it."""
    out = downstream_event(from_record(value, headers), classify_incident)
    if out is None:
        return None
    out_key, event = out
    record = to_record(event, key=out_key)
    return {"value": record.value, "headers": record.headers}


def classify_record_our_step(value: bytes, key: Any, timestamp: int, headers: Any) -> dict[str, Any] | None:
    """``--step ours``: the very step ClassifierLoop runs per record (decode, classify, encode:
    services.classifier.pipeline.process_record, with its one-parse fast path), so that the two
    pipelines differ only in their plumbing (Kafka clients, batching, transactions, tracing)."""
    out = process_record(value, list(headers or ()))
    if isinstance(out, Poison):
        raise RuntimeError(out.reason)  # the benchmark's log holds no poison
    if not isinstance(out, Output):
        return None
    return {"value": out.value, "headers": out.headers}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--step", choices=("generic", "ours"), default="generic")
    if len(sys.argv) == 1:
        # `make bench` runs every module of benchmarks/: this one only as the throughput
        # benchmark's subprocess, in the environment that has quixstreams.
        print("benchmarks.classifier_quix_peer is run by benchmarks.classifier_throughput")
        return
    args = parser.parse_args()
    from quixstreams import Application  # the peer's own environment (see the module docstring)

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
    step = classify_record if args.step == "generic" else classify_record_our_step
    sdf = sdf.apply(step, metadata=True).filter(lambda out: out is not None)
    sdf = sdf.set_headers(lambda value, key, timestamp, headers: value["headers"])
    sdf = sdf.apply(lambda out: out["value"])
    sdf.to_topic(sink)
    app.run(count=args.count, collect=False)
    print(json.dumps({"seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
