"""Sustained events per second through the alert rules with 100,000 targets of state.

    .venv/bin/python -m benchmarks.alerts_engine [--targets N] [--events N] [--db-events N]

Rows:
- engine (pure): keys, fold into the key's state (all eight rules), lifecycle of the alerts;
- handler + PostgreSQL: the service's handler (load state FOR UPDATE, fold, write state,
  alerts, history and outbox) in one transaction per batch of 1000, with the 100,000 targets'
  state in the rule_state table. Kafka is not in this row (see alerts_latency).

Target: >= 5,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

from pydantic import BaseModel

from services.alerts.engine import ActFact, Engine, IncidentSnapshot, KeyState, Upsert
from services.alerts.lifecycle import AlertRecord, on_evaluation
from services.alerts.main import COMPONENT, MIGRATIONS
from services.alerts.receivers import ReceiversConfig
from services.alerts.rules import load_rules
from services.alerts.service import AlertsHandler, alert_id_for
from shared.consumer import Consumed
from shared.db import create_pool, prepare_database
from shared.events import (
    Classification,
    CloudEvent,
    IncidentClassified,
    IncidentFacts,
    IncidentRecorded,
)
from tests.harness import drop_database, isolated_settings
from tests.infra import start_infra

ACTS = [
    "interpol_red_notice",
    "extradition_request",
    "family_threatened",
    "family_detained",
    "passport_cancelled",
    "consular_service_denied",
    "online_threat",
    "surveillance_abroad",
    "overseas_police_station_contact",
    "agent_approach_abroad",
    "detention_abroad",
    "assault",
    "kidnapping",
]
# 200 cities in 10 countries (overseas police stations were reported in ~100 cities), and
# a third of the reports without a city.
COUNTRIES = ["IT", "FR", "TR", "TH", "AE", "CA", "AU", "NL", "DE", "GB"]
CITIES: list[str | None] = [f"City {n}" for n in range(200)] + [None] * 100
BASE = date(2020, 1, 1)


def incident(rng: random.Random, n: int, target: int) -> IncidentRecorded:
    day = BASE + timedelta(days=rng.randrange(1500))
    place = rng.randrange(len(CITIES))
    country = COUNTRIES[place % len(COUNTRIES)]
    acts = [
        {
            "type": rng.choice(ACTS),
            "on": (day + timedelta(days=rng.randrange(60))).isoformat(),
            "status": rng.choice(["carried_out", "pending", "attempted"]),
        }
        for _ in range(rng.randint(1, 3))
    ]
    return IncidentRecorded(
        incident_id=f"i{n}",
        target_ref=f"t{target:06d}",
        partner=rng.choice(["a", "b", "c"]),
        source="urn:partner:bench",
        subject=f"s{n}",
        report_id=f"r{n}",
        received_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n),
        facts=IncidentFacts.model_validate(
            {
                "occurred_on": day.isoformat(),
                "date_precision": "day",
                "location": {"country": country, **({"city": CITIES[place]} if CITIES[place] else {})},
                "target": {
                    "group": rng.choice(["uyghur", "unknown", "student"]),
                    "status_abroad": rng.choice(["refugee", "unknown"]),
                },
                "acts": acts,
            }
        ),
    )


def seed_states(engine: Engine, targets: int, rng: random.Random) -> dict[str, KeyState]:
    """Two past incidents per target (and their places), as the store would hold them."""
    states: dict[str, KeyState] = {}
    template = IncidentSnapshot.from_recorded(incident(rng, 0, 0))
    n = 0
    for t in range(targets):
        for _ in range(2):
            day = BASE + timedelta(days=rng.randrange(1500))
            place = rng.randrange(len(CITIES))
            snap = replace(
                template,
                incident_id=f"seed{n}",
                target_ref=f"t{t:06d}",
                partner=rng.choice(["a", "b", "c"]),
                occurred_on=day,
                country=COUNTRIES[place % len(COUNTRIES)],
                city=CITIES[place],
                acts=tuple(
                    ActFact(
                        rng.choice(ACTS),
                        day + timedelta(days=rng.randrange(60)),
                        "unknown",
                        rng.choice(["carried_out", "pending", "attempted"]),
                    )
                    for _ in range(rng.randint(1, 3))
                ),
            )
            n += 1
            for key in engine.keys_for(snap):
                states.setdefault(key, KeyState()).incidents[snap.incident_id] = snap
    return states


def run_pure(
    engine: Engine, states: dict[str, KeyState], events: list[IncidentSnapshot], *, json_roundtrip: bool
) -> tuple[float, float]:
    """Wall and CPU seconds (the CPU figure is what the engine costs on a shared machine)."""
    alerts: dict[str, AlertRecord] = {}
    now = datetime.now(UTC)
    watermark: date | None = None
    started, cpu = time.perf_counter(), time.process_time()
    for snap in events:
        watermark = snap.latest_date if watermark is None else max(watermark, snap.latest_date)
        for key in engine.keys_for(snap):
            state = states.get(key, KeyState())
            if json_roundtrip:
                state = KeyState.from_json(state.to_json())
            new, evaluations = engine.fold(key, state, Upsert(snap), watermark)
            states[key] = KeyState.from_json(new.to_json()) if json_roundtrip else new
            for ev in evaluations:
                change = on_evaluation(
                    alerts.get(ev.fingerprint), ev, new_alert_id=alert_id_for(ev.fingerprint), now=now
                )
                if change is not None:
                    alerts[ev.fingerprint] = change.record
    return time.perf_counter() - started, time.process_time() - cpu


async def run_db(states: dict[str, KeyState], targets: int, events: int, rng: random.Random) -> tuple[float, int]:
    with ExitStack() as stack:
        infra = start_infra(stack)
        settings = await isolated_settings(infra.kafka_bootstrap, infra.database_url)
        pool = await create_pool(settings.database_url, max_size=4)
        try:
            await prepare_database(pool, COMPONENT, MIGRATIONS)
            engine = Engine(load_rules())
            await pool.executemany(
                "INSERT INTO rule_state (key, state) VALUES ($1, $2)", [(k, s.to_json()) for k, s in states.items()]
            )
            handler = AlertsHandler(engine, ReceiversConfig())
            envelope = CloudEvent(id="bench", source="urn:bench", type="org.tnrwatch.incident.classified.v1")
            classification = Classification(classifier_version="bench")
            batch: list[Consumed[BaseModel]] = [
                Consumed(
                    "bench",
                    0,
                    n,
                    envelope,
                    IncidentClassified(
                        incident=incident(rng, 10_000_000 + n, rng.randrange(targets)), classification=classification
                    ),
                )
                for n in range(events)
            ]
            started = time.perf_counter()
            for i in range(0, events, 1000):
                async with pool.acquire() as conn, conn.transaction():
                    await handler(conn, batch[i : i + 1000])
            elapsed = time.perf_counter() - started
            raised = await pool.fetchval("SELECT count(*) FROM alerts")
            return elapsed, raised
        finally:
            await pool.close()
            await drop_database(infra.database_url, settings)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--db-events", type=int, default=10_000)
    args = parser.parse_args()
    rng = random.Random(5)
    engine = Engine(load_rules())
    seeded = time.perf_counter()
    states = seed_states(engine, args.targets, rng)
    print(f"seeded {len(states):,} target states in {time.perf_counter() - seeded:.1f}s")
    # As in the service (services/alerts/main.py), and the seeded state is long-lived.
    gc.set_threshold(100_000, 50, 100)
    gc.freeze()
    events = [
        IncidentSnapshot.from_recorded(incident(rng, 5_000_000 + n, rng.randrange(args.targets)))
        for n in range(args.events)
    ]
    wall, cpu = run_pure(engine, states, events, json_roundtrip=False)
    db_elapsed, raised = asyncio.run(run_db(states, args.targets, args.db_events, rng))
    print(f"\n{'path':<36}{'events':>10}{'wall s':>9}{'events/s':>10}{'CPU s':>8}{'events/CPU-s':>14}{'target':>10}")
    print(
        f"{'engine (pure)':<36}{args.events:>10,}{wall:>9.2f}{args.events / wall:>10,.0f}{cpu:>8.2f}"
        f"{args.events / cpu:>14,.0f}{'>= 5,000':>10}"
    )
    print(
        f"{'handler + PostgreSQL (batch 1000)':<36}{args.db_events:>10,}{db_elapsed:>9.2f}"
        f"{args.db_events / db_elapsed:>10,.0f}{'-':>8}{'-':>14}{'>= 5,000':>10}"
    )
    print(f"\n{args.targets:,} targets of state; handler run raised {raised:,} alerts")


if __name__ == "__main__":
    main()
