"""The pure rule engine and the rules file: fast tests without Kafka or PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.alerts.engine import (
    Cause,
    Engine,
    Evaluation,
    IncidentSnapshot,
    KeyState,
    Removal,
    Upsert,
)
from services.alerts.rules import RulesError, load_rules, parse_rules
from shared.events import IncidentFacts, IncidentRecorded

SCENARIOS = Path(__file__).resolve().parent.parent / "data" / "alert-scenarios.jsonl"
RULES = load_rules()
ALL_RULES = {r.id for r in RULES.rules}


def snapshot(
    incident_id: str, data: dict[str, Any], *, partner: str = "A", minute: int = 0, target_ref: str | None = None
) -> IncidentSnapshot:
    facts = dict(data)
    identity = facts.get("target", {}).get("identity")
    target = {k: v for k, v in facts.get("target", {}).items() if k != "identity"}
    facts["target"] = target
    ref = target_ref or (f"ref-{identity['name']}-{identity['birth_date']}" if identity else f"ref-{incident_id}")
    recorded = IncidentRecorded(
        incident_id=incident_id,
        target_ref=ref,
        partner=partner,
        source=f"urn:partner:{partner}",
        subject=incident_id,
        report_id=incident_id,
        received_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minute),
        facts=IncidentFacts.model_validate(facts),
    )
    return IncidentSnapshot.from_recorded(recorded)


class World:
    """The engine plus a dict of key states: what the service does, without a database."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.engine = engine or Engine(RULES)
        self.states: dict[str, KeyState] = {}
        self.keys_of: dict[str, list[str]] = {}
        self.watermark: date | None = None
        self.open: dict[str, Evaluation] = {}
        self.log: list[Evaluation] = []

    def apply(self, change: Upsert | Removal) -> list[Evaluation]:
        if isinstance(change, Upsert):
            keys = sorted(
                set(self.engine.keys_for(change.incident)) | set(self.keys_of.get(change.incident.incident_id, []))
            )
            self.keys_of[change.incident.incident_id] = keys
            latest = change.incident.latest_date
            self.watermark = latest if self.watermark is None else max(self.watermark, latest)
        else:
            keys = self.keys_of.pop(change.incident_id, [])
        out = []
        for key in keys:
            self.states[key], evs = self.engine.fold(key, self.states.get(key, KeyState()), change, self.watermark)
            out.extend(evs)
        for ev in out:
            if ev.holds:
                self.open[ev.fingerprint] = ev
            else:
                self.open.pop(ev.fingerprint, None)
        self.log.extend(out)
        return out

    def firing(self) -> set[str]:
        return {ev.rule for ev in self.open.values()}


def scenarios() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SCENARIOS.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("scenario", scenarios(), ids=lambda s: s["id"])
def test_sample_scenarios_fire_what_they_must(scenario: dict[str, Any]) -> None:
    world = World()
    for n, post in enumerate(scenario["posts"]):
        world.apply(Upsert(snapshot(f"{scenario['id']}-{n}", post["data"], partner=post["partner"], minute=n)))
    firing = world.firing()
    assert set(scenario["must_fire"]) <= firing, scenario["note"]
    assert not set(scenario["must_not_fire"]) & firing, scenario["note"]


def report(acts: list[tuple[str, str, str]], *, occurred_on: str | None = None, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "occurred_on": occurred_on or acts[0][1],
        "date_precision": "day",
        "location": extra.pop("location", {"country": "TR"}),
        "target": extra.pop("target", {"group": "unknown", "status_abroad": "unknown"}),
        "acts": [{"type": t, "on": on, "status": st} for t, on, st in acts],
    }
    data.update(extra)
    return data


def test_r1_window_edge_is_inclusive_at_180_days_and_closed_at_181() -> None:
    at_edge = World()
    at_edge.apply(Upsert(snapshot("a", report([("interpol_red_notice", "2020-01-01", "carried_out")]), target_ref="t")))
    at_edge.apply(Upsert(snapshot("b", report([("family_threatened", "2020-06-29", "carried_out")]), target_ref="t")))
    assert "R1_extradition_with_family_pressure" in at_edge.firing()  # 180 days apart

    past_edge = World()
    past_edge.apply(
        Upsert(snapshot("a", report([("interpol_red_notice", "2020-01-01", "carried_out")]), target_ref="t"))
    )
    past_edge.apply(Upsert(snapshot("b", report([("family_threatened", "2020-06-30", "carried_out")]), target_ref="t")))
    assert "R1_extradition_with_family_pressure" not in past_edge.firing()  # 181 days


def test_r2_blocked_detention_does_not_fire_and_deadline_follows_the_latest_report() -> None:
    refugee = {"group": "unknown", "status_abroad": "refugee"}
    blocked = World()
    blocked.apply(
        Upsert(
            snapshot(
                "a",
                report(
                    [("detention_abroad", "2025-03-03", "blocked"), ("extradition_request", "2025-03-05", "pending")],
                    target=refugee,
                    next_hearing_on="2025-04-15",
                ),
                target_ref="t",
            )
        )
    )
    assert "R2_imminent_refoulement" not in blocked.firing()

    world = World()
    (ev,) = [
        e
        for e in world.apply(
            Upsert(
                snapshot(
                    "a",
                    report(
                        [
                            ("detention_abroad", "2025-03-03", "carried_out"),
                            ("extradition_request", "2025-03-05", "pending"),
                        ],
                        target=refugee,
                        next_hearing_on="2025-04-15",
                    ),
                    target_ref="t",
                )
            )
        )
        if e.rule == "R2_imminent_refoulement"
    ]
    assert ev.deadline == date(2025, 4, 15)
    moved = world.apply(
        Upsert(
            snapshot(
                "a",
                report(
                    [
                        ("detention_abroad", "2025-03-03", "carried_out"),
                        ("extradition_request", "2025-03-05", "pending"),
                    ],
                    target=refugee,
                    next_hearing_on="2025-05-02",
                ),
                target_ref="t",
                minute=5,
            ),
            cause=Cause.AMENDED,
        )
    )
    assert [e.deadline for e in moved if e.rule == "R2_imminent_refoulement"] == [date(2025, 5, 2)]


def test_r2_needs_a_group_at_risk_or_protected_status() -> None:
    world = World()
    world.apply(
        Upsert(
            snapshot(
                "a",
                report(
                    [
                        ("detention_abroad", "2025-03-03", "carried_out"),
                        ("extradition_request", "2025-03-05", "pending"),
                    ],
                    target={"group": "fugitive_economic", "status_abroad": "visa_holder"},
                ),
                target_ref="t",
            )
        )
    )
    assert "R2_imminent_refoulement" not in world.firing()


def test_replaying_the_same_event_finds_nothing_new() -> None:
    world = World()
    incident = snapshot("a", report([("kidnapping", "2023-07-07", "carried_out")]), target_ref="t")
    assert [e.rule for e in world.apply(Upsert(incident))] == ["R3_kidnapping_or_disappearance"]
    assert world.apply(Upsert(incident)) == []


def test_retraction_resolves_and_amendment_reevaluates() -> None:
    world = World()
    world.apply(Upsert(snapshot("a", report([("extradition_request", "2024-05-01", "pending")]), target_ref="t")))
    world.apply(Upsert(snapshot("b", report([("family_threatened", "2024-03-10", "carried_out")]), target_ref="t")))
    assert "R1_extradition_with_family_pressure" in world.firing()
    out = world.apply(Removal("b"))
    assert [(e.rule, e.holds, e.cause) for e in out] == [
        ("R1_extradition_with_family_pressure", False, Cause.RETRACTED)
    ]

    world.apply(Upsert(snapshot("c", report([("kidnapping", "2024-06-01", "carried_out")]), target_ref="t")))
    assert "R3_kidnapping_or_disappearance" in world.firing()
    # The partner corrects the act: it was an assault, not a kidnapping.
    world.apply(
        Upsert(
            snapshot("c", report([("assault", "2024-06-01", "carried_out")]), target_ref="t", minute=9),
            cause=Cause.AMENDED,
        )
    )
    assert "R3_kidnapping_or_disappearance" not in world.firing()


def test_r7_counts_distinct_targets_in_one_city_however_spelt() -> None:
    world = World()
    for n, city in enumerate(["Milan", " milan", "MILAN"]):
        world.apply(
            Upsert(
                snapshot(
                    f"i{n}",
                    report(
                        [("overseas_police_station_contact", f"2023-0{n + 1}-10", "carried_out")],
                        location={"country": "IT", "city": city},
                    ),
                    target_ref=f"t{n}",
                )
            )
        )
    (ev,) = world.open.values()
    assert ev.rule == "R7_overseas_station_cluster" and ev.place == "IT/milan"
    assert set(ev.incident_ids) == {"i0", "i1", "i2"}


def test_r7_same_target_three_times_is_not_a_cluster() -> None:
    world = World()
    for n in range(3):
        world.apply(
            Upsert(
                snapshot(
                    f"i{n}",
                    report(
                        [("agent_approach_abroad", f"2023-0{n + 1}-10", "carried_out")],
                        location={"country": "IT", "city": "Milan"},
                    ),
                    target_ref="same",
                )
            )
        )
    assert "R7_overseas_station_cluster" not in world.firing()


def test_r8_needs_two_partners() -> None:
    world = World()
    world.apply(
        Upsert(snapshot("a", report([("online_threat", "2022-01-01", "carried_out")]), partner="A", target_ref="t"))
    )
    world.apply(
        Upsert(snapshot("b", report([("online_threat", "2022-02-01", "carried_out")]), partner="A", target_ref="t"))
    )
    assert "R8_cross_partner_corroboration" not in world.firing()
    world.apply(Upsert(snapshot("c", report([], occurred_on="2022-03-01"), partner="B", target_ref="t")))
    assert "R8_cross_partner_corroboration" in world.firing()


def test_old_state_expires_but_not_under_a_standing_alert() -> None:
    world = World()
    world.apply(Upsert(snapshot("old", report([("family_threatened", "2010-01-01", "carried_out")]), target_ref="t")))
    world.apply(Upsert(snapshot("k", report([("kidnapping", "2010-02-01", "carried_out")]), target_ref="t")))
    world.apply(Upsert(snapshot("new", report([("online_threat", "2024-01-01", "carried_out")]), target_ref="t2")))
    world.apply(Upsert(snapshot("new2", report([("online_threat", "2024-01-02", "carried_out")]), target_ref="t")))
    assert set(world.states["target_ref:t"].incidents) == {"k", "new2"}


def test_acts_without_a_date_use_occurred_on() -> None:
    world = World()
    data = report([("extradition_request", "2024-05-01", "pending")])
    data["acts"][0].pop("on")
    world.apply(Upsert(snapshot("a", data, target_ref="t")))
    world.apply(Upsert(snapshot("b", report([("family_threatened", "2024-03-10", "carried_out")]), target_ref="t")))
    assert "R1_extradition_with_family_pressure" in world.firing()


def test_rules_file_errors_name_the_rule_and_field() -> None:
    bad = """
version: 1
sets: {a: [kidnapping]}
rules:
  - id: X1
    severity: urgent
    key: target_ref
    window_days: 30
    summary: s
    when:
      all:
        - acts: {type: kidnaping}
        - acts: {colour: red}
  - id: X2
    severity: info
    key: planet
    summary: s
    when: {acts: {type: $nope}, at_least: 0}
"""
    with pytest.raises(RulesError) as caught:
        parse_rules(bad, "bad.yaml")
    text = str(caught.value)
    assert "rules[0] (X1).severity" in text
    assert "'kidnaping' is not a known ActType" in text
    assert "rules[0] (X1).when.all[1].acts.colour: unknown attribute" in text
    assert "rules[1] (X2).key" in text and "rules[1] (X2).window_days: required" in text
    assert "unknown set '$nope'" in text and "at_least" in text


def test_a_new_rule_needs_no_code() -> None:
    text = """
version: 1
rules:
  - id: R9_assault_in_two_countries
    severity: high
    key: target_ref
    window_days: 30
    summary: Assaults in two countries within a month
    when: {acts: {type: assault, status: {not: blocked}}, distinct: country, at_least: 2}
"""
    world = World(Engine(parse_rules(text)))
    world.apply(
        Upsert(
            snapshot(
                "a", report([("assault", "2024-01-01", "carried_out")], location={"country": "DE"}), target_ref="t"
            )
        )
    )
    world.apply(
        Upsert(
            snapshot(
                "b", report([("assault", "2024-01-20", "carried_out")], location={"country": "FR"}), target_ref="t"
            )
        )
    )
    assert world.firing() == {"R9_assault_in_two_countries"}


def test_all_eight_rules_are_in_the_shipped_file() -> None:
    assert {r.split("_")[0] for r in ALL_RULES} == {f"R{n}" for n in range(1, 9)}


# --- The shortcuts (window pruning by leaf bits, memoised act masks) change no verdict ---------

_ACT_TYPES = [
    "interpol_red_notice",
    "extradition_request",
    "family_threatened",
    "passport_cancelled",
    "consular_service_denied",
    "online_threat",
    "overseas_police_station_contact",
    "agent_approach_abroad",
    "detention_abroad",
    "luring_to_third_country",
    "kidnapping",
]


class _NoMemo(dict[Any, Any]):
    """A memo that never remembers: every act mask is computed from the row's attributes."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def _reference_engine() -> Engine:
    engine = Engine(RULES)
    engine._compiled._possible = lambda rule, present: True  # type: ignore[method-assign]
    engine._compiled._act_masks = _NoMemo()
    engine._compiled._incident_masks = _NoMemo()
    engine._compiled.prune = False  # every window, each condition interpreted (``holds``)
    return engine


_act = st.fixed_dictionaries(
    {
        "type": st.sampled_from(_ACT_TYPES),
        "on": st.dates(date(2025, 1, 1), date(2025, 12, 31)).map(date.isoformat),
        "status": st.sampled_from(["carried_out", "pending", "attempted", "blocked"]),
    }
)
_report = st.tuples(
    st.sampled_from(["t1", "t2", "t3"]),
    st.sampled_from(["A", "B"]),
    st.fixed_dictionaries(
        {
            "occurred_on": st.dates(date(2025, 1, 1), date(2025, 12, 31)).map(date.isoformat),
            "date_precision": st.just("day"),
            "location": st.sampled_from([{"country": "IT", "city": "Rome"}, {"country": "FR", "city": "Paris"}]),
            "target": st.fixed_dictionaries(
                {
                    "group": st.sampled_from(["uyghur", "student", "unknown"]),
                    "status_abroad": st.sampled_from(["refugee", "unknown"]),
                }
            ),
            "acts": st.lists(_act, min_size=1, max_size=3),
        }
    ),
)


@given(st.lists(_report, min_size=1, max_size=14))
@settings(max_examples=80, deadline=None)
def test_shortcuts_find_what_full_evaluation_finds(reports: list[tuple[str, str, dict[str, Any]]]) -> None:
    fast, full = World(), World(_reference_engine())
    for n, (target_ref, partner, facts) in enumerate(reports):
        snap = snapshot(f"h{n}", facts, partner=partner, minute=n, target_ref=target_ref)
        fast.apply(Upsert(snap))
        full.apply(Upsert(snapshot(f"h{n}", facts, partner=partner, minute=n, target_ref=target_ref)))
    assert fast.log == full.log
    assert fast.open == full.open


def test_matched_acts_are_the_models_pydantic_would_construct() -> None:
    """``matched_act`` skips pydantic's generic construction: it must make the same model."""
    from services.alerts.engine import matched_act
    from shared.events import MatchedAct
    from shared.vocabulary import ActStatus, ActType

    for on in [date(2025, 3, 1), None]:
        fast = matched_act("i1", 2, "extradition_request", on, "pending")
        slow = MatchedAct.model_construct(
            incident_id="i1", act_index=2, type=ActType("extradition_request"), on=on, status=ActStatus("pending")
        )
        assert fast == slow and fast.model_fields_set == slow.model_fields_set
        assert fast.model_dump(mode="json") == slow.model_dump(mode="json")
        assert fast.model_copy(update={"act_index": 3}).act_index == 3 and fast.act_index == 2


def test_key_states_hold_no_reference_cycles() -> None:
    """Key states are freed by reference counting once dropped (evicted from the cache): the
    service freezes what survives each batch (``gc.freeze``), and frozen cycles would never be
    collected."""
    import gc

    world = World()
    rome = {"country": "IT", "city": "Rome"}
    reports = [
        report([("interpol_red_notice", "2025-01-01", "carried_out")], location=rome),
        report([("family_threatened", "2025-02-01", "carried_out")], location=rome),
        report([("overseas_police_station_contact", "2025-02-03", "carried_out")], location=rome),
    ]
    gc.collect()
    gc.disable()  # only the collection below may find cycles
    try:
        for n in range(30):
            world.apply(Upsert(snapshot(f"c{n}", reports[n % 3], target_ref=f"t{n % 4}", minute=n)))
        world.apply(Removal("c3"))
        assert world.open  # alerts raised: witnesses, memos and matched acts were built
        # Cold states as the service reads them, folded again.
        states = {k: KeyState.from_json(json.loads(json.dumps(s.to_json()))) for k, s in world.states.items()}
        for key, state in states.items():
            world.engine.fold(key, state, Upsert(snapshot("late", reports[0], target_ref="t0", minute=99)), None)
        del world, states, state
        assert gc.collect() == 0
    finally:
        gc.enable()
