"""The partner's report as posted (partner-contract.md §1), with the identity. Pure: no I/O.

Every model refuses unknown fields (a typo must not silently drop an act) and every error
message names the field, never the value: values may be personal data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson
from pydantic import Field, field_validator, model_validator

from shared.events import Act, IncidentFacts, StrictModel, TargetProfile, _iso_country
from shared.vocabulary import DatePrecision

_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?$")
_PARTS_NEEDED = {"year": 1, "month": 2, "day": 3}
_PRECISIONS = frozenset(p.value for p in DatePrecision)
MAX_TEXT = 200_000  # a narrative longer than this is not a report


def today() -> date:
    return date.today()


class Identity(StrictModel):
    """Personal data: it never leaves intake in clear."""

    name: str | None = Field(default=None, max_length=500)
    name_zh: str | None = Field(default=None, max_length=500)
    birth_date: date | None = None

    @field_validator("birth_date")
    @classmethod
    def _birth_not_future(cls, value: date | None) -> date | None:
        if value is not None and value > today():
            raise ValueError("birth_date is in the future")
        return value

    def names_somebody(self) -> bool:
        return bool((self.name and self.name.strip()) or (self.name_zh and self.name_zh.strip()))


@dataclass(frozen=True, slots=True)
class PlainIdentity:
    """An :class:`Identity` whose fields were checked as the model checks them (intake's fast
    path): the same fields and answers, without the model's ~5 µs of construction."""

    name: str | None = None
    name_zh: str | None = None
    birth_date: date | None = None

    def names_somebody(self) -> bool:
        return bool((self.name and self.name.strip()) or (self.name_zh and self.name_zh.strip()))

    def model_dump_json(self, *, exclude_none: bool = True) -> str:
        """``Identity.model_dump_json(exclude_none=True)``'s fields (what is sealed)."""
        fields = {"name": self.name, "name_zh": self.name_zh,
                  "birth_date": None if self.birth_date is None else self.birth_date.isoformat()}
        return orjson.dumps({k: v for k, v in fields.items() if v is not None}).decode()


AnyIdentity = Identity | PlainIdentity


class ReportedTarget(TargetProfile):
    identity: Identity | None = None

    @field_validator("nationality")
    @classmethod
    def _nationality(cls, value: str | None) -> str | None:
        return None if value is None else _iso_country(value)

    def profile(self) -> TargetProfile:
        return TargetProfile(group=self.group, nationality=self.nationality, status_abroad=self.status_abroad)


def _period_start(value: object, precision: object) -> object:
    """``occurred_on`` as the first day of its period: "2021", "2021-07" or "2021-07-19".

    A date never claims more precision than ``date_precision`` gives it (a month-precise date
    becomes the 1st of the month), and a coarser date than the stated precision is refused.
    """
    if not isinstance(value, str) or not isinstance(precision, str) or precision not in _PRECISIONS:
        return value  # the field validators report the type error
    match = _PARTIAL_DATE.match(value)
    if match is None:
        return value
    year, month, day = match.groups()
    needs = _PARTS_NEEDED[str(precision)]
    given = 1 + (month is not None) + (day is not None)
    if given < needs:
        raise ValueError(f"occurred_on must give at least the {precision} (date_precision)")
    try:
        full = date(int(year), int(month or 1), int(day or 1))
    except ValueError as exc:
        raise ValueError("occurred_on is not a valid date") from exc
    if precision == "year":
        full = full.replace(month=1, day=1)
    elif precision == "month":
        full = full.replace(day=1)
    return full.isoformat()


class IncidentReport(IncidentFacts):
    """``data`` of ``incident.reported`` / ``incident.amended``."""

    target: ReportedTarget = ReportedTarget()

    @model_validator(mode="before")
    @classmethod
    def _honour_precision(cls, data: Any) -> Any:
        if isinstance(data, dict) and "occurred_on" in data:
            data = {**data, "occurred_on": _period_start(data["occurred_on"], data.get("date_precision"))}
        return data

    @field_validator("occurred_on")
    @classmethod
    def _occurred_not_future(cls, value: date) -> date:
        if value > today():
            raise ValueError("occurred_on is in the future")
        return value

    @field_validator("acts")
    @classmethod
    def _no_future_acts(cls, acts: list[Act]) -> list[Act]:
        now = today()
        for index, act in enumerate(acts):
            if act.on is not None and act.on > now:
                raise ValueError(f"acts[{index}].on is in the future")
        return acts

    @field_validator("narrative")
    @classmethod
    def _narrative_size(cls, value: Any) -> Any:
        if value is not None and len(value.text) > MAX_TEXT:
            raise ValueError(f"narrative.text is longer than {MAX_TEXT} characters")
        return value

    def facts_json(self) -> dict[str, Any]:
        """The JSON form of :meth:`pseudonymised` (the same fields), without re-validation."""
        return self.model_dump(mode="json", exclude={"target": {"identity"}})

    def pseudonymised(self) -> IncidentFacts:
        """The report without identity: what may travel on the log."""
        data = self.model_dump()
        data["target"] = self.target.profile().model_dump()
        return IncidentFacts.model_validate(data)


class RetractionData(StrictModel):
    reason: str = Field(min_length=1, max_length=10_000)


class ErasureRequest(StrictModel):
    """``data`` of ``subject.erasure-requested``: a ``target_ref``, or the identity fields
    (top level or under ``identity``) from which intake derives it."""

    target_ref: str | None = Field(default=None, pattern=r"^tr_[a-z2-7]{1,64}$")
    name: str | None = Field(default=None, max_length=500)
    name_zh: str | None = Field(default=None, max_length=500)
    birth_date: date | None = None
    identity: Identity | None = None

    @model_validator(mode="after")
    def _one_way_to_name_the_target(self) -> ErasureRequest:
        flat = any(v is not None for v in (self.name, self.name_zh, self.birth_date))
        ways = (self.target_ref is not None) + flat + (self.identity is not None)
        if ways != 1:
            raise ValueError("give exactly one of: target_ref, the identity fields, identity")
        identity = self.as_identity()
        if identity is not None and not identity.names_somebody():
            raise ValueError("the identity fields name nobody (name or name_zh is required)")
        return self

    def as_identity(self) -> Identity | None:
        if self.identity is not None:
            return self.identity
        if self.target_ref is not None:
            return None
        return Identity(name=self.name, name_zh=self.name_zh, birth_date=self.birth_date)
