"""A replay's decoding: record values to flat facts, with the full validation of the contract.

Runs in worker processes, so it imports only what decoding needs (a worker that imported the
whole service spent more CPU starting than decoding, on a machine where PostgreSQL, the broker
and the replay itself share two cores).

Validation is the event models' own, without building the models: :func:`plain_validator`
turns a model's pydantic-core schema into the same schema over plain dicts (every field,
type, enum, constraint, validator and ``extra="forbid"`` kept; only the model classes gone),
and the facts are read straight from the dicts. Measured at about 40% of the cost of
``model_validate_json`` plus building facts from the models, for the same accept/reject
decisions (``tests/projections/test_decoding.py`` checks both on valid and broken events).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import SchemaValidator

from services.projections.folding import fact_of, fact_tuple
from shared.events import (
    EVENT_DATA_MODELS,
    AlertChanged,
    IncidentClassified,
    IncidentRecorded,
    IncidentRetracted,
    SubjectErased,
)


class UnsupportedSchema(ValueError):
    """A model uses something the plain-dict translation does not reproduce exactly."""


def plain_validator(model: type[BaseModel]) -> SchemaValidator:
    """A validator of ``model``'s JSON that accepts and rejects exactly what the model does
    and returns plain dicts (enum members, dates and datetimes as the model has them).

    Refuses (``UnsupportedSchema``) any model feature whose behaviour would change without
    the model class: model validators, custom ``__init__``, root models, ``__post_init__``."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, BaseModel):  # a default such as ``target: TargetProfile = TargetProfile()``
            return node.model_dump()
        if not isinstance(node, dict):
            return node
        kind = node.get("type")
        if kind in ("function-before", "function-after", "function-wrap", "function-plain") and (
            node.get("schema", {}).get("type") == "model"
        ):
            raise UnsupportedSchema("model validators need the model instance")
        if kind != "model":
            return {key: walk(value) for key, value in node.items()}
        if node.get("custom_init") or node.get("root_model") or node.get("post_init"):
            raise UnsupportedSchema(f"{node.get('cls')}: custom init, root model or post-init")
        inner = node["schema"]
        if inner.get("type") != "model-fields" or inner.get("computed_fields"):
            raise UnsupportedSchema(f"{node.get('cls')}: {inner.get('type')}")
        config = node.get("config", {})
        fields: dict[str, Any] = {}
        for name, field in inner["fields"].items():
            schema = walk(field["schema"])
            plain: dict[str, Any] = {
                "type": "typed-dict-field",
                "schema": schema,
                "required": schema.get("type") != "default",
            }
            if field.get("validation_alias") is not None:
                plain["validation_alias"] = field["validation_alias"]
            fields[name] = plain
        out: dict[str, Any] = {
            "type": "typed-dict",
            "fields": fields,
            "extra_behavior": inner.get("extra_behavior") or config.get("extra_fields_behavior", "ignore"),
            # The model's own strictness, population by name and string settings.
            "config": {key: value for key, value in config.items() if key != "title"},
        }
        if "ref" in node:
            out["ref"] = node["ref"]
        return out

    schema = model.__pydantic_core_schema__
    return SchemaValidator(walk(schema))


Flat = tuple[Any, ...]


def _report(kind: str, r: dict[str, Any]) -> Flat:
    facts = r["facts"]
    return (
        kind,
        r["incident_id"],
        r["target_ref"],
        r["partner"],
        r["received_at"],
        facts["occurred_on"],
        facts["location"]["country"],
        facts["target"]["group"].value,
        [act["type"].value for act in facts["acts"]],
    )


def _classified(data: dict[str, Any]) -> Flat:
    c = data["classification"]
    return (
        *_report("c", data["incident"]),
        list(c["pace_methods"]),
        list(c["ccdi_methods"]),
        list(c["persuasion_channels"]),
        list(c["ir_categories"]),
        c["classifier_version"],
    )


def _retracted(data: dict[str, Any]) -> Flat:
    return ("x", data["incident_id"], data["target_ref"], data["partner"], data["reason"])


def _erased(data: dict[str, Any]) -> Flat:
    return ("e", data["target_ref"], data["received_at"])


# The same flat tuples as folding.fact_tuple(folding.fact_of(model)), from the plain dicts.
_FLAT: dict[type[BaseModel], Callable[[dict[str, Any]], Flat]] = {
    IncidentClassified: _classified,
    IncidentRecorded: lambda data: _report("r", data),
    IncidentRetracted: _retracted,
    SubjectErased: _erased,
}


def _alert(value: bytes) -> Flat:
    # Rare (one per alert change) and rebuilt as a model by the fold: the model's own path.
    return ("a", AlertChanged.model_validate_json(value).model_dump(mode="json"))


def _model_decoder(model: type[BaseModel]) -> Callable[[bytes], Flat | None]:
    """The live consumer's way: build the model, then its fact (slower, always exact)."""

    def decode(value: bytes) -> Flat | None:
        fact = fact_of(model.model_validate_json(value))
        return fact_tuple(fact) if fact is not None else None

    return decode


def _decoders() -> dict[str, Callable[[bytes], Flat | None]]:
    decoders: dict[str, Callable[[bytes], Flat | None]] = {}
    validators: dict[type[BaseModel], SchemaValidator] = {}
    for event_type, model in EVENT_DATA_MODELS.items():
        if model is AlertChanged:
            decoders[event_type] = _alert
            continue
        flat = _FLAT.get(model)
        if flat is None:
            continue  # a kind the projections do not fold: counted as undecodable, as before
        if model not in validators:
            try:
                validators[model] = plain_validator(model)
            except UnsupportedSchema:
                # A model grew a feature the plain-dict schema cannot reproduce: stay exact.
                decoders[event_type] = _model_decoder(model)
                continue
        validator = validators[model]

        def decode(value: bytes, validate: Callable[[bytes], Any] = validator.validate_json, flat: Any = flat) -> Flat:
            return flat(validate(value))  # type: ignore[no-any-return]

        decoders[event_type] = decode
    return decoders


_DECODERS: dict[bytes, Callable[[bytes], Flat | None]] = {}


def decode_payloads(items: Sequence[tuple[bytes | None, bytes | None]]) -> list[Flat | None]:
    """(ce_type, value) pairs to flat facts (``folding.fact_from_tuple`` makes them facts);
    ``None`` for records no consumer can use (the live consumer dead-letters those)."""
    if not _DECODERS:
        _DECODERS.update({t.encode(): d for t, d in _decoders().items()})
    decoders = _DECODERS
    out: list[Flat | None] = []
    append = out.append
    for event_type, value in items:
        decode = decoders.get(event_type) if event_type is not None else None
        if decode is None or value is None:
            append(None)
            continue
        try:
            append(decode(value))
        except ValidationError:
            append(None)
    return out


def worker_init() -> None:
    # A batch holds tens of thousands of short-lived containers; the default collector
    # thresholds would scan them again and again (see rebuild.rebuild).
    gc.set_threshold(200_000, 50, 100)
    decode_payloads([])  # build the validators before the first batch arrives
