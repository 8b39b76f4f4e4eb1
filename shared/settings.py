"""Settings from the environment (prefix ``TNR_``). Secrets never come from the repository."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TNR_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:19092"
    database_url: str = "postgresql://tnrwatch@127.0.0.1:15432/tnrwatch"
    # Prefix for every topic name, so that test runs (and tenants) never share topics.
    topic_prefix: str = "tnrwatch"
    topic_partitions: int = 3
    topic_replication: int = 1

    # Keyed pseudonym of targets (HMAC) and the key-encryption key for identity data keys.
    # Both must be set in production; `make run` generates development values into .secrets/.
    pseudonym_key: SecretStr = Field(default=SecretStr(""))
    identity_master_key: SecretStr = Field(default=SecretStr(""))

    service_name: str = "tnrwatch"
    # Tells apart instances of one service (e.g. the classifier's transactional.id).
    instance_id: str = "0"
    # Classifier worker processes (1: classify in the service's event loop; 0: one per CPU, at
    # most 4). Processes pay off only with CPUs to spare beyond the broker's: see docs/classifier.md.
    classifier_workers: int = 1
    host: str = "127.0.0.1"
    port: int = 0
    log_level: str = "INFO"

    # Files the operators own.
    receivers_file: str = ""
    rules_file: str = ""

    # Intake limits.
    rate_limit_per_minute: int = 6000
    max_event_bytes: int = 1024 * 1024
    max_batch_bytes: int = 8 * 1024 * 1024
    kafka_request_timeout_ms: int = 5000
    # Intake keeps an authenticated key this long: a revoked key stops working within it.
    auth_cache_seconds: float = 5.0
    # Intake worker processes sharing the port (claims are in PostgreSQL, so duplicates stay
    # safe; rate limits and the key cache are per worker). See docs/intake.md.
    intake_workers: int = 1

    # Rule states the alerts service keeps decoded in memory (about 7 KB resident each, with their
    # rows), filled from the table at start-up: at least the keys with state (targets and
    # places) for the handler's full rate. See docs/alerts.md.
    alerts_state_cache: int = 150_000

    # Readers without incidents:read see stats with cells under k suppressed.
    stats_k: int = 3


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
