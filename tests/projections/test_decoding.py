"""A replay's fast decoding accepts and rejects exactly what the event models do, and yields
the same facts. Pure: no I/O."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from services.projections.decoding import decode_payloads
from services.projections.folding import fact_of, fact_tuple
from shared.events import EVENT_DATA_MODELS, EventType, SubjectErased
from tests.projections.logdata import T0, alert, classified, report, retraction

INCIDENT = report(
    7, country="KG", group="dissident", occurred_on=date(2021, 2, 1), acts=("kidnapping", "family_threatened")
)


def _json(data: BaseModel) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(data.model_dump_json(by_alias=True))
    return parsed


VALID: list[tuple[EventType, dict[str, Any]]] = [
    (EventType.INCIDENT_REPORTED, _json(INCIDENT)),
    (EventType.INCIDENT_AMENDED, _json(report(8, narrative=None))),
    (EventType.INCIDENT_CLASSIFIED, _json(classified(INCIDENT))),
    (EventType.INCIDENT_RETRACTED, _json(retraction(INCIDENT))),
    (EventType.SUBJECT_ERASED, _json(SubjectErased(target_ref="tgt-1", received_at=T0))),
    (EventType.ALERT_RAISED, _json(alert("fp", "open"))),
]


def _models_decision(event_type: str, value: bytes) -> tuple[Any, ...] | None:
    """What the live consumer's decoding (the full event models) makes of a record."""
    model = EVENT_DATA_MODELS[event_type]
    try:
        fact = fact_of(model.model_validate_json(value))
    except ValidationError:
        return None
    return fact_tuple(fact) if fact is not None else None


def _decode(event_type: str, value: bytes) -> tuple[Any, ...] | None:
    return decode_payloads([(event_type.encode(), value)])[0]


def test_valid_events_give_the_facts_of_the_models() -> None:
    for event_type, data in VALID:
        value = json.dumps(data).encode()
        fact = _decode(event_type, value)
        assert fact is not None, event_type
        assert fact == _models_decision(event_type, value)


def test_a_missing_target_profile_takes_the_models_default() -> None:
    data = _json(INCIDENT)
    del data["facts"]["target"], data["facts"]["acts"]
    value = json.dumps(data).encode()
    fact = _decode(EventType.INCIDENT_REPORTED, value)
    assert fact is not None and fact[7] == "unknown" and fact[8] == []
    assert fact == _models_decision(EventType.INCIDENT_REPORTED, value)


def _broken(path: list[Any], replacement: Any) -> dict[str, Any]:
    data = _json(classified(INCIDENT))
    node = data
    for key in path[:-1]:
        node = node[key]
    if replacement is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = replacement
    return data


_DELETE = object()

BROKEN: list[tuple[list[Any], Any]] = [
    (["incident", "facts", "location", "country"], "XX"),  # not ISO 3166 (a Python validator)
    (["incident", "facts", "location", "country"], "kg"),
    (["incident", "facts", "narrative", "langx"], "en"),  # unknown field, nested
    (["classification", "evidence", 0, "span"], {"start": 0, "end": 1}),  # missing text
    (["incident", "facts", "date_precision"], "days"),  # not in the vocabulary
    (["incident", "facts", "occurred_on"], "2021-02-30"),
    (["incident", "facts", "sources", 0, "credibility"], 7),  # out of range
    (["incident", "received_at"], "yesterday"),
    (["incident", "facts", "acts", 0, "type"], "nope"),
    (["incident", "incident_id"], _DELETE),
    (["classification", "classifier_version"], _DELETE),
    (["classification", "pace_methods"], "direct_attack"),
]


def test_broken_events_are_refused_like_the_models_refuse_them() -> None:
    for path, replacement in BROKEN:
        value = json.dumps(_broken(path, replacement)).encode()
        assert _models_decision(EventType.INCIDENT_CLASSIFIED, value) is None, path
        assert _decode(EventType.INCIDENT_CLASSIFIED, value) is None, path
    for value in (b"{not json", b"null", b"[]", b"", json.dumps(_json(INCIDENT)).encode()):
        assert _decode(EventType.INCIDENT_CLASSIFIED, value) is None
    assert decode_payloads([(b"org.tnrwatch.unknown.v1", b"{}"), (None, b"{}"), (b"x", None)]) == [None] * 3


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*prefix, index))
    return out


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=10),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-2, max_value=2),
    st.sampled_from(["", "x", "2", "KG", "TH", "2024-06-01", "2024-13-01", "2026-01-15T10:00:00Z", "uyghur", "day"]),
    st.just([]),
    st.just({}),
    st.just(["a"]),
)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_mutation_is_decided_as_the_models_decide(data: st.DataObject) -> None:
    event_type, original = data.draw(st.sampled_from(VALID[:5]))
    body = json.loads(json.dumps(original))
    path = data.draw(st.sampled_from(_paths(body)))
    node = body
    for key in path[:-1]:
        node = node[key]
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "delete" and isinstance(node, dict):
        del node[path[-1]]
    elif action == "add" and isinstance(node[path[-1]], dict):
        node[path[-1]][data.draw(st.sampled_from(["extra", "from_", "span", "lang"]))] = data.draw(LEAVES)
    else:
        node[path[-1]] = data.draw(LEAVES)
    value = json.dumps(body).encode()
    assert _decode(event_type, value) == _models_decision(event_type, value)


def test_a_model_feature_the_plain_schema_cannot_reproduce_is_refused_not_guessed() -> None:
    from pydantic import model_validator

    from services.projections.decoding import UnsupportedSchema, _model_decoder, plain_validator

    class Checked(BaseModel):
        incident_id: str

        @model_validator(mode="after")
        def _not_empty(self) -> Checked:
            if not self.incident_id:
                raise ValueError("empty")
            return self

    try:
        plain_validator(Checked)
    except UnsupportedSchema:
        pass
    else:
        raise AssertionError("a model validator must not be dropped silently")
    # Such a type is decoded the live consumer's way instead.
    value = json.dumps(_json(classified(INCIDENT))).encode()
    decode = _model_decoder(EVENT_DATA_MODELS[EventType.INCIDENT_CLASSIFIED])
    assert decode(value) == _models_decision(EventType.INCIDENT_CLASSIFIED, value)
