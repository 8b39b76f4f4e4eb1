"""Alerts' SQL (asyncpg): rule state, alerts and their history, silences, the outbox."""

from __future__ import annotations

import os
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg
import orjson
from asyncpg.pgproto.pgproto import UUID as PgUUID

from services.alerts.engine import KeyState, matched_act
from services.alerts.lifecycle import AlertChange, AlertRecord
from shared.events import AlertSeverity, AlertStatus, MatchedAct

NOTIFY_CHANNEL = "tnr_alert_changes"

# --- Rule state ------------------------------------------------------------------------------


async def load_watermark(conn: asyncpg.Connection, *, lock: bool = True) -> date | None:
    # The lock also serialises replicas' batches (a key new to both cannot be written twice).
    value: date | None = await conn.fetchval("SELECT watermark FROM rule_watermark" + (" FOR UPDATE" if lock else ""))
    return value


async def save_watermark(conn: asyncpg.Connection, watermark: date) -> None:
    await conn.execute(
        """INSERT INTO rule_watermark (singleton, watermark) VALUES (true, $1)
           ON CONFLICT (singleton) DO UPDATE SET watermark = greatest(rule_watermark.watermark, EXCLUDED.watermark)""",
        watermark,
    )


class StateCache:
    """Key states kept between batches, each with the version token it was written under.

    A state is trusted only if the table still holds the same token, so a rolled-back batch
    or a write by another replica makes the service read the state again."""

    def __init__(self, capacity: int = 150_000) -> None:
        self.capacity = capacity
        # OrderedDict: popping a plain dict's first item scans past every slot deleted before it.
        self.entries: OrderedDict[str, tuple[uuid.UUID, KeyState]] = OrderedDict()

    def get(self, key: str, version: uuid.UUID | None) -> KeyState | None:
        entry = self.entries.get(key)
        if entry is None or version is None or entry[0] != version:
            return None
        return entry[1]

    def put_if_absent(self, key: str, version: uuid.UUID, state: KeyState) -> bool:
        """For the start-up restore: a batch may have cached a newer version meanwhile (kept),
        and a full cache is not made to evict what batches wrote."""
        if key in self.entries or len(self.entries) >= self.capacity:
            return False
        self.entries[key] = (version, state)
        return True

    def put(self, key: str, version: uuid.UUID, state: KeyState) -> None:
        # Least recently written first out: a busy place written every batch stays (re-inserted
        # at the end), where a plain insertion order would evict it like a one-off target.
        if key in self.entries:
            self.entries.move_to_end(key)
        elif len(self.entries) >= self.capacity:
            self.entries.popitem(last=False)
        self.entries[key] = (version, state)


async def load_states(
    conn: asyncpg.Connection, keys: Sequence[str], cache: StateCache | None = None
) -> dict[str, KeyState]:
    """The states of ``keys``, locked for this transaction (FOR UPDATE). One round trip: the
    state's JSON comes back only for keys whose cached version is not the table's."""
    cached = cache.entries if cache is not None else {}
    known = [k for k in keys if k in cached]
    rows = await conn.fetch(
        """SELECT s.key, s.version,
                  CASE WHEN c.version IS NULL OR s.version IS DISTINCT FROM c.version THEN s.state END AS state
             FROM rule_state s LEFT JOIN unnest($2::text[], $3::uuid[]) AS c(key, version) ON c.key = s.key
            WHERE s.key = ANY($1::text[]) ORDER BY s.key FOR UPDATE OF s""",
        list(keys),
        known,
        [cached[k][0] for k in known],
    )
    states: dict[str, KeyState] = {}
    for r in rows:
        key, raw = r["key"], r["state"]
        hit = cache.get(key, r["version"]) if cache is not None and raw is None else None
        if hit is not None:
            states[key] = hit
        else:
            if raw is None:  # not reached (no JSON only when the cache holds that version); safe anyway
                raw = await conn.fetchval("SELECT state FROM rule_state WHERE key = $1", key)
            states[key] = KeyState.from_json(orjson.loads(raw))
    return states


async def read_states(
    conn: asyncpg.Connection, keys: Sequence[str], cache: StateCache
) -> dict[str, tuple[uuid.UUID | None, KeyState]]:
    """The committed states of ``keys`` with their version tokens (None: no row), without
    locks: a staged batch checks the versions again under lock before it writes."""
    cached = cache.entries
    known = [k for k in keys if k in cached]
    rows = await conn.fetch(
        """SELECT s.key, s.version,
                  CASE WHEN c.version IS NULL OR s.version IS DISTINCT FROM c.version THEN s.state END AS state
             FROM rule_state s LEFT JOIN unnest($2::text[], $3::uuid[]) AS c(key, version) ON c.key = s.key
            WHERE s.key = ANY($1::text[])""",
        list(keys),
        known,
        [cached[k][0] for k in known],
    )
    found: dict[str, tuple[uuid.UUID | None, KeyState]] = {}
    for r in rows:
        key, raw, version = r["key"], r["state"], r["version"]
        hit = cache.get(key, version) if raw is None else None
        if hit is None:
            if raw is None:  # the cache entry went between the query and here; read it again
                raw = await conn.fetchval("SELECT state FROM rule_state WHERE key = $1", key)
            hit = KeyState.from_json(orjson.loads(raw)) if raw is not None else KeyState()
        found[key] = (version, hit)
    return found


async def newest_state_keys(pool: asyncpg.Pool, limit: int) -> list[str]:
    """The keys of the ``limit`` most recently written states (with a version: rows from before
    versions existed cannot be trusted from a cache), oldest first."""
    rows = await pool.fetch(
        """SELECT key FROM (SELECT key, updated_at FROM rule_state WHERE version IS NOT NULL
                             ORDER BY updated_at DESC LIMIT $1) AS newest ORDER BY updated_at""",
        limit,
    )
    return [r["key"] for r in rows]


async def committed_states(pool: asyncpg.Pool, keys: Sequence[str]) -> list[tuple[str, uuid.UUID, str]]:
    """(key, version, state JSON) of ``keys`` as committed, without locks, in the order of ``keys``
    (a key deleted meanwhile left out)."""
    rows = await pool.fetch(
        """SELECT s.key, s.version, s.state FROM unnest($1::text[]) WITH ORDINALITY AS k(key, n)
             JOIN rule_state s ON s.key = k.key WHERE s.version IS NOT NULL ORDER BY k.n""",
        list(keys),
    )
    return [(r["key"], r["version"], r["state"]) for r in rows]


@dataclass(frozen=True)
class StateWrites:
    """A batch's state writes, encoded while the previous batch commits."""

    deleted: list[str]
    keys: list[str]
    states: list[str]  # JSON text
    versions: list[uuid.UUID]


def encode_states(states: dict[str, KeyState]) -> StateWrites:
    deleted = [k for k, s in states.items() if s.empty]
    keys = [k for k, s in states.items() if not s.empty]
    return StateWrites(deleted, keys, [dumps(states[k].to_json()) for k in keys], new_versions(len(keys)))


def new_versions(count: int) -> list[uuid.UUID]:
    """Random version tokens (as uuid4, without its 3 us each: asyncpg's C UUID from 16 random
    bytes; it is the type asyncpg reads them back as)."""
    randomness = os.urandom(16 * count)
    return [PgUUID(randomness[n : n + 16]) for n in range(0, 16 * count, 16)]


async def write_states_if_current(
    conn: asyncpg.Connection, writes: StateWrites, expected: dict[str, uuid.UUID | None]
) -> list[str]:
    """Write a staged batch's states if every touched state still has the version the batch
    folded on (None: no row); else write nothing and return the keys that changed.

    One statement, no ``SELECT … FOR UPDATE`` of the touched rows first: the caller holds the
    watermark row's lock, which every writer of ``rule_state`` takes before writing, so the
    statement's snapshot is the truth until this transaction ends (replay's TRUNCATE takes
    the whole table's lock)."""
    rows = await conn.fetch(
        """WITH stale AS MATERIALIZED (
               SELECT e.k FROM unnest($1::text[], $2::uuid[]) AS e(k, v) LEFT JOIN rule_state s ON s.key = e.k
                WHERE s.version IS DISTINCT FROM e.v),
           deleted AS (
               DELETE FROM rule_state WHERE key = ANY($3::text[]) AND NOT EXISTS (SELECT FROM stale)),
           written AS (
               INSERT INTO rule_state (key, state, version)
               SELECT k, s, v FROM unnest($4::text[], $5::text[], $6::uuid[]) AS t(k, s, v)
                WHERE NOT EXISTS (SELECT FROM stale)
               ON CONFLICT (key) DO UPDATE SET state = EXCLUDED.state, version = EXCLUDED.version,
                   updated_at = now())
           SELECT k FROM stale""",
        list(expected),
        list(expected.values()),
        writes.deleted,
        writes.keys,
        writes.states,
        writes.versions,
    )
    return [r["k"] for r in rows]


async def save_states(conn: asyncpg.Connection, states: dict[str, KeyState], cache: StateCache | None = None) -> None:
    empty = [k for k, s in states.items() if s.empty]
    kept = [k for k, s in states.items() if not s.empty]
    versions = dict(zip(kept, new_versions(len(kept)), strict=True))
    if empty:
        await conn.execute("DELETE FROM rule_state WHERE key = ANY($1::text[])", empty)
    if versions:
        await conn.execute(
            """INSERT INTO rule_state (key, state, version)
               SELECT k, s, v FROM unnest($1::text[], $2::text[], $3::uuid[]) AS t(k, s, v)
               ON CONFLICT (key) DO UPDATE SET state = EXCLUDED.state, version = EXCLUDED.version,
                   updated_at = now()""",
            list(versions),
            [dumps(states[k].to_json()) for k in versions],
            list(versions.values()),
        )
    if cache is not None:
        for key, version in versions.items():
            cache.put(key, version, states[key])


def _json_text_array(column: str) -> str:
    """SQL turning a JSON array of strings in ``column`` into text[], in order."""
    return f"ARRAY(SELECT e FROM json_array_elements_text({column}::json) WITH ORDINALITY AS x(e, n) ORDER BY n)"


@dataclass
class IncidentFiling:
    keys: list[str]
    received_at: datetime
    retracted: bool = False


async def load_filings(conn: asyncpg.Connection, incident_ids: Sequence[str]) -> dict[str, IncidentFiling]:
    rows = await conn.fetch(
        "SELECT incident_id, keys, received_at, retracted FROM rule_incidents WHERE incident_id = ANY($1::text[])",
        list(incident_ids),
    )
    return {r["incident_id"]: IncidentFiling(list(r["keys"]), r["received_at"], r["retracted"]) for r in rows}


async def save_filings(conn: asyncpg.Connection, filings: dict[str, IncidentFiling]) -> None:
    if filings:
        # One statement: each incident's keys travel as a JSON array (arrays of arrays must be
        # rectangular in PostgreSQL).
        await conn.execute(
            f"""INSERT INTO rule_incidents (incident_id, keys, received_at, retracted)
               SELECT i, {_json_text_array("k")}, r, x
                 FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bool[]) AS t(i, k, r, x)
               ON CONFLICT (incident_id) DO UPDATE SET keys = EXCLUDED.keys,
                   received_at = EXCLUDED.received_at, retracted = EXCLUDED.retracted""",
            list(filings),
            [dumps(f.keys) for f in filings.values()],
            [f.received_at for f in filings.values()],
            [f.retracted for f in filings.values()],
        )


async def reset_rule_state(conn: asyncpg.Connection, group_id: str) -> None:
    """For replay: forget the rule state and the consumer's position; alerts, their history
    and the outbox stay, so nothing is raised or delivered twice."""
    await conn.execute("TRUNCATE rule_state, rule_incidents, rule_watermark")
    await conn.execute("DELETE FROM consumer_offsets WHERE group_id = $1", group_id)


# --- Alerts ----------------------------------------------------------------------------------

_ALERT_COLUMNS = (
    "alert_id, fingerprint, rule, severity, status, target_ref, place, incident_ids, matched_acts, summary, "
    "first_seen, last_seen, deadline, deadline_as_of, epoch, revision, acknowledged_at, acknowledged_by, "
    "acknowledged_reason, resolved_at, resolved_by, resolved_reason, updated_at"
)


def _matched_act(raw: dict[str, Any]) -> MatchedAct:
    """A matched act as this service wrote it (constructed: validation per act was most of the
    cost of reading a busy place's alert)."""
    on = raw.get("on")
    return matched_act(
        raw["incident_id"], raw["act_index"], raw["type"], date.fromisoformat(on) if on else None, raw["status"]
    )


def _record(row: asyncpg.Record) -> AlertRecord:
    return AlertRecord(
        alert_id=row["alert_id"],
        fingerprint=row["fingerprint"],
        rule=row["rule"],
        severity=AlertSeverity(row["severity"]),
        status=AlertStatus(row["status"]),
        target_ref=row["target_ref"],
        place=row["place"],
        incident_ids=tuple(row["incident_ids"]),
        matched_acts=tuple(_matched_act(m) for m in row["matched_acts"]),
        summary=row["summary"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        deadline=row["deadline"],
        deadline_as_of=row["deadline_as_of"],
        epoch=row["epoch"],
        revision=row["revision"],
        acknowledged_at=row["acknowledged_at"],
        acknowledged_by=row["acknowledged_by"],
        acknowledged_reason=row["acknowledged_reason"],
        resolved_at=row["resolved_at"],
        resolved_by=row["resolved_by"],
        resolved_reason=row["resolved_reason"],
        updated_at=row["updated_at"],
    )


async def load_alerts(conn: asyncpg.Connection, fingerprints: Iterable[str]) -> dict[str, AlertRecord]:
    rows = await conn.fetch(
        f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE fingerprint = ANY($1::text[]) ORDER BY fingerprint FOR UPDATE",
        list(fingerprints),
    )
    return {r["fingerprint"]: _record(r) for r in rows}


async def read_alerts(conn: asyncpg.Connection, fingerprints: Iterable[str]) -> dict[str, AlertRecord]:
    """As ``load_alerts`` without locks (a staged batch checks the revisions under lock)."""
    rows = await conn.fetch(
        f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE fingerprint = ANY($1::text[])", list(fingerprints)
    )
    return {r["fingerprint"]: _record(r) for r in rows}


async def lock_alert_revisions(conn: asyncpg.Connection, fingerprints: Iterable[str]) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT fingerprint, revision FROM alerts WHERE fingerprint = ANY($1::text[]) ORDER BY fingerprint FOR UPDATE",
        sorted(fingerprints),
    )
    return {r["fingerprint"]: r["revision"] for r in rows}


async def get_alert(
    conn: asyncpg.Connection | asyncpg.Pool, alert_id: str, *, for_update: bool = False
) -> AlertRecord | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE alert_id = $1{lock}", alert_id)
    return _record(row) if row else None


def _alert_row(r: AlertRecord, event_json: dict[str, Any] | None = None) -> tuple[Any, ...]:
    if event_json is not None:
        matched = event_json["matched_acts"]
    else:
        matched = [m.model_dump(mode="json") for m in r.matched_acts]
    return (
        r.alert_id,
        r.fingerprint,
        r.rule,
        r.severity.value,
        r.status.value,
        r.target_ref,
        r.place,
        dumps(r.incident_ids),  # a JSON array: arrays of arrays must be rectangular in PostgreSQL
        dumps(matched),
        r.summary,
        r.first_seen,
        r.last_seen,
        r.deadline,
        r.deadline_as_of,
        r.epoch,
        r.revision,
        r.acknowledged_at,
        r.acknowledged_by,
        r.acknowledged_reason,
        r.resolved_at,
        r.resolved_by,
        r.resolved_reason,
    )


_ALERT_ARRAY_TYPES = (
    "text[], text[], text[], text[], text[], text[], text[], text[], text[], text[], timestamptz[], timestamptz[], "
    "date[], timestamptz[], int[], int[], timestamptz[], text[], text[], timestamptz[], text[], text[]"
)


async def _upsert_alert_columns(conn: asyncpg.Connection, columns: list[list[Any]]) -> None:
    params = ", ".join(f"${n}::{t.strip()}" for n, t in enumerate(_ALERT_ARRAY_TYPES.split(","), start=1))
    await conn.execute(
        f"""INSERT INTO alerts ({_ALERT_COLUMNS})
            SELECT c1, c2, c3, c4, c5, c6, c7, {_json_text_array("c8")}, c9::json,
                   c10, c11, c12, c13, c14, c15, c16, c17, c18, c19, c20, c21, c22, now()
              FROM unnest({params}) AS t(c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15,
                                         c16, c17, c18, c19, c20, c21, c22)
            ON CONFLICT (alert_id) DO UPDATE SET
              severity = EXCLUDED.severity, status = EXCLUDED.status, incident_ids = EXCLUDED.incident_ids,
              matched_acts = EXCLUDED.matched_acts, summary = EXCLUDED.summary, first_seen = EXCLUDED.first_seen,
              last_seen = EXCLUDED.last_seen, deadline = EXCLUDED.deadline, deadline_as_of = EXCLUDED.deadline_as_of,
              epoch = EXCLUDED.epoch, revision = EXCLUDED.revision, acknowledged_at = EXCLUDED.acknowledged_at,
              acknowledged_by = EXCLUDED.acknowledged_by, acknowledged_reason = EXCLUDED.acknowledged_reason,
              resolved_at = EXCLUDED.resolved_at, resolved_by = EXCLUDED.resolved_by,
              resolved_reason = EXCLUDED.resolved_reason, updated_at = now()""",
        *columns,
    )


async def list_alerts(
    pool: asyncpg.Pool,
    *,
    status: str | None,
    severity: str | None,
    target_ref: str | None,
    rule: str | None = None,
    place: str | None = None,
    limit: int = 500,
) -> list[AlertRecord]:
    rows = await pool.fetch(
        f"""SELECT {_ALERT_COLUMNS} FROM alerts
             WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR severity = $2)
               AND ($3::text IS NULL OR target_ref = $3) AND ($4::text IS NULL OR rule = $4)
               AND ($5::text IS NULL OR place = $5)
             ORDER BY last_seen DESC, alert_id LIMIT $6""",
        status,
        severity,
        target_ref,
        rule,
        place,
        limit,
    )
    return [_record(r) for r in rows]


# --- Changes and the outbox ------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    receiver: str
    notify_key: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Recorded:
    change: AlertChange
    silenced: bool
    outgoing: Sequence[Outgoing]
    event_json: dict[str, Any] | None = None  # the record's AlertChanged data, when already made
    api_json: dict[str, Any] | None = None  # the record as the API shows it, when already made


@dataclass(frozen=True)
class EncodedChanges:
    """A batch of alert changes as the columns of their rows (JSON already encoded): made while
    the previous batch commits, written by ``write_changes``."""

    alert_columns: list[list[Any]]
    alert_ids: list[str]
    fingerprints: list[str]
    revisions: list[int]
    kinds: list[str]
    notify_keys: list[str | None]
    silenced: list[bool]
    payloads: list[str]
    outbox_receivers: list[str]
    outbox_fingerprints: list[str]
    outbox_notify_keys: list[str]
    outbox_payloads: list[str]  # without change_id (added in SQL once the ids are drawn)
    outbox_changes: list[int]  # the index of each outbox row's change


def encode_changes(items: Sequence[Recorded]) -> EncodedChanges:
    latest = {i.change.record.alert_id: i for i in items}
    alert_rows = [_alert_row(i.change.record, i.event_json) for i in latest.values()]
    records = [i.change.record for i in items]
    outbox = [(n, o) for n, i in enumerate(items) for o in i.outgoing]
    return EncodedChanges(
        alert_columns=[list(c) for c in zip(*alert_rows, strict=True)] if alert_rows else [],
        alert_ids=[r.alert_id for r in records],
        fingerprints=[r.fingerprint for r in records],
        revisions=[r.revision for r in records],
        kinds=[i.change.kind.value for i in items],
        notify_keys=[i.change.notify_key for i in items],
        silenced=[i.silenced for i in items],
        payloads=[dumps(i.api_json if i.api_json is not None else i.change.record.to_api()) for i in items],
        outbox_receivers=[o.receiver for _, o in outbox],
        outbox_fingerprints=[items[n].change.record.fingerprint for n, _ in outbox],
        outbox_notify_keys=[o.notify_key for _, o in outbox],
        outbox_payloads=[dumps(o.payload) for _, o in outbox],
        outbox_changes=[n for n, _ in outbox],
    )


async def record_changes(conn: asyncpg.Connection, items: Sequence[Recorded]) -> list[int]:
    """Save the alerts (their latest state), the history rows and the outbox rows of a batch of
    changes, one statement per table; returns the change ids in order."""
    if not items:
        return []
    return await write_changes(conn, encode_changes(items))


async def write_changes(conn: asyncpg.Connection, encoded: EncodedChanges) -> list[int]:
    if not encoded.alert_ids:
        return []
    await _upsert_alert_columns(conn, encoded.alert_columns)
    change_ids: list[int] = [
        r[0]
        for r in await conn.fetch(
            "SELECT nextval(pg_get_serial_sequence('alert_changes', 'change_id')) FROM generate_series(1, $1)",
            len(encoded.alert_ids),
        )
    ]
    await conn.execute(
        """INSERT INTO alert_changes (change_id, alert_id, fingerprint, revision, kind, notify_key, silenced, payload)
           SELECT c, a, f, r, k, n, s, p::json
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::bool[],
                         $8::text[]) AS t(c, a, f, r, k, n, s, p)""",
        change_ids,
        encoded.alert_ids,
        encoded.fingerprints,
        encoded.revisions,
        encoded.kinds,
        encoded.notify_keys,
        encoded.silenced,
        encoded.payloads,
    )
    if encoded.outbox_receivers:
        await conn.execute(
            """INSERT INTO outbox (receiver, fingerprint, notify_key, payload)
               -- change_id spliced in as text (p is a non-empty JSON object): no parse into jsonb
               SELECT r, f, n, ('{"change_id":' || ($5::bigint[])[i + 1] || ',' || substr(p, 2))::json
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $6::int[]) WITH ORDINALITY
                      AS t(r, f, n, p, i, o)
                ORDER BY o  -- outbox_id order is delivery order
               ON CONFLICT (receiver, fingerprint, notify_key) DO NOTHING""",
            encoded.outbox_receivers,
            encoded.outbox_fingerprints,
            encoded.outbox_notify_keys,
            encoded.outbox_payloads,
            change_ids,
            encoded.outbox_changes,
        )
    return change_ids


async def announce(conn: asyncpg.Connection, change_ids: Sequence[int]) -> None:
    """Tell listeners (SSE, delivery workers) once the transaction commits."""
    if change_ids:
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{min(change_ids)},{max(change_ids)}")


async def changes_between(conn: asyncpg.Connection | asyncpg.Pool, first: int, last: int) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT change_id, kind, payload FROM alert_changes WHERE change_id BETWEEN $1 AND $2 ORDER BY change_id",
            first,
            last,
        )
    )


async def changes_after(conn: asyncpg.Connection | asyncpg.Pool, after: int, limit: int = 500) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT change_id, kind, payload FROM alert_changes WHERE change_id > $1 ORDER BY change_id LIMIT $2",
            after,
            limit,
        )
    )


async def last_change_id(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    value: int = await conn.fetchval("SELECT coalesce(max(change_id), 0) FROM alert_changes")
    return value


async def pending(conn: asyncpg.Connection, receiver: str, limit: int) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            """SELECT outbox_id, fingerprint, notify_key, payload, attempts, next_attempt_at, now() AS db_now
             FROM outbox WHERE receiver = $1 AND delivered_at IS NULL
            ORDER BY outbox_id LIMIT $2""",
            receiver,
            limit,
        )
    )


async def try_lock_receiver(conn: asyncpg.Connection, receiver: str) -> bool:
    """One sender per receiver across replicas, so a receiver gets its notifications in order."""
    locked: bool = await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext('tnr-outbox:' || $1))", receiver)
    return locked


async def mark_delivered(
    conn: asyncpg.Connection, outbox_ids: Sequence[int], receiver: str, status_code: int | None, duration_ms: float
) -> None:
    await conn.execute(
        """UPDATE outbox SET delivered_at = now(), attempts = attempts + 1, last_error = NULL
            WHERE outbox_id = ANY($1::bigint[])""",
        list(outbox_ids),
    )
    # One statement for the batch (the Kafka receiver delivers up to 500 at once): executemany
    # ran the insert once per alert.
    await conn.execute(
        """INSERT INTO delivery_attempts (outbox_id, receiver, ok, status_code, duration_ms)
           SELECT i, $2, true, $3, $4 FROM unnest($1::bigint[]) AS i""",
        list(outbox_ids),
        receiver,
        status_code,
        duration_ms,
    )


async def mark_failed(
    conn: asyncpg.Connection,
    outbox_id: int,
    receiver: str,
    status_code: int | None,
    error: str,
    duration_ms: float,
    retry_in: float,
) -> None:
    await conn.execute(
        """UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                  next_attempt_at = now() + make_interval(secs => $3) WHERE outbox_id = $1""",
        outbox_id,
        error[:1000],
        retry_in,
    )
    await conn.execute(
        """INSERT INTO delivery_attempts (outbox_id, receiver, ok, status_code, error, duration_ms)
           VALUES ($1, $2, false, $3, $4, $5)""",
        outbox_id,
        receiver,
        status_code,
        error[:1000],
        duration_ms,
    )


async def outbox_backlog(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT receiver, count(*) AS n FROM outbox WHERE delivered_at IS NULL GROUP BY receiver")
    return {r["receiver"]: r["n"] for r in rows}


# --- Silences --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Silence:
    silence_id: str
    rule: str | None
    target_ref: str | None
    place: str | None
    ends_at: datetime
    reason: str
    created_by: str
    created_at: datetime

    def mutes(self, rule: str, target_ref: str | None, place: str | None, now: datetime) -> bool:
        if now >= self.ends_at:
            return False
        return (
            (self.rule is None or self.rule == rule)
            and (self.target_ref is None or self.target_ref == target_ref)
            and (self.place is None or self.place == place)
        )

    def to_api(self) -> dict[str, Any]:
        return {
            "silence_id": self.silence_id,
            "rule": self.rule,
            "target_ref": self.target_ref,
            "place": self.place,
            "until": self.ends_at.isoformat(),
            "reason": self.reason,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
        }


def _silence(row: asyncpg.Record) -> Silence:
    return Silence(
        silence_id=row["silence_id"],
        rule=row["rule"],
        target_ref=row["target_ref"],
        place=row["place"],
        ends_at=row["ends_at"],
        reason=row["reason"],
        created_by=row["created_by"],
        created_at=row["created_at"],
    )


async def active_silences(conn: asyncpg.Connection | asyncpg.Pool) -> list[Silence]:
    rows = await conn.fetch("SELECT * FROM silences WHERE deleted_at IS NULL AND ends_at > now() ORDER BY created_at")
    return [_silence(r) for r in rows]


async def create_silence(conn: asyncpg.Connection | asyncpg.Pool, s: Silence) -> Silence:
    row = await conn.fetchrow(
        """INSERT INTO silences (silence_id, rule, target_ref, place, ends_at, reason, created_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *""",
        s.silence_id,
        s.rule,
        s.target_ref,
        s.place,
        s.ends_at,
        s.reason,
        s.created_by,
    )
    return _silence(row)


async def delete_silence(conn: asyncpg.Connection | asyncpg.Pool, silence_id: str, who: str) -> bool:
    status: str = await conn.execute(
        "UPDATE silences SET deleted_at = now(), deleted_by = $2 WHERE silence_id = $1 AND deleted_at IS NULL",
        silence_id,
        who,
    )
    return status.endswith(" 1")


def dumps(value: Any) -> str:
    """Compact JSON text (orjson: the rule state and alert payloads are most of what a batch
    writes, and the standard library's encoder was a fifth of the handler's time)."""
    return orjson.dumps(value, default=str).decode()
