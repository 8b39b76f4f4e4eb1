"""The CloudEvents 1.0 HTTP binding: structured, batch and binary mode. Pure: no I/O.

From the request's content type, headers and body to a list of envelope dicts, or a
:class:`Problem` (400 malformed JSON, 415 content type, 422 not a CloudEvent).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import unquote

import orjson

from shared.problems import Problem

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
BINARY = "application/json"
MAX_BATCH_EVENTS = 500

# CloudEvents attribute names: lower-case letters and digits (spec 1.0, "Attribute Naming").
_ATTRIBUTE_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_ESCAPED_SURROGATE = re.compile(rb"\\[uU][dD][89a-fA-F]")
MAX_ATTRIBUTE = 500  # characters of an id, source or subject
_REQUIRED = ("specversion", "id", "source", "type")
_STRING_ATTRIBUTES = ("specversion", "id", "source", "type", "subject", "datacontenttype", "dataschema", "time")


class Mode(StrEnum):
    STRUCTURED = "structured"
    BATCH = "batch"
    BINARY = "binary"


@dataclass(frozen=True)
class Parsed:
    mode: Mode
    events: list[Any]  # one JSON value per event, validated later


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def mode_for(content_type: str | None) -> Mode:
    kind = media_type(content_type)
    if kind == STRUCTURED:
        return Mode.STRUCTURED
    if kind == BATCH:
        return Mode.BATCH
    if kind == BINARY:
        return Mode.BINARY
    raise Problem(
        415,
        "Unsupported Media Type",
        f"Use {STRUCTURED} (one event), {BATCH} (a JSON array of events) or {BINARY} with "
        "ce-* headers (binary mode).",
    )


# A run of 19 digits or more: an integer orjson would read as a float (past 64 bits), or a
# number long enough that only the standard library's reading is taken as the definition.
# Found as 19 zeros once every digit is a zero (two C passes: ~3 ns a byte, where the regex
# [0-9]{19} took ~30 ns a byte on a body full of dates).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def _loads(body: bytes) -> Any:
    """``json.loads(body)``, by orjson where it gives the very same value (~2x faster: the
    body's parse was ~8 % of a batch's CPU). orjson refuses what the standard library reads
    differently or not at all (NaN, 1e400, lone surrogate escapes, a BOM, nesting past 1,024,
    invalid UTF-8): those, and bodies with a long digit run, are read by ``json``, which also
    words the error."""
    if body.translate(_DIGITS_AS_ZERO).find(_LONG_NUMBER) < 0:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return json.loads(body)


def _json(body: bytes) -> Any:
    try:
        value = _loads(body)
    except UnicodeDecodeError as exc:
        raise Problem(400, "Bad Request", "The body is not UTF-8.") from exc
    except json.JSONDecodeError as exc:
        raise Problem(
            400, "Bad Request", "The body is not valid JSON.",
            errors=[{"pointer": "/", "detail": f"{exc.msg} at line {exc.lineno} column {exc.colno}"}],
        ) from exc
    except RecursionError as exc:
        raise Problem(400, "Bad Request", "The body nests too deeply.") from exc
    except ValueError as exc:  # e.g. an integer literal of thousands of digits
        raise Problem(400, "Bad Request", "The body holds a value JSON parsing refuses.") from exc
    if _ESCAPED_SURROGATE.search(body):
        try:  # an escaped lone surrogate parses, but is no text: no database or log takes it
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:
            raise Problem(400, "Bad Request", "The body holds an unpaired UTF-16 surrogate escape.") from exc
    return value


def parse(content_type: str | None, headers: Mapping[str, str], body: bytes) -> Parsed:
    mode = mode_for(content_type)
    if mode is Mode.BINARY:
        return Parsed(mode, [binary_event(headers, _json(body), media_type(content_type))])
    value = _json(body)
    if mode is Mode.STRUCTURED:
        return Parsed(mode, [value])
    if not isinstance(value, list):
        raise Problem(422, "Unprocessable Content", "A batch is a JSON array of CloudEvents.",
                      errors=[{"pointer": "/", "detail": "must be an array"}])
    if len(value) > MAX_BATCH_EVENTS:
        raise Problem(422, "Unprocessable Content", f"A batch holds at most {MAX_BATCH_EVENTS} events.",
                      errors=[{"pointer": "/", "detail": f"{len(value)} events"}])
    return Parsed(mode, value)


def binary_event(headers: Mapping[str, str], data: Any, content_type: str) -> dict[str, Any]:
    """Attributes from ``ce-*`` headers (percent-decoded, as the HTTP binding says)."""
    event: dict[str, Any] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered.startswith("ce-"):
            event[lowered[3:]] = unquote(value)
    missing = [a for a in _REQUIRED if a not in event]
    if missing:
        raise Problem(
            422, "Unprocessable Content", "Binary mode needs the ce-id, ce-source, ce-type and "
            "ce-specversion headers.",
            errors=[{"pointer": f"/headers/ce-{a}", "detail": "missing"} for a in missing],
        )
    event["datacontenttype"] = content_type
    event["data"] = data
    return event


def envelope_errors(raw: Any) -> list[dict[str, str]]:
    """What is wrong with a CloudEvents envelope, as field-level errors (values never echoed)."""
    if not isinstance(raw, dict):
        return [{"pointer": "/", "detail": "a CloudEvent must be a JSON object"}]
    errors: list[dict[str, str]] = []
    for attr in _REQUIRED:
        if attr not in raw:
            errors.append({"pointer": f"/{attr}", "detail": "required"})
    for attr in _STRING_ATTRIBUTES:
        if attr in raw and raw[attr] is not None and not isinstance(raw[attr], str):
            errors.append({"pointer": f"/{attr}", "detail": "must be a string"})
        elif attr in _REQUIRED and isinstance(raw.get(attr), str) and not raw[attr].strip():
            errors.append({"pointer": f"/{attr}", "detail": "must not be empty"})
        elif isinstance(raw.get(attr), str) and (len(raw[attr]) > MAX_ATTRIBUTE or "\x00" in raw[attr]):
            errors.append({"pointer": f"/{attr}", "detail": f"at most {MAX_ATTRIBUTE} characters, no NUL"})
    if isinstance(raw.get("specversion"), str) and raw["specversion"] != "1.0":
        errors.append({"pointer": "/specversion", "detail": "must be 1.0"})
    for name, value in raw.items():
        if name in _STRING_ATTRIBUTES or name == "data":
            continue
        if name == "data_base64":
            errors.append({"pointer": "/data_base64", "detail": "binary data is not accepted; send JSON data"})
        elif not _ATTRIBUTE_NAME.match(name):
            errors.append({"pointer": f"/{name}", "detail": "unknown attribute; extension names are "
                           "lower-case letters and digits, at most 20"})
        elif not isinstance(value, str | int | bool):
            errors.append({"pointer": f"/{name}", "detail": "an extension attribute must be a string, "
                           "integer or boolean"})
    return errors
