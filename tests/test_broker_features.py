"""Smoke test of the broker features the design depends on, with aiokafka against the chosen
Kafka: idempotent produce, consumer groups, transactional produce with
``send_offsets_to_transaction``, and ``read_committed`` consumption that hides aborted writes."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord

from tests.infra import Infra

N = 12


async def drain(consumer: AIOKafkaConsumer, want: int | None = None, idle: float = 2.0) -> list[ConsumerRecord]:
    """Read until `want` records arrived, or nothing new came for `idle` seconds."""
    out: list[ConsumerRecord] = []
    last = time.monotonic()
    while True:
        batch = await consumer.getmany(timeout_ms=300)
        for records in batch.values():
            out.extend(records)
            last = time.monotonic()
        if want is not None and len(out) >= want:
            return out
        if time.monotonic() - last > idle:
            return out


@pytest.fixture
async def topics(infra: Infra) -> AsyncIterator[tuple[str, str]]:
    run = uuid.uuid4().hex[:8]
    names = (f"smoke-in-{run}", f"smoke-out-{run}")
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 3, 1) for n in names])
        yield names
        await admin.delete_topics(list(names))
    finally:
        await admin.close()


def consumer(infra: Infra, topic: str, group: str | None, isolation: str = "read_committed") -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic, bootstrap_servers=infra.kafka_bootstrap, group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", isolation_level=isolation,
    )


async def test_transactions_and_read_committed(infra: Infra, topics: tuple[str, str]) -> None:
    source, sink = topics
    group = f"smoke-group-{uuid.uuid4().hex[:8]}"

    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        acks = [await producer.send_and_wait(source, key=f"k{i}".encode(), value=f"v{i}".encode()) for i in range(N)]
    finally:
        await producer.stop()
    assert all(ack.offset >= 0 for ack in acks)

    reader = consumer(infra, source, group)
    transactional = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, transactional_id=f"smoke-{group}")
    await reader.start()
    await transactional.start()
    try:
        records = await drain(reader, want=N)
        assert len(records) == N, "the consumer group did not get every record"
        offsets: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
        async with transactional.transaction():
            for r in records:
                await transactional.send(sink, key=r.key, value=b"committed:" + r.value)
            await transactional.send_offsets_to_transaction(offsets, group)

        await transactional.begin_transaction()
        for i in range(5):
            await transactional.send(sink, key=b"x", value=f"aborted:{i}".encode())
        await transactional.send_offsets_to_transaction({tp: 0 for tp in offsets}, group)
        await transactional.abort_transaction()

        async with transactional.transaction():
            await transactional.send(sink, key=b"x", value=b"committed:after-abort")

        committed = {tp: await reader.committed(tp) for tp in offsets}
        assert committed == offsets, "the aborted transaction moved the group's offsets"
    finally:
        await transactional.stop()
        await reader.stop()

    committed_reader = consumer(infra, sink, None, "read_committed")
    uncommitted_reader = consumer(infra, sink, None, "read_uncommitted")
    await committed_reader.start()
    await uncommitted_reader.start()
    try:
        seen = [r.value.decode() for r in await drain(committed_reader)]
        seen_raw = [r.value.decode() for r in await drain(uncommitted_reader)]
    finally:
        await committed_reader.stop()
        await uncommitted_reader.stop()
    assert len(seen) == N + 1 and all(v.startswith("committed:") for v in seen)
    assert "committed:after-abort" in seen
    assert sum(v.startswith("aborted") for v in seen_raw) == 5, "the abort did not really write records"

    again = consumer(infra, source, group)
    await again.start()
    try:
        assert await drain(again, idle=2.0) == [], "offsets committed in the transaction were not honoured"
    finally:
        await again.stop()
