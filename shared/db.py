"""PostgreSQL plumbing: the connection pool and versioned SQL migrations.

Each component keeps its migrations as ``NNN_description.sql`` files in a ``migrations``
folder beside its code; they are applied in order at start-up, each once, under an advisory
lock so that services starting together do not race.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import asyncpg

_MIGRATION = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_LOCK_ID = 0x746E72  # "tnr"


# Each execution planned for its own arguments. With PostgreSQL's default ("auto") a prepared
# statement switches to a generic plan after five runs if that looks no dearer, and the
# connection keeps it: on a new or emptied table (a fresh deployment, a replay) that plan is
# a sequential scan, and it stays one as the table grows. Measured at 200 reports/s on a new
# database: the alerts service's three look-ups by `= ANY($1)` took 2.8-4.0 ms a call; with
# custom plans they left the top of pg_stat_statements, and PostgreSQL's CPU per report fell
# 2.09 -> 1.71 ms. Intake sets its own (generic plans that can only probe keys).
DEFAULT_SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, **options: Any
) -> asyncpg.Pool:
    """``options`` go to :func:`asyncpg.create_pool` (e.g. ``reset``); ``server_settings``
    given there override the defaults below."""
    server_settings = {**DEFAULT_SERVER_SETTINGS, **options.pop("server_settings", {})}
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection,
        server_settings=server_settings, **options,
    )
    assert pool is not None
    return pool


def migration_files(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _MIGRATION.match(path.name)
        if not match:
            raise ValueError(f"migration file name must look like 001_name.sql: {path}")
        found.append((int(match.group(1)), path))
    versions = [v for v, _ in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {folder}")
    return found


async def apply_migrations(pool: asyncpg.Pool, component: str, folder: Path) -> list[int]:
    """Apply the component's pending migrations; returns the versions applied now."""
    applied_now: list[int] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       component text NOT NULL,
                       version integer NOT NULL,
                       name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now(),
                       PRIMARY KEY (component, version))"""
            )
            done = {
                r["version"]
                for r in await conn.fetch(
                    "SELECT version FROM schema_migrations WHERE component = $1", component
                )
            }
            for version, path in migration_files(folder):
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute(
                        "INSERT INTO schema_migrations (component, version, name) VALUES ($1, $2, $3)",
                        component,
                        version,
                        path.name,
                    )
                applied_now.append(version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return applied_now


SHARED_MIGRATIONS = Path(__file__).parent / "migrations"


async def prepare_database(pool: asyncpg.Pool, component: str, folder: Path) -> None:
    """Shared tables (keys, offsets) first, then the component's own."""
    await apply_migrations(pool, "shared", SHARED_MIGRATIONS)
    await apply_migrations(pool, component, folder)
