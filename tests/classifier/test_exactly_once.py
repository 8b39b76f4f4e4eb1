"""Kill -9 the classifier process in the middle of a burst, restart it, and count what a
``read_committed`` reader of the classifications topic sees: every incident exactly once."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from shared.events import EventType, IncidentClassified
from shared.kafka import ensure_topics, topics_for
from shared.settings import Settings
from shared.vocabulary import ActType
from tests.classifier.helpers import decode, put_on_log, read_all, recorded
from tests.harness import ServiceProcess, free_port, wait_for

BURST = 3000
NARRATIVES = [
    "Police in Dubai detained him on a Red Notice, and prosecutors then filed for his extradition.",
    "他在国内的父母被警察带走，并被要求打电话劝他回国。",
    "He was not extradited; the court released him.",
]


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


@pytest.mark.parametrize("workers", [1, 2], ids=["classify-in-thread", "two-worker-processes"])
async def test_kill_9_mid_burst_then_restart_classifies_every_incident_exactly_once(
    fresh_settings: Settings, tmp_path: Path, workers: int
) -> None:
    settings = fresh_settings.model_copy(update={"classifier_workers": workers})
    await ensure_topics(settings)
    topics = topics_for(settings)
    incidents = [
        recorded(f"eo-{i}", acts=[ActType.FAMILY_THREATENED], narrative=NARRATIVES[i % 3], target_ref=f"t{i % 50}")
        for i in range(BURST)
    ]
    await put_on_log(settings, topics.incidents, [(EventType.INCIDENT_REPORTED, i) for i in incidents])

    first = ServiceProcess("services.classifier.main", settings, free_port(), tmp_path / "classifier-1.log")
    first.start()
    try:
        # Kill as soon as the first outputs reach the broker: a transaction is in flight.
        async def some_output_written() -> bool:
            return len(await read_all(settings, topics.classifications, isolation="read_uncommitted")) > 0

        await wait_for(some_output_written, timeout=90, interval=0.05, what="the classifier's first outputs")
        assert first.process is not None
        orphans = children_of(first.process.pid)
        if workers > 1:
            assert orphans, "the classifier started no worker processes"
    finally:
        first.kill()
    # Worker processes do not outlive a killed classifier.
    await wait_for(lambda: _none_alive(orphans), timeout=15, what=f"worker processes {orphans} to exit")

    committed_at_kill = len(await read_all(settings, topics.classifications))
    assert committed_at_kill < BURST, "the burst finished before the kill; the test proved nothing"

    second = ServiceProcess("services.classifier.main", settings, free_port(), tmp_path / "classifier-2.log")
    second.start()
    try:
        async def all_committed() -> list[tuple[str, object]] | None:
            out = decode(await read_all(settings, topics.classifications))
            return out if len(out) >= BURST else None

        await wait_for(all_committed, timeout=180, interval=1.0, what=f"{BURST} committed classifications")
    finally:
        second.terminate()

    out = decode(await read_all(settings, topics.classifications))
    counts = Counter(d.incident.incident_id for _, d in out if isinstance(d, IncidentClassified))
    assert len(out) == BURST
    assert sorted(counts) == sorted(i.incident_id for i in incidents)
    assert set(counts.values()) == {1}, [k for k, v in counts.items() if v != 1][:10]
    # Each carries the labels of its act and its narrative.
    sample = next(d for _, d in out if isinstance(d, IncidentClassified) and d.incident.incident_id == "eo-0")
    assert sample.classification.ccdi_methods == ["extradition", "persuade_to_return"]


async def _none_alive(pids: set[int]) -> bool:
    return not alive(pids)
