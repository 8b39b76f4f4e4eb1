"""PostgreSQL's side of intake's claims and settlements: the server's CPU, WAL and heap-only
updates per report, for groups of the size group commit makes under load.

    .venv/bin/python -m benchmarks.intake_store [--groups 60] [--size 300] [--prefill 20000]

On the local stack's PostgreSQL, a database of its own with intake's migrations and intake's
session settings (services/intake/main.py). ``--prefill`` reports are claimed and settled
first (the table is not empty in production), then ``--groups`` rounds: one claim statement
of ``--size`` reports (as the benchmark's 100-report batches, grouped: 1 to 8 requests a
statement) and their settlement with one audit row per 100 reports. The backend's CPU from
/proc (schedstat, ns), the client's from ``process_time``, WAL from ``pg_current_wal_lsn``,
heap-only (HOT) updates from ``pg_stat_user_tables``. Each figure is per report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from benchmarks.intake_steps import batch_body
from benchmarks.procs import schedstat
from services.intake import store
from services.intake.binding import parse
from services.intake.main import MIGRATIONS, SERVER_SETTINGS, _no_session_reset
from services.intake.validation import prepare
from shared.auth import Principal
from shared.db import create_pool, prepare_database
from tests.harness import drop_database, isolated_settings
from tests.infra import _local_stack


def _ran(pid: int) -> float:
    """Seconds the backend has run on a CPU."""
    return schedstat([pid])[0]


async def main(groups: int, size: int, prefill: int, fillfactor: int | None = None) -> None:
    body = batch_body("store")
    source = json.loads(body)[0]["source"]
    principal = Principal("k", "sample-ngo", frozenset({"events:write"}), frozenset({source}))
    prepared = prepare(parse("application/cloudevents-batch+json", {}, body).events, principal, b"k" * 32, batch=True)
    ciphertext = b"x" * 120  # a sealed identity's size: nonce, the identity's JSON, the tag

    def claims(tag: str, count: int) -> list[store.Claim]:
        out = []
        for n in range(count):
            p = prepared[n % len(prepared)]
            out.append(store.Claim(p.envelope.source, f"{tag}-{n}", p.incident_id, p.target_ref or "",
                                   p.kind.value, "sample-ngo", p.event_id, ciphertext))
        return out

    def audits(group: list[store.Claim]) -> list[store.Settlement]:
        out: list[store.Settlement] = []
        for i in range(0, len(group), 100):
            part = group[i:i + 100]
            out.append(([(c.source, c.report_id) for c in part], store.AuditRecord(
                action="post_events", status=202, outcome="accepted", key_id="k", partner="sample-ngo",
                mode="batch", report_ids=tuple(c.report_id for c in part), accepted=len(part))))
        return out

    infra = _local_stack()
    settings = await isolated_settings(infra.kafka_bootstrap, infra.database_url, log_level="WARNING")
    pool = await create_pool(settings.database_url, min_size=1, max_size=1, reset=_no_session_reset,
                             server_settings=SERVER_SETTINGS)
    try:
        await prepare_database(pool, "intake", MIGRATIONS)
        if fillfactor is not None:
            await pool.execute(f"ALTER TABLE intake_reports SET (fillfactor = {int(fillfactor)})")
        backend = await pool.fetchval("SELECT pg_backend_pid()")
        for start in range(0, prefill, size):
            group = claims(f"pre{start}", min(size, prefill - start))
            await store.claim(pool, group, "bench")
            await store.mark_accepted(pool, audits(group), "bench")
        await pool.execute("ANALYZE intake_reports")
        rounds = [claims(f"g{g}", size) for g in range(groups)]
        await store.claim(pool, claims("warm", size), "bench")  # plans cached
        await store.mark_accepted(pool, audits(claims("warm", size)), "bench")

        async def stats() -> tuple[int, int]:
            row = await pool.fetchrow("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                      "WHERE relname = 'intake_reports'")
            return row["n_tup_upd"], row["n_tup_hot_upd"]

        totals = {"claim": [0.0, 0.0, 0], "settle": [0.0, 0.0, 0]}  # server s, client s, WAL bytes
        upd0, hot0 = await stats()
        for group in rounds:
            for what, run in (("claim", lambda g=group: store.claim(pool, g, "bench")),
                              ("settle", lambda g=group: store.mark_accepted(pool, audits(g), "bench"))):
                lsn = await pool.fetchval("SELECT pg_current_wal_lsn()")
                server, client = _ran(backend), time.process_time()
                await run()
                totals[what][0] += _ran(backend) - server
                totals[what][1] += time.process_time() - client
                totals[what][2] += await pool.fetchval("SELECT pg_current_wal_lsn() - $1::pg_lsn", lsn)
        await asyncio.sleep(1.0)  # statistics are reported at the end of a transaction, lazily
        upd1, hot1 = await stats()
        pages = await pool.fetchval("SELECT pg_relation_size('intake_reports') / 8192")
        rows_total = await pool.fetchval("SELECT count(*) FROM intake_reports")
    finally:
        await pool.close()
        await drop_database(infra.database_url, settings)

    reports = groups * size
    print(f"\nintake's statements in PostgreSQL, per report ({groups} groups of {size}, {prefill} reports before)")
    print(f"load average: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(f"{'statement':<10} {'server µs':>10} {'client µs':>10} {'WAL bytes':>10}")
    for what, (server, client, wal) in totals.items():
        print(f"{what:<10} {server / reports * 1e6:>10.1f} {client / reports * 1e6:>10.1f} {wal / reports:>10.0f}")
    updated = max(upd1 - upd0, 1)
    print(f"heap-only updates: {(hot1 - hot0) / updated:.0%} of {upd1 - upd0}; "
          f"table {pages} pages for {rows_total} reports ({rows_total / max(pages, 1):.0f} a page)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=60)
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--prefill", type=int, default=20000)
    parser.add_argument("--fillfactor", type=int, default=None, help="intake_reports' fillfactor, for trying one")
    args = parser.parse_args()
    asyncio.run(main(args.groups, args.size, args.prefill, args.fillfactor))
