"""The partner's incident report as posted (partner-contract.md §1), with the identity."""

from __future__ import annotations

from datetime import date

from pydantic import field_validator

from shared.events import IncidentFacts, StrictModel, TargetProfile


class Identity(StrictModel):
    """Personal data: it never leaves intake in clear."""

    name: str | None = None
    name_zh: str | None = None
    birth_date: date | None = None


class ReportedTarget(TargetProfile):
    identity: Identity | None = None

    def profile(self) -> TargetProfile:
        return TargetProfile(group=self.group, nationality=self.nationality, status_abroad=self.status_abroad)


class IncidentReport(IncidentFacts):
    target: ReportedTarget = ReportedTarget()

    @field_validator("acts")
    @classmethod
    def _no_future_acts(cls, acts: list) -> list:  # type: ignore[type-arg]
        today = date.today()
        for index, act in enumerate(acts):
            if act.on is not None and act.on > today:
                raise ValueError(f"acts[{index}].on is in the future")
        return acts

    def pseudonymised(self) -> IncidentFacts:
        """The report without identity: what may travel on the log."""
        data = self.model_dump()
        data["target"] = self.target.profile().model_dump()
        return IncidentFacts.model_validate(data)


class RetractionData(StrictModel):
    reason: str
