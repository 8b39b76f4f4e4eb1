"""The pure parts: folding in any order, suppression, cursors, rendering. No I/O."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.projections.folding import (
    IncidentState,
    LogEvent,
    fact_from_tuple,
    fact_of,
    fact_tuple,
    fold,
    strip_confidential,
)
from services.projections.reads import Cursor, etag_matches, render_incident, suppress
from tests.projections.logdata import T0, classified, report, retraction

FIRST = report(1, country="TR")
AMENDED = report(1, country="TH", acts=("family_threatened",), received_at=T0 + timedelta(hours=2))
EVENTS = [
    ("log", FIRST),
    ("log", AMENDED),
    ("cls", classified(FIRST, version="v1")),
    ("cls", classified(AMENDED, version="v1")),
    ("cls", classified(AMENDED, version="v2")),
]


def _event(n: int, topic: str, data: Any) -> LogEvent:
    fact = fact_of(data)
    assert fact is not None
    return LogEvent(topic, 0, n, fact, data.model_dump_json(by_alias=True))


def _replay(order: list[int], cut: int) -> dict[str, Any]:
    """Fold EVENTS in this order, in two batches, carrying stored state like the database."""
    stored: dict[str, dict[str, Any]] = {}
    states: dict[str, IncidentState] = {}
    events = [_event(i, *EVENTS[i]) for i in order]
    for batch in (events[:cut], events[cut:]):
        result = fold(states, {}, batch)
        for w in result.changed_incidents():
            states[w.incident_id] = IncidentState(
                w.incident_id,
                w.target_ref,
                w.partner,
                w.report_received_at,
                w.classified_received_at,
                w.retracted,
                w.retraction_reason,
            )
            row = stored.setdefault(w.incident_id, {})
            if w.report_json is not None:
                body = json.loads(w.report_json)
                row["report"] = body["incident"] if w.report_in_classified else body
            if w.classified_json is not None:
                row["classification"] = json.loads(w.classified_json)["classification"]
    final: dict[str, Any] = stored["inc-000001"]
    return final


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(len(EVENTS))), st.integers(min_value=0, max_value=len(EVENTS)))
def test_any_interleaving_ends_with_the_newest_report_and_its_newest_classification(order: list[int], cut: int) -> None:
    # Within one topic the log keeps order; across the two topics anything goes.
    logs = [i for i in order if EVENTS[i][0] == "log"]
    classifications = [i for i in order if EVENTS[i][0] == "cls"]
    if logs != sorted(logs) or classifications != sorted(classifications):
        return
    row = _replay(order, cut)
    assert row["report"]["facts"]["location"]["country"] == "TH"
    assert row["classification"]["classifier_version"] == "v2"
    assert row["classification"]["ir_categories"] == ["IR1"]


def test_retraction_is_final_and_counted() -> None:
    incident = report(3)
    result = fold(
        {},
        {},
        [
            _event(0, "log", incident),
            _event(1, "cls", retraction(incident)),
            _event(2, "log", report(3, received_at=T0 + timedelta(days=2))),
        ],
    )
    write = result.incidents["inc-000003"]
    assert write.retracted and write.retraction_reason == "duplicate"
    assert result.applied == 3 and result.positions == {("log", 0): 3, ("cls", 0): 2}


def test_the_same_report_again_changes_nothing() -> None:
    stored = IncidentState("inc-000004", "tgt-000004", "ngo-a", report(4).received_at, report(4).received_at)
    result = fold({"inc-000004": stored}, {}, [_event(9, "log", report(4))])
    assert result.changed_incidents() == [] and result.applied == 1


def test_erasure_strips_quoted_text_of_earlier_reports_even_folded_later() -> None:
    incident = report(5, narrative="Named person said things.")
    result = fold({}, {incident.target_ref: T0 + timedelta(days=1)}, [_event(0, "cls", classified(incident))])
    payload = json.loads(result.incidents["inc-000005"].classified_json or "")
    assert "narrative" not in payload["incident"]["facts"] and payload["incident"]["facts"]["sources"] == []
    assert all("span" not in e for e in payload["classification"]["evidence"])
    assert "Named person" not in strip_confidential(incident.model_dump_json(), classified=False)


def test_suppression_hides_small_cells_and_a_neighbour_that_would_give_them_away() -> None:
    cells = [{"country": "TH", "incidents": 9}, {"country": "KG", "incidents": 4}, {"country": "TR", "incidents": 1}]
    out = suppress(cells, ["country"], 3)
    assert [c["incidents"] for c in out] == [9, None, None]
    two_small = suppress([*cells, {"country": "AE", "incidents": 2}], ["country"], 3)
    assert [c["incidents"] for c in two_small] == [9, 4, None, None]
    cube = [
        {"country": "TH", "year": 2023, "incidents": 5},
        {"country": "TH", "year": 2024, "incidents": 1},
        {"country": "KG", "year": 2023, "incidents": 6},
        {"country": "KG", "year": 2024, "incidents": 7},
    ]
    hidden = {(c["country"], c["year"]) for c in suppress(cube, ["country", "year"], 3) if c["incidents"] is None}
    # TH 2024 is small; its row and its column would reveal it, so more cells go.
    assert ("TH", 2024) in hidden and len(hidden) >= 3


def test_cursor_round_trip_and_garbage() -> None:
    cursor = Cursor(date(2024, 5, 1), "inc-000002")
    assert Cursor.decode(cursor.encode()) == cursor
    for garbage in ("", "abc", "W10", "!!!"):
        try:
            Cursor.decode(garbage)
        except ValueError:
            continue
        raise AssertionError(f"{garbage!r} was accepted")


def test_if_none_match_forms() -> None:
    assert etag_matches('"a", W/"b"', '"b"') and etag_matches("*", '"x"') and not etag_matches('"a"', '"b"')


def test_render_hides_confidential_fields_from_other_readers() -> None:
    incident = classified(report(6, narrative="Quoted words."))
    row = {
        "incident_id": "inc-000006",
        "target_ref": "tgt-000006",
        "retracted": False,
        "report": json.loads(incident.incident.model_dump_json()),
        "classification": json.loads(incident.classification.model_dump_json(by_alias=True)),
    }
    other = render_incident(row, with_confidential=False)
    assert "narrative" not in other and "sources" not in other
    assert "Quoted" not in json.dumps(other) and "taken" not in json.dumps(other)
    own = render_incident(row, with_confidential=True)
    assert own["narrative"]["text"] == "Quoted words." and own["sources"]


def test_facts_survive_the_trip_to_and_from_a_decoding_worker() -> None:
    from tests.projections.logdata import alert

    incident = report(7)
    for data in (incident, classified(incident), retraction(incident), alert("fp", "open")):
        fact = fact_of(data)
        assert fact is not None and fact_from_tuple(fact_tuple(fact)) == fact
