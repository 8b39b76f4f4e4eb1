"""Intake's statements run on cached generic plans (``main.SERVER_SETTINGS``): each is planned
once per connection, on whatever the tables held then. A plan made on an empty table must
still find reports by their keys once the table has grown, not read all of it: counted as the
rows PostgreSQL read from ``intake_reports`` in the transaction (``pg_stat_xact_user_tables``)."""

from __future__ import annotations

import asyncpg

from services.intake import store
from services.intake.main import MIGRATIONS, SERVER_SETTINGS
from shared.db import create_pool, prepare_database
from tests.harness import drop_database
from tests.infra import Infra

from .conftest import make_settings

TABLE_ROWS = 20_000
KEYS = 200
SOURCE = "urn:partner:plans"


async def _rows_read(conn: asyncpg.Connection) -> int:
    row = await conn.fetchrow(
        "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) AS n "
        "FROM pg_stat_xact_user_tables WHERE relname = 'intake_reports'"
    )
    return int(row["n"]) if row else 0


def _claims(tag: str, count: int) -> list[store.Claim]:
    return [store.Claim(SOURCE, f"{tag}-{n}", f"inc-{tag}-{n}", f"target-{tag}-{n}",
                        "org.tnrwatch.incident.reported.v1", "plans", f"ev-{tag}-{n}", b"sealed", b"key")
            for n in range(count)]


async def _every_statement(conn: asyncpg.Connection, tag: str, count: int) -> None:
    claims = _claims(tag, count)
    keys = [(c.source, c.report_id) for c in claims]
    await store.claim(conn, claims, "me")
    await store.existing(conn, keys)
    await store.keep_identities(conn, [(k, b"again") for k in keys], "me")
    await store.take_over(conn, keys, "other", 0.0)
    await store.release(conn, keys[: count // 2], "other")
    await store.mark_accepted(conn, [(keys[count // 2:], store.AuditRecord("post", 202, "accepted"))], "other")
    await store.claim(conn, claims, "me")  # duplicates this time


async def test_statements_planned_on_an_empty_table_read_only_the_reports_asked_for(infra: Infra) -> None:
    settings = await make_settings(infra)
    try:
        pool = await create_pool(settings.database_url, max_size=1, server_settings=SERVER_SETTINGS)
        try:
            await prepare_database(pool, "intake", MIGRATIONS)
            async with pool.acquire() as conn:
                await conn.execute("ANALYZE intake_reports; ANALYZE intake_target_keys")
                await _every_statement(conn, "first", 1)  # the plans are made now, on an empty table
                await conn.execute(
                    """INSERT INTO intake_reports (source, report_id, incident_id, target_ref, event_type, partner)
                       SELECT $1, 'old-' || g, 'inc-' || g, 'target-' || g, 'e', 'plans'
                         FROM generate_series(1, $2::int) g""",
                    SOURCE, TABLE_ROWS,
                )
                async with conn.transaction():
                    before = await _rows_read(conn)
                    await _every_statement(conn, "later", KEYS)
                    read = await _rows_read(conn) - before
            # Seven statements, each probing its keys: a few reads a key, never the table.
            assert read < 20 * KEYS < TABLE_ROWS, read
        finally:
            await pool.close()
    finally:
        await drop_database(infra.database_url, settings)
