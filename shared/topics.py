"""Topic names and settings. The incidents topic is the log of record: kept forever.

Local and test runs use replication 1; production settings are in ``PRODUCTION`` (also written
down in deploy/README.md): replication 3, ``min.insync.replicas=2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Topics:
    prefix: str

    @property
    def incidents(self) -> str:
        """The log of record: pseudonymised reports, keyed by ``target_ref``."""
        return f"{self.prefix}.incidents.v1"

    @property
    def classifications(self) -> str:
        return f"{self.prefix}.classifications.v1"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}.alerts.v1"

    def dead_letter(self, consumer: str) -> str:
        return f"{self.prefix}.dlq.{consumer}.v1"

    def specs(self, partitions: int) -> list[TopicSpec]:
        forever = {"retention.ms": "-1", "cleanup.policy": "delete"}
        derived = {"retention.ms": str(90 * 24 * 3600 * 1000)}
        dead = {"retention.ms": "-1"}
        return [
            TopicSpec(self.incidents, partitions, forever),
            TopicSpec(self.classifications, partitions, forever),
            TopicSpec(self.alerts, partitions, derived),
            *(
                TopicSpec(self.dead_letter(c), 1, dead)
                for c in ("classifier", "alerts", "projections")
            ),
        ]


# What production brokers must have on top of the specs above.
PRODUCTION = {
    "replication.factor": "3",
    "min.insync.replicas": "2",
    "unclean.leader.election.enable": "false",
}
