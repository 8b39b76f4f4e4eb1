"""Where notifications go: the receivers file (``TNR_RECEIVERS_FILE``), parsed and validated at
start-up. Pure apart from reading the file and the environment (secrets come only from there).

Every alert change is also published on the alerts topic through the same outbox, under the
built-in receiver ``KAFKA_RECEIVER``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from services.alerts.lifecycle import SEVERITY_RANK
from shared.events import AlertSeverity

KAFKA_RECEIVER = "kafka:alerts"


class ReceiversError(ValueError):
    pass


@dataclass(frozen=True)
class Backoff:
    initial_seconds: float = 1.0
    max_seconds: float = 300.0
    timeout_seconds: float = 10.0

    def delay(self, attempts: int) -> float:
        """Exponential: initial, 2x, 4x, ... capped at max (a receiver back after an hour
        waits at most ``max_seconds`` for its backlog)."""
        return float(min(self.max_seconds, self.initial_seconds * (2 ** max(0, attempts - 1))))


@dataclass(frozen=True)
class Receiver:
    name: str
    type: Literal["webhook", "email"]
    min_severity: AlertSeverity = AlertSeverity.INFO
    rules: frozenset[str] = frozenset()  # empty: every rule
    # webhook
    url: str = ""
    bearer_token_env: str | None = None
    # email
    host: str = ""
    port: int = 25
    starttls: bool = False
    username_env: str | None = None
    password_env: str | None = None
    sender: str = ""
    to: tuple[str, ...] = ()

    def wants(self, rule: str, severity: AlertSeverity) -> bool:
        if self.rules and rule not in self.rules:
            return False
        return SEVERITY_RANK[severity] >= SEVERITY_RANK[self.min_severity]

    def secret(self, env_name: str | None) -> str | None:
        return os.environ.get(env_name) if env_name else None


@dataclass(frozen=True)
class ReceiversConfig:
    receivers: tuple[Receiver, ...] = ()
    backoff: Backoff = field(default_factory=Backoff)
    external_url: str = "http://127.0.0.1:8083"

    def by_name(self, name: str) -> Receiver | None:
        return next((r for r in self.receivers if r.name == name), None)


def parse_receivers(raw: Any, source: str = "<receivers>") -> ReceiversConfig:
    problems: list[str] = []
    if raw is None:
        return ReceiversConfig()
    if not isinstance(raw, dict):
        raise ReceiversError(f"{source}: must be a mapping with 'receivers'")
    delivery = raw.get("delivery") or {}
    try:
        backoff = Backoff(
            initial_seconds=float(delivery.get("backoff_initial_seconds", 1.0)),
            max_seconds=float(delivery.get("backoff_max_seconds", 300.0)),
            timeout_seconds=float(delivery.get("timeout_seconds", 10.0)),
        )
    except (TypeError, ValueError):
        problems.append("delivery: backoff_initial_seconds, backoff_max_seconds, timeout_seconds must be numbers")
        backoff = Backoff()
    receivers: list[Receiver] = []
    names: set[str] = set()
    for i, item in enumerate(raw.get("receivers") or []):
        where = f"receivers[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a mapping")
            continue
        name = item.get("name")
        kind = item.get("type")
        if not isinstance(name, str) or not name or name == KAFKA_RECEIVER:
            problems.append(f"{where}.name: required, and not {KAFKA_RECEIVER!r}")
            continue
        if name in names:
            problems.append(f"{where}.name: duplicate {name!r}")
        names.add(name)
        severity = item.get("min_severity", "info")
        if severity not in {s.value for s in AlertSeverity}:
            problems.append(f"{where}.min_severity: unknown severity {severity!r}")
            severity = "info"
        common: dict[str, Any] = {
            "name": name,
            "min_severity": AlertSeverity(severity),
            "rules": frozenset(item.get("rules") or []),
        }
        if kind == "webhook":
            url = item.get("url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                problems.append(f"{where}.url: an http(s) URL is required")
                continue
            receivers.append(Receiver(type="webhook", url=url, bearer_token_env=item.get("bearer_token_env"), **common))
        elif kind == "email":
            to = item.get("to")
            to_list = [to] if isinstance(to, str) else to
            if not item.get("host") or not item.get("from") or not isinstance(to_list, list) or not to_list:
                problems.append(f"{where}: an email receiver needs host, from and to")
                continue
            receivers.append(
                Receiver(
                    type="email",
                    host=str(item["host"]),
                    port=int(item.get("port", 25)),
                    starttls=bool(item.get("starttls", False)),
                    username_env=item.get("username_env"),
                    password_env=item.get("password_env"),
                    sender=str(item["from"]),
                    to=tuple(str(t) for t in to_list),
                    **common,
                )
            )
        else:
            problems.append(f"{where}.type: must be 'webhook' or 'email', got {kind!r}")
    if problems:
        raise ReceiversError(f"invalid receivers in {source}:\n" + "\n".join(f"  - {p}" for p in problems))
    return ReceiversConfig(
        receivers=tuple(receivers),
        backoff=backoff,
        external_url=str(raw.get("external_url", "http://127.0.0.1:8083")),
    )


def load_receivers(path: str | None) -> ReceiversConfig:
    if not path:
        return ReceiversConfig()
    try:
        text = Path(path).read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise ReceiversError(f"cannot read receivers file {path}: {exc}") from exc
    return parse_receivers(raw, path)
