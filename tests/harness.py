"""Running tnrwatch's services for tests: in-process (fast, traceable) or as real processes
(for kill -9 and restart tests). Both talk to the real broker and database."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from aiokafka.admin import AIOKafkaAdminClient
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from shared.auth import create_key
from shared.db import SHARED_MIGRATIONS, apply_migrations, create_pool
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


async def isolated_settings(kafka_bootstrap: str, admin_url: str, **overrides: Any) -> Settings:
    """Settings with a database and a topic prefix of their own: runs never share state."""
    token = secrets.token_hex(4)
    database = f"tnr_test_{token}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    values: dict[str, Any] = {
        "kafka_bootstrap": kafka_bootstrap,
        "database_url": with_database(admin_url, database),
        "topic_prefix": f"test-{token}",
        "pseudonym_key": secrets.token_hex(32),
        "identity_master_key": secrets.token_hex(32),
        "log_level": "INFO",
    }
    values.update(overrides)
    return Settings(**values)


async def drop_database(admin_url: str, settings: Settings) -> None:
    """Drop the run's database and its topics (the log keeps forever: a dev broker would fill)."""
    database = urlsplit(settings.database_url).path.lstrip("/")
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()
    await drop_topics(settings)


async def drop_topics(settings: Settings) -> None:
    """The run's topics (its prefix): the log keeps forever, and a dev broker would fill."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix + ".")]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()


def settings_env(settings: Settings) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"TNR_{name.upper()}"] = str(value)
    return env


async def issue_key(
    settings: Settings, *, partner: str, sources: list[str], scopes: list[str]
) -> str:
    """A partner API key, made as `tnrwatch keys create` makes it."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        await apply_migrations(pool, "shared", SHARED_MIGRATIONS)
        async with pool.acquire() as conn:
            issued = await create_key(conn, partner=partner, sources=sources, scopes=scopes)
    finally:
        await pool.close()
    return issued.api_key


@asynccontextmanager
async def in_process(app: FastAPI, base_url: str = "http://service") -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app, startup_timeout=90, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url, timeout=30) as client:
            yield client


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"
) -> T:
    """Poll until ``probe`` returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    """A service as a real OS process, for kill -9 and restart tests."""

    module: str
    settings: Settings
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, **settings_env(self.settings), "TNR_PORT": str(self.port)}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )

    async def wait_ready(self, timeout: float = 90.0) -> None:
        async def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.module} exited: {self.log_path.read_text()[-3000:]}")
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(self.url + "/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(ready, timeout=timeout, what=f"{self.module} ready")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait(10)
        return self.process.returncode
