"""``tnrwatch replay alerts``: rebuild the rule state from the classifications topic.

Stop the alerts service first (it would race the replay for the same rule state). The replay
forgets the rule state and the consumer's position, then folds the whole topic again through
the same handler as the service, one transaction per batch with the offsets. Alerts, their
history, silences and the outbox are kept: a situation already alerted is found again as the
same alert (same fingerprint, nothing new to notify), so no alert is raised twice and no
notification is sent again; situations the old state missed (e.g. after a rules change) are
raised. When it ends, the service resumes from where the replay stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from services.alerts import store
from services.alerts.engine import Engine
from services.alerts.main import COMPONENT, MIGRATIONS
from services.alerts.receivers import load_receivers
from services.alerts.rules import load_rules
from services.alerts.service import AlertsHandler, decode
from shared.consumer import Consumed, store_offsets
from shared.db import create_pool, prepare_database
from shared.kafka import ensure_topics, read_to_end, replay_consumer, topics_for
from shared.serialization import PoisonEvent, from_record
from shared.settings import Settings


@dataclass
class ReplayResult:
    read: int = 0
    applied: int = 0
    skipped_poison: int = 0


async def replay_rules(settings: Settings, *, progress: bool = True) -> ReplayResult:
    handler = AlertsHandler(
        Engine(load_rules(settings.rules_file or None)), load_receivers(settings.receivers_file or None)
    )
    await ensure_topics(settings)
    topic = topics_for(settings).classifications
    pool = await create_pool(settings.database_url, max_size=2)
    consumer = replay_consumer(settings, client_id="alerts-replay")
    result = ReplayResult()
    await consumer.start()
    try:
        await prepare_database(pool, COMPONENT, MIGRATIONS)
        async with pool.acquire() as conn, conn.transaction():
            await store.reset_rule_state(conn, COMPONENT)
        async for records in read_to_end(consumer, topic, desc="replay alerts", progress=progress):
            decoded: list[Consumed[BaseModel]] = []
            positions: dict[tuple[str, int], int] = {}
            for record in records:
                positions[(record.topic, record.partition)] = record.offset + 1
                try:
                    event = from_record(record.value, record.headers)
                    decoded.append(Consumed(record.topic, record.partition, record.offset, event, decode(event)))
                except PoisonEvent:
                    result.skipped_poison += 1  # the live service dead-lettered it already
            async with pool.acquire() as conn, conn.transaction():
                if decoded:
                    await handler(conn, decoded)
                await store_offsets(conn, COMPONENT, positions)
            result.read += len(records)
            result.applied += len(decoded)
    finally:
        await consumer.stop()
        await pool.close()
    return result


async def replay_alerts(settings: Settings) -> int:
    result = await replay_rules(settings)
    print(
        f"rebuilt the alert rule state: read {result.read} events, applied {result.applied}, "
        f"skipped {result.skipped_poison} poison records (already dead-lettered)"
    )
    return 0
