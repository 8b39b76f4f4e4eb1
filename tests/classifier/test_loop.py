"""The classifier's consume-classify-produce loop against the real broker: amendments,
retractions, poison records, and an aborted batch re-read from the committed offsets."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka.errors import ProducerFenced

from services.classifier.service import ABORTED, GROUP_ID, ClassifierLoop
from shared.events import EventType, IncidentClassified, IncidentRetracted
from shared.kafka import ensure_topics, topics_for
from shared.settings import Settings
from shared.vocabulary import ActType
from tests.classifier.helpers import decode, put_on_log, put_raw, read_all, recorded, retracted
from tests.harness import wait_for


@asynccontextmanager
async def running(loop: ClassifierLoop) -> AsyncIterator[ClassifierLoop]:
    task = asyncio.create_task(loop.run())
    try:
        yield loop
    finally:
        loop.stop()
        await asyncio.wait_for(task, 30)


async def committed_outputs(settings: Settings, at_least: int) -> list[tuple[str, object]]:
    topic = topics_for(settings).classifications

    async def enough() -> list[tuple[str, object]] | None:
        out = decode(await read_all(settings, topic))
        return out if len(out) >= at_least else None

    return await wait_for(enough, timeout=60, what=f"{at_least} committed classifier outputs")


async def test_amended_incident_is_reclassified_and_retraction_passed_on(fresh_settings: Settings) -> None:
    settings = fresh_settings
    await ensure_topics(settings)
    first = recorded("inc-1", acts=[ActType.INTERPOL_RED_NOTICE])
    amended = first.model_copy(update={
        "report_id": "inc-1-amendment",
        "facts": recorded("inc-1", narrative="His parents were detained in Kashgar.").facts,
    })
    await put_on_log(settings, topics_for(settings).incidents, [
        (EventType.INCIDENT_REPORTED, first),
        (EventType.INCIDENT_AMENDED, amended),
        (EventType.INCIDENT_RETRACTED, retracted(first)),
    ])
    async with running(ClassifierLoop(settings)):
        out = await committed_outputs(settings, 3)

    assert [t for t, _ in out] == [
        EventType.INCIDENT_CLASSIFIED, EventType.INCIDENT_CLASSIFIED, EventType.INCIDENT_RETRACTED,
    ]
    original, reclassified, retraction = (d for _, d in out)
    assert isinstance(original, IncidentClassified) and isinstance(reclassified, IncidentClassified)
    assert original.classification.ccdi_methods == ["extradition"]
    assert reclassified.incident.report_id == "inc-1-amendment"
    assert reclassified.classification.ir_categories == ["IR1"]
    assert reclassified.classification.evidence[0].span is not None
    assert reclassified.classification.evidence[0].span.text == "parents were detained"
    assert isinstance(retraction, IncidentRetracted) and retraction.incident_id == "inc-1"


async def test_poison_goes_to_dead_letter_with_reason_and_bytes_and_the_partition_moves_on(
    fresh_settings: Settings,
) -> None:
    settings = fresh_settings
    await ensure_topics(settings)
    topics = topics_for(settings)
    # One partition, so that the good reports sit behind the poison ones.
    good_before, good_after = recorded("ok-1", target_ref="same"), recorded("ok-2", target_ref="same")
    await put_on_log(settings, topics.incidents, [(EventType.INCIDENT_REPORTED, good_before)])
    garbage = b"\x00\xffnot json at all"
    await put_raw(settings, topics.incidents, garbage, [
        ("ce_specversion", b"1.0"), ("ce_id", b"x1"), ("ce_source", b"urn:x"),
        ("ce_type", EventType.INCIDENT_REPORTED.value.encode()),
    ])
    unknown_version = b'{"anything": 1}'
    await put_raw(settings, topics.incidents, unknown_version, [
        ("ce_specversion", b"1.0"), ("ce_id", b"x2"), ("ce_source", b"urn:x"),
        ("ce_type", b"org.tnrwatch.incident.reported.v9"),
    ])
    await put_on_log(settings, topics.incidents, [(EventType.INCIDENT_REPORTED, good_after)])

    async with running(ClassifierLoop(settings)):
        out = await committed_outputs(settings, 2)
        dead = await wait_for(
            lambda: _at_least(read_all(settings, topics.dead_letter(GROUP_ID)), 2), timeout=30, what="dead letters"
        )

    assert sorted(d.incident.incident_id for _, d in out if isinstance(d, IncidentClassified)) == ["ok-1", "ok-2"]
    by_value = {r.value: dict(r.headers) for r in dead}
    assert set(by_value) == {garbage, unknown_version}
    assert b"not JSON" in by_value[garbage]["dlq_reason"]
    assert b"unknown event type" in by_value[unknown_version]["dlq_reason"]
    assert by_value[garbage]["dlq_origin"].startswith(topics.incidents.encode())


async def _at_least(records_coro, n: int):
    records = await records_coro
    return records if len(records) >= n else None


class FailsOnceMidBatch(ClassifierLoop):
    """Loses the broker once, in the middle of a batch, after half the batch was written."""

    failed = False

    async def emit(self, producer, record, outcome):
        if record.offset == 20 and not self.failed:
            self.failed = True
            await producer.flush()  # the first 20 outputs are on the broker, uncommitted
            raise ConnectionError("simulated broker failure in the middle of a batch")
        return await super().emit(producer, record, outcome)


async def test_failed_batch_is_aborted_and_reread_so_nothing_is_lost_or_doubled(fresh_settings: Settings) -> None:
    settings = fresh_settings
    await ensure_topics(settings)
    topics = topics_for(settings)
    # One target, so one partition: the whole burst is one batch.
    incidents = [recorded(f"b-{i}", acts=[ActType.KIDNAPPING], target_ref="one-target") for i in range(40)]
    await put_on_log(settings, topics.incidents, [(EventType.INCIDENT_REPORTED, i) for i in incidents])

    loop = FailsOnceMidBatch(settings)
    async with running(loop):
        await committed_outputs(settings, 40)
    out = decode(await read_all(settings, topics.classifications))

    assert loop.failed
    counts = Counter(d.incident.incident_id for _, d in out)
    assert sorted(counts) == sorted(i.incident_id for i in incidents)
    assert set(counts.values()) == {1}
    # The aborted half-batch is in the log, but only read_uncommitted readers could see it.
    uncommitted = decode(await read_all(settings, topics.classifications, isolation="read_uncommitted"))
    assert len(uncommitted) >= len(out) + 20


async def test_a_second_instance_with_the_same_transactional_id_fences_the_first_and_nothing_doubles(
    fresh_settings: Settings,
) -> None:
    """A zombie (say, a paused VM that wakes up) must not commit after its replacement started."""
    settings = fresh_settings
    await ensure_topics(settings)
    topics = topics_for(settings)
    incidents = [recorded(f"f-{i}", acts=[ActType.DEPORTED], target_ref=f"t{i % 30}") for i in range(1500)]
    await put_on_log(settings, topics.incidents, [(EventType.INCIDENT_REPORTED, i) for i in incidents])

    zombie = ClassifierLoop(settings, max_records=100)
    zombie_task = asyncio.create_task(zombie.run())
    await wait_for(lambda: _committed_at_least(settings, 1), timeout=60, what="the first instance's first commit")
    replacement = ClassifierLoop(settings, max_records=100)  # same settings: same transactional id
    assert replacement.transactional_id == zombie.transactional_id
    async with running(replacement):
        await committed_outputs(settings, len(incidents))
        fenced = await asyncio.wait_for(asyncio.gather(zombie_task, return_exceptions=True), 60)
    out = decode(await read_all(settings, topics.classifications))

    assert isinstance(fenced[0], ProducerFenced), f"the first instance was not fenced: {fenced[0]!r}"
    counts = Counter(d.incident.incident_id for _, d in out)
    assert len(counts) == len(incidents) and set(counts.values()) == {1}


async def _committed_at_least(settings: Settings, n: int) -> bool:
    return len(await read_all(settings, topics_for(settings).classifications)) >= n


async def test_a_worker_process_killed_mid_batch_loses_and_doubles_nothing(fresh_settings: Settings) -> None:
    settings = fresh_settings
    await ensure_topics(settings)
    topics = topics_for(settings)
    incidents = [
        recorded(f"w-{i}", narrative="Her parents were detained and she was followed.", target_ref=f"t{i % 7}")
        for i in range(3000)
    ]
    await put_on_log(settings, topics.incidents, [(EventType.INCIDENT_REPORTED, i) for i in incidents])

    loop = ClassifierLoop(settings, workers=2, max_records=500)
    aborted_before = ABORTED._value.get()
    async with running(loop):
        async def a_worker() -> int | None:
            executor = getattr(loop, "executor", None)
            processes = list(getattr(executor, "_processes", None) or {})
            return processes[0] if processes else None

        victim = await wait_for(a_worker, timeout=60, interval=0.02, what="a worker process")
        os.kill(victim, signal.SIGKILL)
        await committed_outputs(settings, len(incidents))
    out = decode(await read_all(settings, topics.classifications))

    counts = Counter(d.incident.incident_id for _, d in out)
    assert len(counts) == len(incidents) and set(counts.values()) == {1}
    assert all(d.classification.ir_categories == ["IR1", "IR2"] for _, d in out)
    assert ABORTED._value.get() > aborted_before, "the dead worker never failed a batch"


async def test_a_second_instance_joining_mid_burst_shares_the_work_and_nothing_doubles(
    fresh_settings: Settings,
) -> None:
    """Scaling out: partitions move to the new instance only between transactions."""
    settings = fresh_settings
    await ensure_topics(settings)
    topics = topics_for(settings)
    incidents = [recorded(f"s-{i}", acts=[ActType.ONLINE_THREAT], target_ref=f"t{i % 40}") for i in range(3000)]
    await put_on_log(settings, topics.incidents, [(EventType.INCIDENT_REPORTED, i) for i in incidents])

    first = ClassifierLoop(settings, slow_classify, max_records=100)
    second = ClassifierLoop(settings.model_copy(update={"instance_id": "1"}), slow_classify, max_records=100)
    assert first.transactional_id != second.transactional_id
    async with running(first):
        await wait_for(lambda: _committed_at_least(settings, 1), timeout=60, what="the first instance's first commit")
        async with running(second):
            await committed_outputs(settings, len(incidents))
    out = decode(await read_all(settings, topics.classifications))

    counts = Counter(d.incident.incident_id for _, d in out)
    assert len(counts) == len(incidents) and set(counts.values()) == {1}
    assert first.records_done > 0 and second.records_done > 0, (first.records_done, second.records_done)


def slow_classify(incident):
    """Slow enough that the burst outlasts the second instance's join (a heartbeat or two)."""
    import time

    from services.classifier.pipeline import classify_incident

    time.sleep(0.003)
    return classify_incident(incident)
