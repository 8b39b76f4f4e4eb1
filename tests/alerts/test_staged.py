"""The staged consumer path (batch N+1 folded while batch N commits), against PostgreSQL.

It must leave exactly what one batch at a time leaves; a monitor's ack that lands between a
batch's folding and its commit must survive; a commit that fails must not leak what it
handed to the next batch."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel

from services.alerts import store
from services.alerts.engine import Engine
from services.alerts.lifecycle import acknowledge
from services.alerts.main import COMPONENT, MIGRATIONS
from services.alerts.receivers import Receiver, ReceiversConfig
from services.alerts.rules import load_rules
from services.alerts.service import AlertsHandler, commit_changes, decode
from shared.consumer import Consumed, PgOffsetConsumer, store_offsets
from shared.db import create_pool, prepare_database
from shared.events import (
    Classification,
    CloudEvent,
    IncidentClassified,
    IncidentFacts,
    IncidentRecorded,
    IncidentRetracted,
)
from shared.settings import Settings
from tests.harness import drop_database, isolated_settings
from tests.infra import Infra

RECEIVERS = ReceiversConfig(receivers=(Receiver(name="oncall", type="webhook", url="http://127.0.0.1:9/hook"),))
ENVELOPE = CloudEvent(id="t", source="urn:test", type="org.tnrwatch.incident.classified.v1")
ACTS = [
    "family_threatened",
    "family_detained",
    "extradition_request",
    "interpol_red_notice",
    "overseas_police_station_contact",
    "passport_cancelled",
    "kidnapping",
    "online_threat",
]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def classified(
    incident_id: str, target: str, acts: Sequence[tuple[str, date]], *, city: str | None, second: int
) -> IncidentClassified:
    occurred = min(on for _, on in acts)
    return IncidentClassified(
        incident=IncidentRecorded(
            incident_id=incident_id,
            target_ref=target,
            partner=random.Random(incident_id).choice(["a", "b"]),
            source="urn:partner:test",
            subject=incident_id,
            report_id=f"r-{incident_id}-{second}",
            received_at=T0 + timedelta(seconds=second),
            facts=IncidentFacts.model_validate(
                {
                    "occurred_on": occurred.isoformat(),
                    "date_precision": "day",
                    "location": {"country": "TR", **({"city": city} if city else {})},
                    "target": {"group": "uyghur", "status_abroad": "refugee"},
                    "acts": [{"type": t, "on": on.isoformat(), "status": "carried_out"} for t, on in acts],
                }
            ),
        ),
        classification=Classification(classifier_version="test"),
    )


def retracted(incident_id: str, target: str, second: int) -> IncidentRetracted:
    return IncidentRetracted(
        incident_id=incident_id,
        target_ref=target,
        partner="a",
        source="urn:partner:test",
        subject=incident_id,
        report_id=f"x-{incident_id}",
        received_at=T0 + timedelta(seconds=second),
        reason="filed in error",
    )


def traffic(n: int, seed: int = 11) -> list[Consumed[BaseModel]]:
    """Reports on few targets and cities (so alerts are raised, updated and resolved),
    amendments and retractions, some arriving out of order."""
    rng = random.Random(seed)
    out: list[Consumed[BaseModel]] = []
    known: list[tuple[str, str]] = []
    for offset in range(n):
        roll = rng.random()
        value: BaseModel
        if known and roll < 0.08:
            incident_id, target = rng.choice(known)
            value = retracted(incident_id, target, offset)
        else:
            if known and roll < 0.25:
                incident_id, target = rng.choice(known)  # an amendment (or an older copy)
            else:
                incident_id, target = f"i{offset}", f"t{rng.randrange(40)}"
                known.append((incident_id, target))
            day = date(2024, 1, 1) + timedelta(days=rng.randrange(400))
            count = rng.choice([1, 1, 2, 3])
            acts = [(rng.choice(ACTS), day + timedelta(days=rng.randrange(90))) for _ in range(count)]
            second = offset - rng.randrange(3) if rng.random() < 0.1 else offset
            value = classified(incident_id, target, acts, city=rng.choice(["Istanbul", "Izmir", None]), second=second)
        out.append(Consumed("classified", 0, offset, ENVELOPE, value))
    return out


def one(offset: int, value: BaseModel) -> list[Consumed[BaseModel]]:
    return [Consumed("classified", 0, offset, ENVELOPE, value)]


@pytest.fixture
async def two_pools(infra: Infra) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    made: list[Settings] = []
    pools: list[asyncpg.Pool] = []
    try:
        for _ in range(2):
            settings = await isolated_settings(infra.kafka_bootstrap, infra.database_url)
            made.append(settings)
            pool = await create_pool(settings.database_url, max_size=4)
            pools.append(pool)
            await prepare_database(pool, COMPONENT, MIGRATIONS)
        yield pools[0], pools[1]
    finally:
        for pool in pools:
            await pool.close()
        for settings in made:
            await drop_database(infra.database_url, settings)


def consumer(pool: asyncpg.Pool, handler: AlertsHandler) -> PgOffsetConsumer[BaseModel]:
    return PgOffsetConsumer(
        settings=Settings(),
        pool=pool,
        producer=cast(AIOKafkaProducer, None),  # dead letters only; none here
        group_id=COMPONENT,
        topics=["classified"],
        dead_letter_topic="classified-dlq",
        decode=decode,
        handle=handler,
        staged=handler,
    )


async def feed_all(c: PgOffsetConsumer[BaseModel], events: Sequence[Consumed[BaseModel]], size: int) -> None:
    for i in range(0, len(events), size):
        chunk = events[i : i + size]
        await c.feed(chunk, {("classified", 0): chunk[-1].offset + 1})
    await c.drain()


async def sequential(
    pool: asyncpg.Pool, handler: AlertsHandler, events: Sequence[Consumed[BaseModel]], size: int
) -> None:
    for i in range(0, len(events), size):
        chunk = events[i : i + size]
        async with pool.acquire() as conn, conn.transaction():
            await handler(conn, chunk)
            await store_offsets(conn, COMPONENT, {("classified", 0): chunk[-1].offset + 1})


async def everything(pool: asyncpg.Pool) -> dict[str, Any]:
    """What a monitor, a receiver and the next batch would see (ids and clocks aside)."""
    alerts = await pool.fetch(
        """SELECT fingerprint, rule, severity, status, incident_ids, matched_acts::text, summary, deadline, epoch,
                  revision, resolved_by, resolved_reason FROM alerts ORDER BY fingerprint"""
    )
    changes = await pool.fetch(
        "SELECT fingerprint, revision, kind, notify_key, silenced FROM alert_changes ORDER BY change_id"
    )
    outbox = await pool.fetch(  # the clock at resolution differs between runs
        """SELECT receiver, fingerprint, notify_key,
                  (payload::jsonb - 'change_id' #- '{alert,resolved_at}' #- '{alert,acknowledged_at}')::text AS payload
             FROM outbox ORDER BY outbox_id"""
    )
    states = await pool.fetch("SELECT key, state::text FROM rule_state ORDER BY key")
    filings = await pool.fetch("SELECT incident_id, keys, received_at, retracted FROM rule_incidents ORDER BY 1")
    other = await pool.fetch(
        "SELECT (SELECT watermark FROM rule_watermark) AS w, (SELECT next_offset FROM consumer_offsets) AS o"
    )
    return {
        name: [dict(r) for r in rows]
        for name, rows in [
            ("alerts", alerts),
            ("changes", changes),
            ("outbox", outbox),
            ("states", states),
            ("filings", filings),
            ("other", other),
        ]
    }


async def test_staged_batches_leave_what_one_batch_at_a_time_leaves(
    two_pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    events = traffic(1200)
    staged_pool, sequential_pool = two_pools
    engine = Engine(load_rules())
    staged_handler = AlertsHandler(engine, RECEIVERS)
    await feed_all(consumer(staged_pool, staged_handler), events, 100)
    await sequential(sequential_pool, AlertsHandler(engine, RECEIVERS), events, 100)

    staged, one_by_one = await everything(staged_pool), await everything(sequential_pool)
    assert staged_handler.fell_back == 0
    assert len(staged["alerts"]) >= 20, "the traffic raised too few alerts to prove anything"
    assert {c["kind"] for c in staged["changes"]} == {"raised", "updated", "resolved"}
    assert staged["outbox"], "no notification queued"
    for part in ["alerts", "changes", "outbox", "states", "filings", "other"]:
        assert staged[part] == one_by_one[part], part


async def test_an_ack_between_folding_and_commit_is_kept(two_pools: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    pool, _ = two_pools
    handler = AlertsHandler(Engine(load_rules()), RECEIVERS)
    day = date(2025, 3, 1)
    first = one(0, classified("k1", "t1", [("kidnapping", day)], city=None, second=0))
    second = one(1, classified("k2", "t1", [("kidnapping", day + timedelta(days=3))], city=None, second=1))
    c = consumer(pool, handler)
    await feed_all(c, first, 1)
    (raised,) = await store.list_alerts(pool, status=None, severity=None, target_ref="t1")
    assert raised.incident_ids == ("k1",)

    staged = await handler.stage(pool, second)  # folded on the alert as raised (revision 1)
    async with pool.acquire() as conn, conn.transaction():  # a monitor acknowledges meanwhile
        current = await store.get_alert(conn, raised.alert_id, for_update=True)
        assert current is not None
        now = datetime.now(UTC)
        await commit_changes(conn, [acknowledge(current, who="a/key", why="on it", now=now)], RECEIVERS, now)
    async with pool.acquire() as conn, conn.transaction():
        await staged.apply(conn)
    staged.committed()

    assert handler.fell_back == 1
    after = await store.get_alert(pool, raised.alert_id)
    assert after is not None
    assert after.status.value == "acknowledged" and after.acknowledged_reason == "on it"
    assert after.incident_ids == ("k1", "k2")
    assert after.revision == 3  # raised, acknowledged, updated: nothing overwritten
    # The next batch is staged on what was committed, not on the discarded fold.
    third = one(2, classified("k3", "t1", [("kidnapping", day + timedelta(days=5))], city=None, second=2))
    await feed_all(c, third, 1)
    final = await store.get_alert(pool, raised.alert_id)
    assert final is not None and final.incident_ids == ("k1", "k2", "k3") and final.revision == 4
    assert handler.fell_back == 1


async def test_a_failed_commit_hands_nothing_on(two_pools: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    staged_pool, sequential_pool = two_pools
    events = traffic(400, seed=3)
    engine = Engine(load_rules())
    handler = AlertsHandler(engine, RECEIVERS)
    c = consumer(staged_pool, handler)
    await feed_all(c, events[:100], 100)
    # Batch 100-199's commit fails (its offsets cannot be stored); batch 200-299 was folded
    # on top of it meanwhile. The consumer gives up both and starts again from PostgreSQL.
    await c.feed(events[100:200], {(cast(str, None), 0): 200})
    with pytest.raises(asyncpg.NotNullViolationError):
        await c.feed(events[200:300], {("classified", 0): 300})
    assert not handler.overlay_states and not handler.overlay_alerts
    await feed_all(c, events[100:], 100)

    await sequential(sequential_pool, AlertsHandler(engine, RECEIVERS), events, 100)
    assert await everything(staged_pool) == await everything(sequential_pool)


async def test_a_state_written_by_another_replica_meanwhile_is_folded_on(
    two_pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    """The staged batch's state writes check the versions it folded on: a state another
    replica wrote in between makes the batch fold again on it, and nothing of the stale fold
    is written."""
    pool, _ = two_pools
    engine = Engine(load_rules())
    handler, other_replica = AlertsHandler(engine, RECEIVERS), AlertsHandler(engine, RECEIVERS)
    day = date(2025, 3, 1)
    first = one(0, classified("r1", "t1", [("interpol_red_notice", day)], city=None, second=0))
    await feed_all(consumer(pool, handler), first, 1)
    staged = await handler.stage(
        pool, one(2, classified("r3", "t1", [("extradition_request", day + timedelta(days=9))], city=None, second=2))
    )
    async with pool.acquire() as conn, conn.transaction():  # the other replica, meanwhile
        await other_replica(conn, one(1, classified("r2", "t1", [("family_threatened", day)], city=None, second=1)))
    async with pool.acquire() as conn, conn.transaction():
        await staged.apply(conn)
    staged.committed()

    assert handler.fell_back == 1
    state = json.loads(await pool.fetchval("SELECT state FROM rule_state WHERE key = 'target_ref:t1'"))
    assert sorted(state["incidents"]) == ["r1", "r2", "r3"]
    alerts = await store.list_alerts(pool, status=None, severity=None, target_ref="t1")
    (r1,) = [a for a in alerts if a.rule == "R1_extradition_with_family_pressure"]
    assert r1.incident_ids == ("r1", "r2", "r3")  # raised by the other replica, updated by r3


async def test_a_restarted_handler_restores_its_states_and_goes_on_as_if_it_never_stopped(
    two_pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    events = traffic(1200)
    staged_pool, sequential_pool = two_pools
    engine = Engine(load_rules())
    await feed_all(consumer(staged_pool, AlertsHandler(engine, RECEIVERS)), events[:600], 100)

    restarted = AlertsHandler(engine, RECEIVERS)
    restored = await restarted.restore(staged_pool)
    table = {r["key"]: r for r in await staged_pool.fetch("SELECT key, version, state FROM rule_state")}
    assert restored == len(table) > 40, "every state with a version is in the cache"
    for key, (version, state) in restarted.states.entries.items():
        assert version == table[key]["version"]
        assert state.to_json() == json.loads(table[key]["state"])
    assert await restarted.restore(staged_pool) == 0, "a state already cached is not replaced"

    await feed_all(consumer(staged_pool, restarted), events[600:], 100)
    await sequential(sequential_pool, AlertsHandler(engine, RECEIVERS), events, 100)
    after_restart, one_by_one = await everything(staged_pool), await everything(sequential_pool)
    for part in ["alerts", "changes", "outbox", "states", "filings", "other"]:
        assert after_restart[part] == one_by_one[part], part


async def test_a_small_cache_restores_the_most_recently_written_states(
    two_pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    pool, _ = two_pools
    engine = Engine(load_rules())
    await feed_all(consumer(pool, AlertsHandler(engine, RECEIVERS)), traffic(300), 50)
    # One batch's states share its transaction's clock: give each its own write time.
    await pool.execute(
        """UPDATE rule_state s SET updated_at = timestamptz '2026-01-01' + n * interval '1 second'
             FROM (SELECT key, row_number() OVER (ORDER BY md5(key)) AS n FROM rule_state) AS o
            WHERE o.key = s.key"""
    )
    newest = [r["key"] for r in await pool.fetch("SELECT key FROM rule_state ORDER BY updated_at DESC LIMIT 5")]
    small = AlertsHandler(engine, RECEIVERS, state_cache=5)
    assert await small.restore(pool) == 5
    assert list(small.states.entries) == newest[::-1]  # oldest first: the first evicted
