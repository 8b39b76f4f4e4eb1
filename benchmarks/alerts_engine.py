"""Sustained events per second through the alert rules with 100,000 targets of state.

    .venv/bin/python -m benchmarks.alerts_engine [--mix realistic|busy|both] [--path staged|sequential]
        [--profile pure|db] [--targets N] [--events N] [--db-events N]

Rows:
- engine (pure): keys, fold into the key's state (all eight rules), lifecycle of the alerts;
- handler + PostgreSQL: the service's handler driven by the service's consumer
  (``PgOffsetConsumer.feed``, Kafka aside): batches of 1000, each batch's state, filings,
  alerts, history, outbox and offsets in one transaction, with the 100,000 targets' state in
  the rule_state table. ``staged`` (the service's path) folds batch N+1 while batch N's writes
  and commit run; ``sequential`` is one batch at a time (the replay's path). Kafka is not in
  this row (see alerts_latency). Its CPU column is this process only (PostgreSQL runs beside
  it on the same cores).

Target: >= 5,000 events/s.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import uvloop
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel

from benchmarks.procs import local_servers, schedstat
from services.alerts.engine import ActFact, Engine, IncidentSnapshot, KeyState, Upsert
from services.alerts.lifecycle import AlertRecord, on_evaluation
from services.alerts.main import COMPONENT, MIGRATIONS
from services.alerts.receivers import ReceiversConfig
from services.alerts.rules import load_rules
from services.alerts.service import HEAP, AlertsHandler, alert_id_for, decode
from services.alerts.store import dumps, new_versions
from shared.consumer import Consumed, PgOffsetConsumer, store_offsets
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


@dataclass(frozen=True)
class Mix:
    """Synthetic report traffic: act types with weights, acts per report, cities."""

    name: str
    acts: dict[str, int]  # act type -> weight
    acts_per_report: dict[int, int]  # number of acts -> weight
    cities: list[str | None]  # a None is a report without a city
    other_partner: float = 1.0  # how often a report comes from a partner other than the target's usual one

    def partner(self, rng: random.Random, target: int) -> str:
        return rng.choice(PARTNERS) if rng.random() < self.other_partner else PARTNERS[target % len(PARTNERS)]

    def act(self, rng: random.Random) -> str:
        return rng.choices(list(self.acts), weights=list(self.acts.values()))[0]

    def act_count(self, rng: random.Random) -> int:
        return rng.choices(list(self.acts_per_report), weights=list(self.acts_per_report.values()))[0]


PARTNERS = ["a", "b", "c"]
COUNTRIES = ["IT", "FR", "TR", "TH", "AE", "CA", "AU", "NL", "DE", "GB"]
MIXES = {
    # Hot on purpose: every act type equally likely, so 2 in 13 acts are overseas-station
    # contacts, in 200 cities (a third of reports without one): R7 clusters of 150+ incidents
    # per city and about 1.3 alert changes per event. The stress case.
    "busy": Mix(
        "busy",
        dict.fromkeys(
            [
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
            ],
            1,
        ),
        {1: 1, 2: 1, 3: 1},
        [f"City {n}" for n in range(200)] + [None] * 100,
    ),
    # Closer to what partners document (Safeguard Defenders, Freedom House case data): online
    # threats, surveillance and family pressure dominate; formal channels, detention and
    # kidnapping are rare; most reports describe one act; station contacts are a few percent
    # of acts, spread over 1,000 cities. Reports concern distinct targets (100,000 of them),
    # each mostly documented by one partner (1 report in 20 from another).
    "realistic": Mix(
        "realistic",
        {
            "online_threat": 25,
            "surveillance_abroad": 15,
            "family_threatened": 15,
            "family_detained": 5,
            "passport_cancelled": 6,
            "consular_service_denied": 5,
            "agent_approach_abroad": 5,
            "overseas_police_station_contact": 2,
            "interpol_red_notice": 3,
            "extradition_request": 2,
            "detention_abroad": 3,
            "assault": 2,
            "kidnapping": 1,
        },
        {1: 70, 2: 25, 3: 5},
        [f"City {n}" for n in range(1000)] + [None] * 500,
        other_partner=0.05,
    ),
}
BASE = date(2020, 1, 1)


def incident(mix: Mix, rng: random.Random, n: int, target: int) -> IncidentRecorded:
    day = BASE + timedelta(days=rng.randrange(1500))
    place = rng.randrange(len(mix.cities))
    country = COUNTRIES[place % len(COUNTRIES)]
    city = mix.cities[place]
    acts = [
        {
            "type": mix.act(rng),
            "on": (day + timedelta(days=rng.randrange(60))).isoformat(),
            "status": rng.choice(["carried_out", "pending", "attempted"]),
        }
        for _ in range(mix.act_count(rng))
    ]
    return IncidentRecorded(
        incident_id=f"i{n}",
        target_ref=f"t{target:06d}",
        partner=mix.partner(rng, target),
        source="urn:partner:bench",
        subject=f"s{n}",
        report_id=f"r{n}",
        received_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n),
        facts=IncidentFacts.model_validate(
            {
                "occurred_on": day.isoformat(),
                "date_precision": "day",
                "location": {"country": country, **({"city": city} if city else {})},
                "target": {
                    "group": rng.choice(["uyghur", "unknown", "student"]),
                    "status_abroad": rng.choice(["refugee", "unknown"]),
                },
                "acts": acts,
            }
        ),
    )


def seed_states(engine: Engine, mix: Mix, targets: int, rng: random.Random) -> dict[str, KeyState]:
    """Two past incidents per target (and their places), as the store would hold them."""
    states: dict[str, KeyState] = {}
    template = IncidentSnapshot.from_recorded(incident(mix, rng, 0, 0))
    n = 0
    for t in range(targets):
        for _ in range(2):
            day = BASE + timedelta(days=rng.randrange(1500))
            place = rng.randrange(len(mix.cities))
            snap = replace(
                template,
                incident_id=f"seed{n}",
                target_ref=f"t{t:06d}",
                partner=mix.partner(rng, t),
                occurred_on=day,
                country=COUNTRIES[place % len(COUNTRIES)],
                city=mix.cities[place],
                acts=tuple(
                    ActFact(
                        mix.act(rng),
                        day + timedelta(days=rng.randrange(60)),
                        "unknown",
                        rng.choice(["carried_out", "pending", "attempted"]),
                    )
                    for _ in range(mix.act_count(rng))
                ),
            )
            n += 1
            for key in engine.keys_for(snap):
                states.setdefault(key, KeyState()).incidents[snap.incident_id] = snap
    return states


def run_pure(
    engine: Engine, states: dict[str, KeyState], events: list[IncidentSnapshot], *, json_roundtrip: bool
) -> tuple[float, float, int]:
    """Wall and CPU seconds (the CPU figure is what the engine costs on a shared machine), and
    the number of alert changes."""
    alerts: dict[str, AlertRecord] = {}
    now = datetime.now(UTC)
    watermark: date | None = None
    changes = 0
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
                    changes += 1
    return time.perf_counter() - started, time.process_time() - cpu, changes


async def run_db(
    mix: Mix,
    states: dict[str, KeyState],
    targets: int,
    events: int,
    rng: random.Random,
    profiler: Any = None,
    path: str = "staged",
    restore: bool = True,
) -> tuple[float, float, float | None, int, int]:
    """Wall seconds, this process's CPU seconds, PostgreSQL's CPU seconds in the same window
    (None unless it is the local stack's), alerts raised, alert changes recorded."""
    with ExitStack() as stack:
        infra = start_infra(stack)
        settings = await isolated_settings(infra.kafka_bootstrap, infra.database_url)
        pool = await create_pool(settings.database_url, max_size=4)
        try:
            await prepare_database(pool, COMPONENT, MIGRATIONS)
            engine = Engine(load_rules())
            await pool.executemany(  # as the store writes them: each with its version token
                "INSERT INTO rule_state (key, state, version) VALUES ($1, $2, $3)",
                [
                    (k, dumps(s.to_json()), v)
                    for (k, s), v in zip(states.items(), new_versions(len(states)), strict=True)
                ],
            )
            handler = AlertsHandler(engine, ReceiversConfig())
            if path == "staged":
                HEAP.enable()  # each committed batch's survivors frozen, as in the service
            if restore:  # as the service does beside its consumer at start-up
                t = time.perf_counter()
                restored = await handler.restore(pool)
                print(f"{mix.name}: restored {restored:,} states in {time.perf_counter() - t:.1f}s", flush=True)
            envelope = CloudEvent(id="bench", source="urn:bench", type="org.tnrwatch.incident.classified.v1")
            classification = Classification(classifier_version="bench")
            batch: list[Consumed[BaseModel]] = [
                Consumed(
                    "bench",
                    0,
                    n,
                    envelope,
                    IncidentClassified(
                        incident=incident(mix, rng, 10_000_000 + n, rng.randrange(targets)),
                        classification=classification,
                    ),
                )
                for n in range(events)
            ]
            # The consumer the service runs (shared/consumer.py), minus Kafka: each batch's
            # writes and offsets in one transaction; "staged" folds batch N+1 while batch N
            # commits (the service's path), "sequential" is the plain handler.
            consumer: PgOffsetConsumer[BaseModel] = PgOffsetConsumer(
                settings=settings,
                pool=pool,
                producer=cast(AIOKafkaProducer, None),  # only for dead letters, none here
                group_id=COMPONENT,
                topics=["bench"],
                dead_letter_topic="bench-dlq",
                decode=decode,
                handle=handler,
                staged=handler if path == "staged" else None,
            )
            waited = 0.0  # staged: time the next batch, already folded, waited for the previous commit
            drain = consumer.drain

            async def timed_drain() -> None:
                nonlocal waited
                t = time.perf_counter()
                try:
                    await drain()
                finally:
                    waited += time.perf_counter() - t

            consumer.drain = timed_drain  # type: ignore[method-assign]
            rss: list[str] = []  # memory must stay bounded: evicted states freed, frozen or not
            if profiler is not None:
                profiler.start()
            pg_before = _postgres_cpu()
            started, cpu = time.perf_counter(), time.process_time()
            for i in range(0, events, 1000):
                chunk = batch[i : i + 1000]
                positions = {("bench", 0): chunk[-1].offset + 1}
                if path == "staged":
                    await consumer.feed(chunk, positions)
                else:
                    async with pool.acquire() as conn, conn.transaction():
                        await handler(conn, chunk)
                        await store_offsets(conn, COMPONENT, positions)
                if (i + 1000) % 10_000 == 0:
                    rss.append(f"{(i + 1000) // 1000}k {_rss_mb():,.0f} MB")
            await consumer.drain()
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            pg_after = _postgres_cpu()
            pg_cpu = sum(t - pg_before.get(p, 0.0) for p, t in pg_after.items()) if pg_after else None
            HEAP.disable()
            if path == "staged":
                print(f"{mix.name}: waited {waited:.2f}s for commits ({elapsed:.2f}s wall)", flush=True)
            heap = f"{HEAP.full_collections} full collections, {HEAP.grown:,} objects frozen since"
            print(f"{mix.name}: RSS after {', '.join(rss)}; {heap}", flush=True)
            if handler.fell_back:
                print(f"{mix.name}: {handler.fell_back} staged batches folded again under lock", flush=True)
            if profiler is not None:
                profiler.stop()
            raised = await pool.fetchval("SELECT count(*) FROM alerts")
            changes = await pool.fetchval("SELECT count(*) FROM alert_changes")
            return elapsed, cpu, pg_cpu, raised, changes
        finally:
            await pool.close()
            await drop_database(infra.database_url, settings)


def _postgres_cpu() -> dict[int, float]:
    """CPU seconds of each PostgreSQL process of the local stack (empty under testcontainers):
    it shares the two cores with the handler, so its cost per event bounds the rate too."""
    return {pid: schedstat([pid])[0] for pid in local_servers().get("postgres", [])}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--db-events", type=int, default=10_000)
    parser.add_argument("--mix", choices=["realistic", "busy", "both"], default="both")
    parser.add_argument("--profile", choices=["pure", "db"], help="print a pyinstrument profile of that path")
    parser.add_argument(
        "--path",
        choices=["staged", "sequential", "both"],
        default="staged",
        help="the handler as the service runs it (staged: batch N+1 folded while N commits) or one batch at a time",
    )
    parser.add_argument(
        "--state",
        choices=["restored", "cold", "both"],
        default="both",
        help="the state cache filled from the table before the run, as the service does at start-up, or empty",
    )
    args = parser.parse_args()
    # As in the service (services/alerts/main.py): the rule state is long-lived.
    gc.set_threshold(100_000, 50, 100)
    lines = []
    for name in ["realistic", "busy"] if args.mix == "both" else [args.mix]:
        mix = MIXES[name]
        rng = random.Random(5)
        engine = Engine(load_rules())
        seeded = time.perf_counter()
        states = seed_states(engine, mix, args.targets, rng)
        print(f"{name}: seeded {len(states):,} key states in {time.perf_counter() - seeded:.1f}s", flush=True)
        gc.freeze()
        events = [
            IncidentSnapshot.from_recorded(incident(mix, rng, 5_000_000 + n, rng.randrange(args.targets)))
            for n in range(args.events)
        ]
        profiler = None
        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler()
        if profiler and args.profile == "pure":
            profiler.start()
        wall, cpu, changes = run_pure(engine, states, events, json_roundtrip=False)
        if profiler and args.profile == "pure":
            profiler.stop()
        lines.append(
            f"{name + ': engine (pure)':<54}{args.events:>8,}{changes / args.events:>9.2f}{wall:>8.2f}"
            f"{args.events / wall:>10,.0f}{cpu:>7.2f}{args.events / cpu:>14,.0f}{'>= 5,000':>10}"
        )
        paths = ["sequential", "staged"] if args.path == "both" else [args.path]
        db_rng_state = rng.getstate()  # each path folds the same events
        runs = [(p, c) for p in paths for c in (["restored", "cold"] if args.state == "both" else [args.state])]
        for path, cache in runs:
            rng.setstate(db_rng_state)
            # Under uvloop, as the service runs (shared/runtime.py serves with loop="uvloop").
            db_elapsed, db_cpu, pg_cpu, raised, db_changes = uvloop.run(
                run_db(
                    mix,
                    states,
                    args.targets,
                    args.db_events,
                    rng,
                    profiler if args.profile == "db" else None,
                    path,
                    restore=cache == "restored",
                )
            )
            label = f"{name}: handler + PostgreSQL ({path}, {cache})"
            lines.append(
                f"{label:<54}{args.db_events:>8,}{db_changes / args.db_events:>9.2f}"
                f"{db_elapsed:>8.2f}{args.db_events / db_elapsed:>10,.0f}{db_cpu:>7.2f}"
                f"{args.db_events / db_cpu:>14,.0f}{'>= 5,000':>10}"
                f"{pg_cpu if pg_cpu is not None else float('nan'):>9.2f}"
            )
            print(f"{name}: handler run ({path}, {cache}) raised {raised:,} alerts, {db_changes:,} changes", flush=True)
        if profiler:
            print(profiler.output_text(unicode=False, color=False, show_all=False))
        del states, events
        gc.unfreeze()
        gc.collect()
    print(f"\n{args.targets:,} targets of state")
    print(
        f"{'path':<54}{'events':>8}{'chg/evt':>9}{'wall s':>8}{'events/s':>10}{'CPU s':>7}"
        f"{'events/CPU-s':>14}{'target':>10}{'PG CPU s':>9}"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
