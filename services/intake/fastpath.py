"""The common case of a report, accepted in plain Python. Pure: no I/O.

The full models (``models.IncidentReport`` and the envelope checks of ``binding``) stay the
definition of what is valid and of every error message. This module only *accepts*: a report
written the plain way (exact JSON types, canonical ``YYYY-MM-DD`` dates, known vocabulary, no
unknown field) is checked here field by field and its facts built straight as the JSON the
full model would dump. Anything else (an error, a float where an int goes, an unusual date
form, a missing piece) gives ``None`` and goes through the full models, which then name the
field. ``tests/intake/test_fastpath.py`` checks on random reports (hypothesis) that whatever
this accepts the full models accept with the same facts, identity and ids.

Why: pydantic's models built eight objects and called back into Python for every date,
country and precision check, then dumped the facts again: ~40 % of intake's CPU in batch mode.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from services.intake.models import MAX_TEXT, PlainIdentity
from shared.events import _alpha_2_codes
from shared.vocabulary import (
    Actor,
    ActStatus,
    ActType,
    DatePrecision,
    Outcome,
    Reliability,
    StatusAbroad,
    TargetGroup,
)

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_PARTIAL = re.compile(r"([0-9]{4})(?:-([0-9]{2}))?(?:-([0-9]{2}))?\Z")
_PARTS_NEEDED = {"year": 1, "month": 2, "day": 3}

_ACT_TYPES = frozenset(v.value for v in ActType)
_ACTORS = frozenset(v.value for v in Actor)
_ACT_STATUSES = frozenset(v.value for v in ActStatus)
_GROUPS = frozenset(v.value for v in TargetGroup)
_STATUSES_ABROAD = frozenset(v.value for v in StatusAbroad)
_OUTCOMES = frozenset(v.value for v in Outcome)
_RELIABILITY = frozenset(v.value for v in Reliability)
_PRECISIONS = frozenset(v.value for v in DatePrecision)

_REPORT_FIELDS = frozenset({"occurred_on", "date_precision", "location", "target", "acts", "outcome",
                            "next_hearing_on", "narrative", "sources"})
_LOCATION_FIELDS = frozenset({"country", "city"})
_TARGET_FIELDS = frozenset({"group", "nationality", "status_abroad", "identity"})
_IDENTITY_FIELDS = frozenset({"name", "name_zh", "birth_date"})
_ACT_FIELDS = frozenset({"type", "on", "actor", "status"})
_SOURCE_FIELDS = frozenset({"url", "reliability", "credibility"})
_NARRATIVE_FIELDS = frozenset({"text", "lang"})
_MAX_NAME = 500


_ENVELOPE_TEXT = ("id", "source", "type")
_ENVELOPE_OPTIONAL = ("subject", "datacontenttype", "dataschema", "time")
_ENVELOPE_ATTRIBUTES = frozenset({"specversion", *_ENVELOPE_TEXT, *_ENVELOPE_OPTIONAL, "data"})
_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}\Z")
_MAX_ATTRIBUTE = 500


class NotPlain(Exception):
    """Not the plain case: the full models decide (and name the field if it is an error)."""


# Texts already checked as calendar dates (True) or not (False). A batch repeats its dates
# (the acts' days, occurrence dates), and all the dates of a century are ~37,000: the regex
# and ``fromisoformat`` ran ~5 times a report. Birth dates are not kept here (identity).
_CHECKED_DAYS: dict[str, bool] = {}
_CHECKED_PERIODS: dict[tuple[str, str], str | None] = {}
_MAX_CHECKED = 50_000


def _is_day(value: str) -> bool:
    if _DATE.match(value) is None:
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _day(value: Any, latest: str | None) -> str:
    """A canonical ``YYYY-MM-DD`` date (returned as it is: the model dumps the same text), not
    after ``latest`` (the same form: such dates compare as their text does)."""
    if type(value) is not str:
        raise NotPlain
    valid = _CHECKED_DAYS.get(value)
    if valid is None:
        if len(_CHECKED_DAYS) >= _MAX_CHECKED:
            _CHECKED_DAYS.clear()
        valid = _CHECKED_DAYS[value] = _is_day(value)
    if not valid or (latest is not None and value > latest):
        raise NotPlain
    return value


def _birth_day(value: Any, latest: str) -> date:
    """A birth date, checked as :func:`_day` checks a date but never remembered."""
    if type(value) is not str or not _is_day(value) or value > latest:
        raise NotPlain
    return date.fromisoformat(value)


def _optional_text(value: Any) -> str | None:
    if value is not None and type(value) is not str:
        raise NotPlain
    return value


def _period_start(value: str, precision: str) -> str | None:
    """The first day of the period, ``YYYY-MM-DD``; None: not the plain case."""
    match = _PARTIAL.match(value)
    if match is None:
        return None
    year, month, day = match.groups()
    if 1 + (month is not None) + (day is not None) < _PARTS_NEEDED[precision]:
        return None
    try:
        full = date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return None
    if precision == "year":
        full = full.replace(month=1, day=1)
    elif precision == "month":
        full = full.replace(day=1)
    return full.isoformat()


def _occurred_on(value: Any, precision: Any, latest: str) -> str:
    """As ``models._period_start`` and then the date field: the first day of its period, not
    after ``latest`` (today, ``YYYY-MM-DD``: years have four digits, so the texts compare as
    the dates do)."""
    if type(value) is not str or type(precision) is not str or precision not in _PRECISIONS:
        raise NotPlain
    start = _CHECKED_PERIODS.get((value, precision), "")
    if start == "":
        if len(_CHECKED_PERIODS) >= _MAX_CHECKED:
            _CHECKED_PERIODS.clear()
        start = _CHECKED_PERIODS[(value, precision)] = _period_start(value, precision)
    if start is None or start > latest:
        raise NotPlain
    return start


def _location(value: Any) -> dict[str, Any]:
    if type(value) is not dict or not value.keys() <= _LOCATION_FIELDS:
        raise NotPlain
    country = value.get("country")
    if type(country) is not str or country not in _alpha_2_codes():
        raise NotPlain
    return {"country": country, "city": _optional_text(value.get("city"))}


def _identity(value: Any, latest: str) -> PlainIdentity | None:
    if value is None:
        return None
    if type(value) is not dict or not value.keys() <= _IDENTITY_FIELDS:
        raise NotPlain
    name = _optional_text(value.get("name"))
    name_zh = _optional_text(value.get("name_zh"))
    if (name is not None and len(name) > _MAX_NAME) or (name_zh is not None and len(name_zh) > _MAX_NAME):
        raise NotPlain
    birth = value.get("birth_date")
    return PlainIdentity(name, name_zh, None if birth is None else _birth_day(birth, latest))


def _target(value: Any, latest: str) -> tuple[dict[str, Any], PlainIdentity | None]:
    if value is None:
        raise NotPlain
    if type(value) is not dict or not value.keys() <= _TARGET_FIELDS:
        raise NotPlain
    group = value.get("group", "unknown")
    status_abroad = value.get("status_abroad", "unknown")
    nationality = value.get("nationality")
    if type(group) is not str or group not in _GROUPS:
        raise NotPlain
    if type(status_abroad) is not str or status_abroad not in _STATUSES_ABROAD:
        raise NotPlain
    if nationality is not None and (type(nationality) is not str or nationality not in _alpha_2_codes()):
        raise NotPlain
    profile = {"group": group, "nationality": nationality, "status_abroad": status_abroad}
    return profile, _identity(value.get("identity"), latest)


def _act(value: Any, latest: str) -> dict[str, Any]:
    if type(value) is not dict or not value.keys() <= _ACT_FIELDS:
        raise NotPlain
    kind = value.get("type")
    actor = value.get("actor", "unknown")
    status = value.get("status", "unknown")
    if type(kind) is not str or kind not in _ACT_TYPES:
        raise NotPlain
    if type(actor) is not str or actor not in _ACTORS:
        raise NotPlain
    if type(status) is not str or status not in _ACT_STATUSES:
        raise NotPlain
    on = value.get("on")
    return {"type": kind, "on": None if on is None else _day(on, latest),
            "actor": actor, "status": status}


def _source(value: Any) -> dict[str, Any]:
    if type(value) is not dict or not value.keys() <= _SOURCE_FIELDS:
        raise NotPlain
    url = value.get("url")
    reliability = value.get("reliability")
    credibility = value.get("credibility")
    if type(url) is not str:
        raise NotPlain
    if reliability is not None and (type(reliability) is not str or reliability not in _RELIABILITY):
        raise NotPlain
    if credibility is not None and (type(credibility) is not int or not 1 <= credibility <= 6):
        raise NotPlain
    return {"url": url, "reliability": reliability, "credibility": credibility}


def _narrative(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if type(value) is not dict or not value.keys() <= _NARRATIVE_FIELDS:
        raise NotPlain
    text = value.get("text")
    if type(text) is not str or len(text) > MAX_TEXT:
        raise NotPlain
    return {"text": text, "lang": _optional_text(value.get("lang"))}


def plain_report(data: Any, today: date) -> tuple[dict[str, Any], PlainIdentity | None] | None:
    """(the facts as ``IncidentReport.facts_json()`` gives them, the identity as the model
    holds it) for a report written the plain way; ``None``: let the full model decide."""
    try:
        if type(data) is not dict or not data.keys() <= _REPORT_FIELDS:
            return None
        latest = today.isoformat()  # no date but next_hearing_on may be after it
        occurred_on = _occurred_on(data.get("occurred_on"), data.get("date_precision"), latest)
        location = _location(data.get("location"))
        profile, identity = _target(data["target"], latest) if "target" in data else (
            {"group": "unknown", "nationality": None, "status_abroad": "unknown"}, None)
        acts = data.get("acts", [])
        sources = data.get("sources", [])
        if type(acts) is not list or type(sources) is not list:
            return None
        outcome = data.get("outcome", "unknown")
        if type(outcome) is not str or outcome not in _OUTCOMES:
            return None
        hearing = data.get("next_hearing_on")
        facts = {
            "occurred_on": occurred_on,
            "date_precision": data["date_precision"],
            "location": location,
            "target": profile,
            "acts": [_act(a, latest) for a in acts],
            "outcome": outcome,
            "next_hearing_on": None if hearing is None else _day(hearing, None),
            "narrative": _narrative(data.get("narrative")),
            "sources": [_source(s) for s in sources],
        }
    except NotPlain:
        return None
    return facts, identity


def plain_envelope(raw: Any) -> bool:
    """True when ``binding.envelope_errors`` finds nothing, checked the short way (False: ask
    it). Extension attributes: names of lower-case letters and digits, plain values."""
    if type(raw) is not dict or raw.get("specversion") != "1.0":
        return False
    # Each text at most 500 characters, no NUL (binding.envelope_errors), checked inline.
    for attr in _ENVELOPE_TEXT:
        value = raw.get(attr)
        if type(value) is not str or not value.strip() or len(value) > _MAX_ATTRIBUTE or "\x00" in value:
            return False
    for attr in _ENVELOPE_OPTIONAL:
        value = raw.get(attr)
        if value is not None and (type(value) is not str or len(value) > _MAX_ATTRIBUTE or "\x00" in value):
            return False
    if not raw.keys() <= _ENVELOPE_ATTRIBUTES:
        for name, value in raw.items():
            if name in _ENVELOPE_ATTRIBUTES:
                continue
            if _EXTENSION_NAME.match(name) is None or type(value) not in (str, int, bool):
                return False
    return True
