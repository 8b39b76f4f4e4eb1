"""Where the tests' real Kafka and PostgreSQL come from.

With a Docker engine: testcontainers. Without one: the broker and database that
``deploy/local/stack.sh`` started (``make test`` starts them). Never a fake: if neither is
there, the run stops with an error instead of skipping tests.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Infra:
    kafka_bootstrap: str
    database_url: str  # a role that may create databases
    origin: str


def _docker_engine_answers() -> bool:
    if os.environ.get("TNR_TEST_INFRA") == "local":
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _local_stack() -> Infra:
    values = {k: v for k, v in os.environ.items() if k.startswith("TNR_")}
    env_file = ROOT / ".run" / "stack.env"
    if ("TNR_KAFKA_BOOTSTRAP" not in values or "TNR_DATABASE_URL" not in values) and env_file.exists():
        for line in env_file.read_text().splitlines():
            name, _, value = line.partition("=")
            values.setdefault(name.strip(), value.strip().strip('"'))
    try:
        return Infra(values["TNR_KAFKA_BOOTSTRAP"], values["TNR_DATABASE_URL"], "local stack")
    except KeyError as exc:
        raise RuntimeError(
            "No Docker engine and no local stack: run `make test` (it starts Kafka and "
            "PostgreSQL with deploy/local/stack.sh) or `bash deploy/local/stack.sh up`."
        ) from exc


def start_infra(stack: ExitStack) -> Infra:
    if not _docker_engine_answers():
        return _local_stack()
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    kafka = (
        KafkaContainer("confluentinc/cp-kafka:7.6.1")
        .with_kraft()
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    )
    postgres = PostgresContainer("postgres:15", username="tnrwatch", password="tnrwatch", dbname="tnrwatch")
    stack.enter_context(kafka)
    stack.enter_context(postgres)
    dsn = postgres.get_connection_url().replace("postgresql+psycopg2://", "postgresql://")
    return Infra(kafka.get_bootstrap_server(), dsn, "testcontainers")
