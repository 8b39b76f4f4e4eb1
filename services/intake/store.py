"""Intake's SQL: claims (the durable idempotency store), target data keys, sealed identities,
the audit log. Each function is one round trip unless it says otherwise."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import orjson


class Claim(NamedTuple):
    """One report to claim (a tuple: ~1 µs to make against ~5 for a frozen dataclass; one per
    report posted)."""

    source: str
    report_id: str
    incident_id: str | None
    target_ref: str
    event_type: str
    partner: str
    event_id: str
    identity_ciphertext: bytes | None
    # A freshly wrapped data key for the target (not in this process's cache): stored by the
    # claim's statement when the target has none yet; the identity was sealed under it.
    wrapped_key: bytes | None = None


@dataclass(frozen=True)
class Existing:
    source: str
    report_id: str
    incident_id: str | None
    status: str
    claimed_by: str | None
    claimed_at: datetime


@dataclass(frozen=True)
class TargetKey:
    target_ref: str
    wrapped_key: bytes | None  # None: erased

    @property
    def erased(self) -> bool:
        return self.wrapped_key is None


async def latest_target_refs(pool: asyncpg.Pool, incident_ids: Sequence[str]) -> dict[str, str]:
    """The target of each incident's latest report (retractions follow it on the log)."""
    rows = await pool.fetch(
        """SELECT DISTINCT ON (incident_id) incident_id, target_ref
             FROM intake_reports
            WHERE incident_id = ANY($1::text[]) AND event_type <> 'org.tnrwatch.incident.retracted.v1'
            ORDER BY incident_id, received_at DESC""",
        list(incident_ids),
    )
    return {r["incident_id"]: r["target_ref"] for r in rows}


async def target_keys(
    pool: asyncpg.Pool, candidates: dict[str, bytes]
) -> dict[str, TargetKey]:
    """The data key of each target, creating it from ``candidates`` (target_ref -> a freshly
    wrapped key) where the target has none yet. A target erased before keeps no key."""
    refs = list(candidates)
    rows = await pool.fetch(
        """WITH created AS (
               INSERT INTO intake_target_keys (target_ref, wrapped_key)
               SELECT * FROM unnest($1::text[], $2::bytea[])
               ON CONFLICT (target_ref) DO NOTHING
               RETURNING target_ref, wrapped_key)
           SELECT target_ref, wrapped_key FROM created
           UNION ALL
           SELECT target_ref, wrapped_key FROM intake_target_keys
            WHERE target_ref = ANY($1::text[])""",
        refs,
        [candidates[r] for r in refs],
    )
    found = {r["target_ref"]: TargetKey(r["target_ref"], r["wrapped_key"]) for r in rows}
    missing = [r for r in refs if r not in found]
    if missing:
        # Another request created these keys concurrently, after this statement's snapshot.
        rows = await pool.fetch(
            "SELECT target_ref, wrapped_key FROM intake_target_keys WHERE target_ref = ANY($1::text[])",
            missing,
        )
        found.update({r["target_ref"]: TargetKey(r["target_ref"], r["wrapped_key"]) for r in rows})
    return found


class ClaimResult(NamedTuple):
    made: bool  # this call claimed the report: it is this request's to write
    seen: Existing | None  # else the row found, when it was there before this statement
    # The claim's wrapped_key was not stored (the target had a key, or another row of the
    # same statement gave one): its identity was not kept. ``stored_key`` is the target's key
    # (None: erased) when ``key_seen``; not seen: created by a transaction after this
    # statement's snapshot (look again).
    key_lost: bool = False
    key_seen: bool = False
    stored_key: bytes | None = None


def _rows_json(rows: list[dict[str, Any]]) -> str:
    """Many rows as one JSON parameter (``json_to_recordset``): asyncpg checks every element
    of an array parameter against three abstract base classes, ~10 µs a claimed report for
    eight columns; one JSON text costs a fraction of that. Sent as text (the pool's json codec
    would encode it again) and cast by PostgreSQL. Strings here never hold NUL (refused at
    the envelope), which PostgreSQL's JSON text cannot carry.

    Statements read it as ``(SELECT … FROM json_to_recordset(…) LIMIT <row count>)``: the
    planner guesses 100 rows for a set-returning function, and joining 100 rows to
    ``intake_reports`` it chose a sequential scan of the whole table (7.5 ms a settlement at
    5,000 reports, growing with the table). Under a LIMIT it guesses 10 in a generic plan (as
    intake's pool makes them), and with sequential scans off for intake's sessions the claim
    and the settlement probe the primary key per row and join their own CTEs by hashing: the
    same plan, linear, for 1 to 5,000 rows (docs/intake.md, "Generic plans")."""
    return orjson.dumps(rows).decode()


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


async def claim(pool: asyncpg.Pool, claims: Sequence[Claim], instance: str) -> list[ClaimResult]:
    """Claim reports not seen before, and return what was there for the others, in one
    statement. Of two claims of one (source, report_id) in one call, the first is made.

    New targets' data keys are stored by the same statement (one round trip and one commit
    for both, where a separate key statement cost a second one per request at low load): a
    claim's identity ciphertext is kept only if it has no ``wrapped_key`` (sealed under a
    key already stored) or its ``wrapped_key`` is the one stored now (the first candidate of
    a target in the statement, when the target had none). Claim and key commit together."""
    if not claims:
        return []
    rows = await pool.fetch(
        """WITH input AS (
               SELECT * FROM json_to_recordset($1::text::json)
                        AS u(n int, s text, r text, i text, t text, e text, p text, v text, c text, k text)
                LIMIT $3),
           keys AS (
               INSERT INTO intake_target_keys (target_ref, wrapped_key)
               SELECT DISTINCT ON (t) t, decode(k, 'base64') FROM input WHERE k IS NOT NULL ORDER BY t, n
               ON CONFLICT (target_ref) DO NOTHING
               RETURNING target_ref, wrapped_key),
           rows AS (
               SELECT input.*, k IS NOT NULL AND keys.wrapped_key IS DISTINCT FROM decode(k, 'base64') AS lost,
                      keys.wrapped_key AS made_key
                 FROM input LEFT JOIN keys ON keys.target_ref = input.t),
           made AS (
               INSERT INTO intake_reports (source, report_id, incident_id, target_ref, event_type,
                                           partner, event_id, identity_ciphertext, status,
                                           claimed_by, claimed_at)
               SELECT s, r, i, t, e, p, v, CASE WHEN NOT lost THEN decode(c, 'base64') END, 'sending', $2, now()
                 FROM rows ORDER BY n
               ON CONFLICT (source, report_id) DO NOTHING
               RETURNING source, report_id)
           SELECT rows.n, made.source IS NOT NULL AS made, rows.lost,
                  rows.made_key IS NOT NULL OR tk.target_ref IS NOT NULL AS key_seen,
                  coalesce(rows.made_key, tk.wrapped_key) AS stored_key,
                  x.source, x.report_id, x.incident_id, x.status, x.claimed_by, x.claimed_at
             FROM rows
             LEFT JOIN made ON made.source = rows.s AND made.report_id = rows.r
             LEFT JOIN LATERAL (SELECT * FROM intake_reports x
                                 WHERE x.source = rows.s AND x.report_id = rows.r OFFSET 0) x ON true
             LEFT JOIN LATERAL (SELECT * FROM intake_target_keys tk
                                 WHERE rows.lost AND rows.made_key IS NULL AND tk.target_ref = rows.t OFFSET 0) tk
                    ON true
            WHERE made.source IS NULL OR rows.lost
            ORDER BY rows.n""",
        _rows_json([
            {"n": n, "s": c.source, "r": c.report_id, "i": c.incident_id, "t": c.target_ref, "e": c.event_type,
             "p": c.partner, "v": c.event_id, "c": _b64(c.identity_ciphertext), "k": _b64(c.wrapped_key)}
            for n, c in enumerate(claims)
        ]),
        instance,
        len(claims),
    )
    # Only the reports not claimed, or whose key was not stored, come back (most are neither).
    others = {row["n"]: row for row in rows}
    first: set[tuple[str, str]] = set()
    out = []
    for n, c in enumerate(claims):
        key = (c.source, c.report_id)
        row = others.get(n)
        if row is None:
            made = key not in first
            first.add(key)
            out.append(ClaimResult(made, None))
            continue
        made = row["made"] and key not in first
        first.add(key)
        seen = None
        if not row["made"] and row["status"] is not None:
            seen = Existing(row["source"], row["report_id"], row["incident_id"], row["status"],
                            row["claimed_by"], row["claimed_at"])
        stored = row["stored_key"]
        out.append(ClaimResult(made, seen, row["lost"], row["key_seen"], None if stored is None else bytes(stored)))
    return out


# The rows of (source, report_id) pairs given as two arrays ($1 sources, $2 ids), each found
# by its own primary-key probe whatever the plan. Intake's statements run on cached generic
# plans (services/intake/main.py); a join of the table with the keys' unnest() was turned
# inside out by a plan made while the table looked small (a walk of the whole primary key per
# statement: 35-74 ms at 100,000 reports), and an index scan by both arrays kept only the
# source as its index condition. A LATERAL subquery that is not flattened (OFFSET 0) can only
# run once per key, after it. UPDATE and DELETE take the rows by their ctids (a TID scan):
# a row updated concurrently is followed to its newest version and the statement's other
# conditions are checked again on it, as for any UPDATE.
_PROBE = """FROM unnest($1::text[], $2::text[]) AS k(s, i)
           CROSS JOIN LATERAL (SELECT x.ctid AS tid, x.* FROM intake_reports x
                                WHERE x.source = k.s AND x.report_id = k.i OFFSET 0) x"""
_BY_KEYS = f"r.ctid = ANY(ARRAY(SELECT x.tid {_PROBE}))"


async def keep_identities(
    pool: asyncpg.Pool, sealed: Sequence[tuple[tuple[str, str], bytes]], instance: str
) -> None:
    """Identities of claims made without them (their candidate key lost to the target's
    stored one), sealed again under the stored key; before the write, as for any claim."""
    await pool.execute(
        """UPDATE intake_reports r SET identity_ciphertext = v.c
             FROM (SELECT x.tid, k.c FROM unnest($1::text[], $2::text[], $3::bytea[]) AS k(s, i, c)
                   CROSS JOIN LATERAL (SELECT x.ctid AS tid FROM intake_reports x
                                        WHERE x.source = k.s AND x.report_id = k.i OFFSET 0) x) v
            WHERE r.ctid = v.tid AND r.claimed_by = $4 AND r.status = 'sending'""",
        [key[0] for key, _ in sealed],
        [key[1] for key, _ in sealed],
        [ciphertext for _, ciphertext in sealed],
        instance,
    )


async def existing(pool: asyncpg.Pool, keys: Sequence[tuple[str, str]]) -> list[Existing]:
    rows = await pool.fetch(
        f"""SELECT x.source, x.report_id, x.incident_id, x.status, x.claimed_by, x.claimed_at
              {_PROBE}""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return [Existing(**dict(r.items())) for r in rows]


async def take_over(
    pool: asyncpg.Pool, keys: Sequence[tuple[str, str]], instance: str, stale_seconds: float
) -> set[tuple[str, str]]:
    """Claims left 'sending' by an intake that stopped mid-write become ours after a while."""
    rows = await pool.fetch(
        f"""UPDATE intake_reports r SET claimed_by = $3, claimed_at = now()
             WHERE {_BY_KEYS} AND r.status = 'sending'
               AND r.claimed_at < now() - make_interval(secs => $4)
           RETURNING r.source, r.report_id""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        instance,
        stale_seconds,
    )
    return {(r["source"], r["report_id"]) for r in rows}


Settlement = tuple[Sequence[tuple[str, str]], "AuditRecord | None"]


async def mark_accepted(
    conn: asyncpg.Connection | asyncpg.Pool, settlements: Sequence[Settlement], instance: str
) -> list[None]:
    """Settle this instance's claims as accepted, with each request's audit record, in one
    statement for any number of requests (one round trip on the hot path). The audit rows
    travel as one JSON parameter too (ten array parameters cost asyncpg ten encodings with
    their per-element checks, for what is usually one row)."""
    keys = [k for claimed, _ in settlements for k in claimed]
    audits = [a for _, a in settlements if a is not None]
    await conn.execute(
        """WITH settled AS (
               UPDATE intake_reports r SET status = 'accepted', received_at = now()
                WHERE r.ctid = ANY(ARRAY(
                          SELECT x.tid FROM json_to_recordset($1::text::json) AS k(s text, i text)
                          CROSS JOIN LATERAL (SELECT x.ctid AS tid FROM intake_reports x
                                               WHERE x.source = k.s AND x.report_id = k.i OFFSET 0) x))
                  AND r.claimed_by = $2
               RETURNING 1)
           INSERT INTO intake_audit (key_id, partner, action, mode, status, outcome, report_ids,
                                     accepted, duplicates, detail)
           SELECT a.key_id, a.partner, a.action, a.mode, a.status, a.outcome,
                  ARRAY(SELECT json_array_elements_text(a.report_ids)), a.accepted, a.duplicates, a.detail
             FROM json_to_recordset($3::text::json)
                  AS a(n int, key_id text, partner text, action text, mode text, status int, outcome text,
                       report_ids json, accepted int, duplicates int, detail text)
            ORDER BY a.n""",
        _rows_json([{"s": k[0], "i": k[1]} for k in keys]),
        instance,
        _rows_json([
            {"n": n, "key_id": a.key_id, "partner": a.partner, "action": a.action, "mode": a.mode,
             "status": a.status, "outcome": a.outcome, "report_ids": list(a.report_ids), "accepted": a.accepted,
             "duplicates": a.duplicates, "detail": a.detail}
            for n, a in enumerate(audits)
        ]),
    )
    return [None] * len(settlements)


async def release(pool: asyncpg.Pool, keys: Sequence[tuple[str, str]], instance: str) -> None:
    """The log did not take these: forget the claims so that a re-post is written afresh."""
    await pool.execute(
        f"""DELETE FROM intake_reports r
             WHERE {_BY_KEYS} AND r.claimed_by = $3 AND r.status = 'sending'""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        instance,
    )


async def erase(conn: asyncpg.Connection, target_refs: Sequence[str]) -> None:
    """Crypto-shredding: destroy the data keys (keep tombstones), drop the ciphertexts too."""
    await conn.execute(
        """INSERT INTO intake_target_keys (target_ref, wrapped_key, erased_at)
           SELECT unnest($1::text[]), NULL, now()
           ON CONFLICT (target_ref) DO UPDATE SET wrapped_key = NULL,
                  erased_at = coalesce(intake_target_keys.erased_at, now())""",
        list(target_refs),
    )
    await conn.execute(
        "UPDATE intake_reports SET identity_ciphertext = NULL "
        "WHERE target_ref = ANY($1::text[]) AND identity_ciphertext IS NOT NULL",
        list(target_refs),
    )


async def sealed_identities(pool: asyncpg.Pool, target_ref: str) -> tuple[TargetKey | None, list[bytes]]:
    key = await pool.fetchrow(
        "SELECT target_ref, wrapped_key FROM intake_target_keys WHERE target_ref = $1", target_ref
    )
    rows = await pool.fetch(
        """SELECT identity_ciphertext FROM intake_reports
            WHERE target_ref = $1 AND status = 'accepted' AND identity_ciphertext IS NOT NULL
            ORDER BY received_at""",
        target_ref,
    )
    target_key = None if key is None else TargetKey(key["target_ref"], key["wrapped_key"])
    return target_key, [bytes(r["identity_ciphertext"]) for r in rows]


@dataclass(frozen=True)
class AuditRecord:
    action: str
    status: int
    outcome: str
    key_id: str | None = None
    partner: str | None = None
    mode: str | None = None
    report_ids: tuple[str, ...] = ()
    accepted: int = 0
    duplicates: int = 0
    detail: str | None = None
