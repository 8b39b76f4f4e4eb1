"""The plain-report fast path (services/intake/fastpath.py) against the full models: whatever
it accepts, the full models accept with the same facts (to the byte), identity, ids and
target_ref; whatever the full models refuse or forbid, it leaves to them (so every error
message is theirs). Differential, on random mutations of the samples (hypothesis)."""

from __future__ import annotations

import copy
from datetime import date, timedelta
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.intake import models
from services.intake.validation import Prepared, ReportFacts, plain_one, prepare, prepare_one
from services.intake.vault import new_data_key, open_identity, seal_identity
from shared.auth import Principal
from tests.intake.conftest import SOURCE, samples
from tests.intake.mutation import paths_in

KEY = b"k" * 32
TODAY = date.today()
WRITER = Principal("k", "sample-ngo", frozenset({"events:write"}), frozenset({SOURCE}))
PRINCIPALS = [
    WRITER,
    Principal("k", "sample-ngo", frozenset({"incidents:read"}), frozenset({SOURCE})),
    Principal("k", "other-ngo", frozenset({"events:write"}), frozenset({"urn:partner:other-ngo"})),
    Principal("k", "ops", frozenset({"admin"}), frozenset({SOURCE})),
]

# Values near the edges of what the models take: date forms, vocabulary look-alikes, numbers
# of other JSON types, long and odd strings.
future = (TODAY + timedelta(days=1)).isoformat()
tricky: st.SearchStrategy[Any] = st.sampled_from([
    None, True, False, 0, 1, 3, 6, 7, -1, 3.0, 2.5, "3", "", " ", "x", "a" * 501, "\x00",
    "2024", "2024-02", "2024-02-10", "2024-02-30", "2024-2-10", "20240210", "2024-02-10\n",
    "２０２４-02-10", "2024-02-10T00:00:00", "2024-02-10T00:00:00Z", "0000-01-01", "9999-12-31",
    future, future[:7], future[:4], TODAY.isoformat(), "1985-05-05",
    "day", "month", "year", "Day", "DE", "de", "CN", "XX", "KG", "uyghur", "Uyghur", "unknown",
    "detained", "prc_mps", "carried_out", "kidnapping", "interpol_red_notice", "A", "F", "G",
    "Person Alpha", "王伟", "https://example.org", [], {}, [{}], {"text": "t"},
    {"type": "kidnapping"}, {"url": "u", "credibility": 2}, {"name": "A B"}, {"birth_date": "1990-01-01"},
])
DATES = ["2024-02-10", "2024-02-30", "2024-2-10", "20240210", "2024-02-10\n", "２０２４-02-10",
         "2024-02-10T00:00:00", "0000-01-01", "9999-12-31", future, TODAY.isoformat(), "2024", "2024-02", 19000]
LONG = ["a" * 500, "a" * 501, "a\x00", " ", "", 5, None]
# Edge values by field name: a mutation of that field draws from these half the time.
EDGES: dict[str, list[Any]] = {
    "credibility": [0, 1, 6, 7, 3.0, True, "3", None], "reliability": ["A", "F", "G", "a", None, 1],
    "occurred_on": [*DATES, future[:7], future[:4]], "on": DATES, "next_hearing_on": [*DATES, "2999-01-01"],
    "birth_date": DATES, "date_precision": ["day", "month", "year", "Day", None],
    "country": ["DE", "de", "XX", "CN", "", None], "nationality": ["CN", "cn", "XX", None],
    "name": [*LONG, "王 伟", "Li-Wei"], "name_zh": [*LONG, "王伟"], "text": ["t", "a" * 200_001, None],
    "id": LONG, "source": LONG, "subject": LONG, "type": ["kidnapping", "Kidnapping", None,
                                                         "org.tnrwatch.incident.amended.v1",
                                                         "org.tnrwatch.incident.retracted.v1"],
    "specversion": ["1.0", "1", 1.0, None], "time": ["2026-01-15T10:00:00Z", "yesterday", None, 5],
    "actor": ["prc_mps", "PRC_MPS", None], "status": ["pending", None, "done"],
    "group": ["uyghur", None, "Uyghur"], "status_abroad": ["refugee", None, "exile"],
    "outcome": ["detained", None, "jailed"], "url": ["u", None, 1], "lang": ["en", None, 1],
}


@st.composite
def replacement(draw: st.DrawFn, field: Any) -> Any:
    edges = EDGES.get(field) if isinstance(field, str) else None
    if edges and draw(st.booleans()):
        return draw(st.sampled_from(edges))
    return draw(tricky | json_values)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12) | tricky,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10) | tricky.filter(
        lambda v: isinstance(v, str)), inner, max_size=3),
    max_leaves=6,
)


FIELD_NAMES = ["occurred_on", "date_precision", "location", "target", "acts", "outcome", "next_hearing_on",
               "narrative", "sources", "identity", "name", "name_zh", "birth_date", "city", "country", "on",
               "actor", "status", "type", "url", "reliability", "credibility", "text", "lang", "group",
               "nationality", "status_abroad", "subject", "time", "traceparent", "partnerref", "data_base64",
               "Bad-Name", "extension_too_long_name"]


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A sample event with a few values replaced, removed or added, anywhere in it."""
    event: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(samples())))
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from([p for p in paths_in(event) if p]))
        parent: Any = event
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = copy.deepcopy(draw(replacement(path[-1])))  # never the strategy's own
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "delete":
            parent.pop(path[-1])
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(FIELD_NAMES) | st.text(max_size=8))] = copy.deepcopy(draw(json_values))
        else:
            parent.append(copy.deepcopy(draw(json_values)))
    return event


def _same(plain: Prepared, full: Prepared) -> None:
    assert isinstance(plain.payload, ReportFacts) and isinstance(full.payload, ReportFacts)
    assert orjson.dumps(plain.payload.facts) == orjson.dumps(full.payload.facts)  # same bytes on the log
    assert (plain.envelope, plain.kind, plain.event_id, plain.incident_id, plain.target_ref, plain.position,
            plain.key) == (full.envelope, full.kind, full.event_id, full.incident_id, full.target_ref,
                           full.position, full.key)
    if full.identity is None:
        assert plain.identity is None
    else:
        assert plain.identity is not None
        fields = ("name", "name_zh", "birth_date")
        assert [getattr(plain.identity, f) for f in fields] == [getattr(full.identity, f) for f in fields]
        assert plain.identity.names_somebody() == full.identity.names_somebody()
        # What is sealed opens as the identity the model holds (vault.open_identity).
        data_key = new_data_key()
        sealed = seal_identity(data_key, plain.identity, "tr_x")
        assert open_identity(data_key, sealed, "tr_x") == full.identity


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_events(), st.sampled_from(PRINCIPALS))
def test_what_the_fast_path_accepts_the_models_accept_alike(event: dict[str, Any], principal: Principal) -> None:
    plain = plain_one(copy.deepcopy(event), principal, KEY, TODAY, "/7")
    full, forbidden, errors = prepare_one(copy.deepcopy(event), principal, KEY, "/7")
    if plain is None:
        return  # the models decide, with their own messages
    assert full is not None and not forbidden and not errors, (forbidden, errors)
    _same(plain, full)


def test_the_samples_take_the_fast_path() -> None:
    """The optimisation applies to the reports partners send (not only to a benchmark's)."""
    reports = [e for e in samples() if e["type"].startswith("org.tnrwatch.incident.re")
               and not e["type"].endswith("retracted.v1")]
    assert reports
    for event in reports:
        plain = plain_one(copy.deepcopy(event), WRITER, KEY, TODAY)
        full, _, _ = prepare_one(copy.deepcopy(event), WRITER, KEY)
        assert plain is not None and full is not None, event["id"]
        _same(plain, full)


def test_a_report_the_fast_path_leaves_is_refused_with_the_field_named() -> None:
    event = copy.deepcopy(samples()[0])
    event["data"]["acts"][1]["on"] = (TODAY + timedelta(days=1)).isoformat()
    event["data"]["location"]["country"] = "XX"
    assert plain_one(event, WRITER, KEY, TODAY) is None
    try:
        prepare([event], WRITER, KEY, batch=True)
    except Exception as problem:
        pointers = {e["pointer"] for e in getattr(problem, "errors", [])}
        assert "/0/data/location/country" in pointers and "/0/data/acts" in "".join(pointers)
    else:
        raise AssertionError("a future act and an unknown country were accepted")


def test_prepare_uses_the_models_clock() -> None:
    """The fast path asks the same ``today`` as the models' validators (tests move it)."""
    event = copy.deepcopy(samples()[0])
    original = models.today
    try:
        models.today = lambda: date(2024, 2, 9)  # the day before the sample's occurred_on
        try:
            prepare([event], WRITER, KEY, batch=False)
        except Exception as problem:
            assert any(e["pointer"] == "/data/occurred_on" for e in getattr(problem, "errors", []))
        else:
            raise AssertionError("a report from the future was accepted")
    finally:
        models.today = original


def test_the_record_is_what_to_record_makes_of_the_internal_event() -> None:
    """service._record builds headers and value directly: the same as the shared
    serialisation of the CloudEvent (extensions carried, the partner's traceparent not)."""
    from datetime import UTC, datetime

    from services.intake.service import _internal_event, _record
    from shared.serialization import to_record

    received_at = datetime.now(UTC)
    trace_headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    for event in samples():
        event = copy.deepcopy(event)
        event["partnerref"], event["seq"], event["flag"] = "x", 7, True
        [prepared] = prepare([event], WRITER if event["source"] == SOURCE else Principal(
            "k", "p", frozenset({"events:write", "admin"}), frozenset({event["source"]})), KEY, batch=False)
        if prepared.target_ref is None:
            continue  # a retraction: its target is looked up in the database first
        expected = to_record(_internal_event(prepared, WRITER, received_at), key=prepared.target_ref,
                             trace_headers=trace_headers)
        record = _record(prepared, WRITER, received_at.isoformat(), trace_headers)
        assert record == expected
