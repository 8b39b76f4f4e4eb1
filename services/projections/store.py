"""The read models in PostgreSQL: generations, batched writes, and the queries of the read API.

Every read model lives in a schema per generation (see migrations/002_generations.sql).
Writes are one multi-row statement per table per batch (``unnest`` of arrays): no round trip
per event, so a replay runs at the speed of the disk rather than of the network.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from services.projections.folding import FoldResult, IncidentState, IncidentWrite, alert_row
from services.projections.reads import (
    STATS_DIMENSIONS,
    Cursor,
    IncidentFilters,
)

_GENERATION = re.compile(r"^projections_g[0-9]+$")


def _schema(generation: str) -> str:
    # Schema names go into SQL text, so only our own pattern is ever accepted.
    if not _GENERATION.match(generation):
        raise ValueError(f"not a projections generation: {generation!r}")
    return f'"{generation}"'


# --- Generations ---------------------------------------------------------------------------


async def live_generation(conn: asyncpg.Connection, *, lock: bool = False) -> str:
    """The generation serving reads; with ``lock`` a swap waits for this transaction."""
    sql = "SELECT generation FROM projections_state" + (" FOR SHARE" if lock else "")
    generation: str = await conn.fetchval(sql)
    return generation


async def create_generation(conn: asyncpg.Connection) -> str:
    """A new, empty, unindexed generation beside the live one (unfinished ones are dropped)."""
    async with conn.transaction():
        for row in await conn.fetch("SELECT generation FROM projections_generations WHERE status = 'building'"):
            await drop_generation(conn, row["generation"])
        number = await conn.fetchval(
            """SELECT coalesce(max(substr(generation, 14)::integer), 0) + 1
                 FROM projections_generations"""
        )
        generation = f"projections_g{number}"
        await conn.execute("SELECT projections_create_generation($1)", generation)
        # No autovacuum while the rebuild loads the table: it would vacuum and analyze (the JSON
        # columns too) 50,000-row tables mid-load, beside the load, on the same cores.
        # index_generation analyzes what reads need and hands the table back to autovacuum.
        await conn.execute(f"ALTER TABLE {_schema(generation)}.incidents SET (autovacuum_enabled = off)")
    return generation


async def index_generation(conn: asyncpg.Connection, generation: str) -> None:
    await conn.execute("SELECT projections_create_indexes($1)", generation)
    await conn.execute(f"ALTER TABLE {_schema(generation)}.incidents RESET (autovacuum_enabled)")


async def drop_generation(conn: asyncpg.Connection, generation: str) -> None:
    await conn.execute(f"DROP SCHEMA IF EXISTS {_schema(generation)} CASCADE")
    await conn.execute("DELETE FROM projections_generations WHERE generation = $1", generation)


async def swap_generation(conn: asyncpg.Connection, generation: str) -> str:
    """Make ``generation`` live (inside the caller's transaction, which holds the state lock).

    Generations older than the one being retired are dropped; the one just retired stays one
    rebuild longer, so requests that began on it finish and an operator can go back."""
    old = await conn.fetchval("SELECT generation FROM projections_state FOR UPDATE")
    await conn.execute("UPDATE projections_state SET generation = $1", generation)
    await conn.execute(
        "UPDATE projections_generations SET status = 'live', live_since = now() WHERE generation = $1",
        generation,
    )
    await conn.execute(
        "UPDATE projections_generations SET status = 'retired', retired_at = now() WHERE generation = $1",
        old,
    )
    for row in await conn.fetch(
        "SELECT generation FROM projections_generations WHERE status = 'retired' AND generation <> $1",
        old,
    ):
        await drop_generation(conn, row["generation"])
    return str(old)


async def generation_offsets(conn: asyncpg.Connection, generation: str) -> dict[tuple[str, int], int]:
    rows = await conn.fetch(f"SELECT topic, partition, next_offset FROM {_schema(generation)}.offsets")
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def store_generation_offsets(
    conn: asyncpg.Connection, generation: str, positions: dict[tuple[str, int], int]
) -> None:
    if not positions:
        return
    items = list(positions.items())
    await conn.execute(
        f"""INSERT INTO {_schema(generation)}.offsets (topic, partition, next_offset)
            SELECT * FROM unnest($1::text[], $2::integer[], $3::bigint[])
            ON CONFLICT (topic, partition) DO UPDATE
               SET next_offset = greatest(offsets.next_offset, EXCLUDED.next_offset)""",
        [t for (t, _), _ in items],
        [p for (_, p), _ in items],
        [o for _, o in items],
    )


async def live_consumer_offsets(conn: asyncpg.Connection, group_id: str) -> dict[tuple[str, int], int]:
    rows = await conn.fetch("SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1", group_id)
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


# --- Writes ----------------------------------------------------------------------------------


async def load_states(
    conn: asyncpg.Connection, generation: str, incident_ids: Sequence[str]
) -> dict[str, IncidentState]:
    if not incident_ids:
        return {}
    rows = await conn.fetch(
        f"""SELECT incident_id, target_ref, partner, report_received_at, classified_received_at,
                   retracted, retraction_reason
              FROM {_schema(generation)}.incidents WHERE incident_id = ANY($1::text[])""",
        list(incident_ids),
    )
    return {r["incident_id"]: IncidentState(**dict(r.items())) for r in rows}


async def load_erased(conn: asyncpg.Connection, generation: str, target_refs: Sequence[str]) -> dict[str, datetime]:
    if not target_refs:
        return {}
    rows = await conn.fetch(
        f"SELECT target_ref, erased_at FROM {_schema(generation)}.erased_targets WHERE target_ref = ANY($1::text[])",
        list(target_refs),
    )
    return {r["target_ref"]: r["erased_at"] for r in rows}


async def write(conn: asyncpg.Connection, generation: str, result: FoldResult, *, all_new: bool = False) -> None:
    """Everything a folded batch changes, in a handful of statements. ``all_new``: none of the
    batch's incidents is stored yet and ``conn`` has asyncpg's own JSON codecs (a replay's
    writer), so the rows can be COPYed straight into the table."""
    schema = _schema(generation)
    changed = result.changed_incidents()
    if changed and all_new:
        await _copy_new_incidents(conn, generation, changed)
    elif changed:
        await _write_incidents(conn, schema, changed)
    if result.alerts:
        rows = [alert_row(a) for a in result.alerts.values()]
        columns = list(zip(*rows, strict=True))
        await conn.execute(
            f"""INSERT INTO {schema}.alerts
                   (fingerprint, alert_id, rule, severity, status, target_ref, place,
                    incident_ids, summary, first_seen, last_seen, deadline)
                SELECT s.fingerprint, s.alert_id, s.rule, s.severity, s.status, s.target_ref, s.place,
                       array(SELECT jsonb_array_elements_text(s.incident_ids::jsonb)),
                       s.summary, s.first_seen, s.last_seen, s.deadline
                  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                              $7::text[], $8::text[], $9::text[], $10::timestamptz[],
                              $11::timestamptz[], $12::date[])
                       AS s(fingerprint, alert_id, rule, severity, status, target_ref, place,
                            incident_ids, summary, first_seen, last_seen, deadline)
                ON CONFLICT (fingerprint) DO UPDATE SET
                    alert_id = EXCLUDED.alert_id, rule = EXCLUDED.rule, severity = EXCLUDED.severity,
                    status = EXCLUDED.status, target_ref = EXCLUDED.target_ref, place = EXCLUDED.place,
                    incident_ids = EXCLUDED.incident_ids, summary = EXCLUDED.summary,
                    first_seen = EXCLUDED.first_seen, last_seen = EXCLUDED.last_seen,
                    deadline = EXCLUDED.deadline, updated_at = now()""",
            *[list(c) for c in columns[:7]],
            [_json_list(ids) for ids in columns[7]],
            *[list(c) for c in columns[8:]],
        )
    if result.erasures:
        refs = list(result.erasures)
        ats = [result.erasures[r] for r in refs]
        await conn.execute(
            f"""INSERT INTO {schema}.erased_targets (target_ref, erased_at)
                SELECT * FROM unnest($1::text[], $2::timestamptz[])
                ON CONFLICT (target_ref) DO UPDATE
                   SET erased_at = greatest(erased_targets.erased_at, EXCLUDED.erased_at)""",
            refs,
            ats,
        )
        # Mirrors folding.strip_confidential for what is already stored.
        await conn.execute(
            f"""UPDATE {schema}.incidents AS i SET
                    report = CASE WHEN i.report IS NULL THEN NULL ELSE
                        jsonb_set(i.report::jsonb #- '{{facts,narrative}}', '{{facts,sources}}', '[]')::json END,
                    classified = CASE WHEN i.classified IS NULL THEN NULL ELSE jsonb_set(
                        jsonb_set(i.classified::jsonb #- '{{incident,facts,narrative}}',
                                  '{{incident,facts,sources}}', '[]'),
                        '{{classification,evidence}}',
                        coalesce((SELECT jsonb_agg(e - 'span')
                                    FROM jsonb_array_elements(i.classified::jsonb->'classification'->'evidence') e),
                                 '[]'))::json END,
                    updated_at = now()
                  FROM unnest($1::text[], $2::timestamptz[]) AS e(target_ref, erased_at)
                 WHERE i.target_ref = e.target_ref AND i.report_received_at <= e.erased_at""",
            refs,
            ats,
        )
    await store_generation_offsets(conn, generation, result.positions)
    await conn.execute(
        f"""UPDATE {schema}.progress SET version = version + 1,
               events_applied = events_applied + $1, updated_at = now()""",
        result.applied,
    )


_STAGE = """CREATE TEMP TABLE IF NOT EXISTS projections_stage (
    incident_id text, target_ref text, partner text, report text, in_classified boolean,
    classified text, report_received_at timestamptz, classified_received_at timestamptz,
    retracted boolean, retraction_reason text, occurred_on date, year integer, country text,
    target_group text, act_types text[], pace_methods text[], ccdi_methods text[],
    persuasion_channels text[], ir_categories text[], classifier_version text
) ON COMMIT DELETE ROWS"""


_INCIDENT_TABLE_COLUMNS = [
    "incident_id", "target_ref", "partner", "report", "report_in_classified", "classified",
    "report_received_at", "classified_received_at", "retracted", "retraction_reason",
    "occurred_on", "year", "country", "target_group", "act_types",
    "pace_methods", "ccdi_methods", "persuasion_channels", "ir_categories", "classifier_version",
]  # fmt: skip


async def _copy_new_incidents(conn: asyncpg.Connection, generation: str, writes: list[IncidentWrite]) -> None:
    records = []
    for w in writes:
        columns, labels = w.report_columns, w.classification
        records.append(
            (
                w.incident_id, w.target_ref, w.partner,
                None if w.report_in_classified else w.report_json,
                w.report_in_classified, w.classified_json,
                w.report_received_at, w.classified_received_at, w.retracted, w.retraction_reason,
                *(
                    (columns.occurred_on, columns.year, columns.country, columns.target_group, columns.act_types)
                    if columns else (None, None, None, None, [])
                ),
                *(
                    (labels.pace_methods, labels.ccdi_methods, labels.persuasion_channels,
                     labels.ir_categories, labels.classifier_version)
                    if labels else ([], [], [], [], None)
                ),
            )
        )  # fmt: skip
    await conn.copy_records_to_table(
        "incidents", schema_name=generation, columns=_INCIDENT_TABLE_COLUMNS, records=records
    )


async def _write_incidents(conn: asyncpg.Connection, schema: str, writes: list[IncidentWrite]) -> None:
    """COPY the batch into a session-local staging table, then one upsert from it (measured
    faster than a multi-row statement, whose input PostgreSQL materialises first)."""
    records = []
    for w in writes:
        columns, labels = w.report_columns, w.classification
        records.append(
            (
                w.incident_id,
                w.target_ref,
                w.partner,
                None if w.report_in_classified else w.report_json,  # else it is classified->'incident'
                w.report_in_classified if columns else None,
                w.classified_json,
                w.report_received_at,
                w.classified_received_at,
                w.retracted,
                w.retraction_reason,
                *(
                    (columns.occurred_on, columns.year, columns.country, columns.target_group, columns.act_types)
                    if columns
                    else (None,) * 5
                ),
                *(
                    (
                        labels.pace_methods,
                        labels.ccdi_methods,
                        labels.persuasion_channels,
                        labels.ir_categories,
                        labels.classifier_version,
                    )
                    if labels
                    else (None,) * 5
                ),
            )
        )
    await conn.execute(_STAGE)
    await conn.copy_records_to_table("projections_stage", records=records)
    await conn.execute(
        f"""INSERT INTO {schema}.incidents AS i
               (incident_id, target_ref, partner, report, report_in_classified, classified,
                report_received_at, classified_received_at, retracted, retraction_reason,
                occurred_on, year, country, target_group, act_types,
                pace_methods, ccdi_methods, persuasion_channels, ir_categories, classifier_version)
            SELECT s.incident_id, s.target_ref, s.partner, s.report::json, coalesce(s.in_classified, false),
                   s.classified::json, s.report_received_at, s.classified_received_at, s.retracted,
                   s.retraction_reason, s.occurred_on, s.year, s.country, s.target_group,
                   coalesce(s.act_types, '{{}}'), coalesce(s.pace_methods, '{{}}'), coalesce(s.ccdi_methods, '{{}}'),
                   coalesce(s.persuasion_channels, '{{}}'), coalesce(s.ir_categories, '{{}}'),
                   s.classifier_version
              FROM projections_stage s
            ON CONFLICT (incident_id) DO UPDATE SET
                target_ref = EXCLUDED.target_ref,
                report_received_at = EXCLUDED.report_received_at,
                classified_received_at = EXCLUDED.classified_received_at,
                retracted = EXCLUDED.retracted,
                retraction_reason = EXCLUDED.retraction_reason,
                -- occurred_on is set exactly when the batch changed the report (every report has
                -- one); classified exactly when it changed the classification.
                report = CASE WHEN EXCLUDED.occurred_on IS NULL THEN i.report ELSE EXCLUDED.report END,
                report_in_classified = CASE WHEN EXCLUDED.occurred_on IS NULL THEN i.report_in_classified
                                            ELSE EXCLUDED.report_in_classified END,
                occurred_on = coalesce(EXCLUDED.occurred_on, i.occurred_on),
                year = CASE WHEN EXCLUDED.occurred_on IS NULL THEN i.year ELSE EXCLUDED.year END,
                country = CASE WHEN EXCLUDED.occurred_on IS NULL THEN i.country ELSE EXCLUDED.country END,
                target_group = CASE WHEN EXCLUDED.occurred_on IS NULL THEN i.target_group
                                    ELSE EXCLUDED.target_group END,
                act_types = CASE WHEN EXCLUDED.occurred_on IS NULL THEN i.act_types ELSE EXCLUDED.act_types END,
                classified = coalesce(EXCLUDED.classified, i.classified),
                pace_methods = CASE WHEN EXCLUDED.classified IS NULL THEN i.pace_methods
                                    ELSE EXCLUDED.pace_methods END,
                ccdi_methods = CASE WHEN EXCLUDED.classified IS NULL THEN i.ccdi_methods
                                    ELSE EXCLUDED.ccdi_methods END,
                persuasion_channels = CASE WHEN EXCLUDED.classified IS NULL THEN i.persuasion_channels
                                           ELSE EXCLUDED.persuasion_channels END,
                ir_categories = CASE WHEN EXCLUDED.classified IS NULL THEN i.ir_categories
                                     ELSE EXCLUDED.ir_categories END,
                classifier_version = CASE WHEN EXCLUDED.classified IS NULL THEN i.classifier_version
                                          ELSE EXCLUDED.classifier_version END,
                updated_at = now()"""
    )


def _json_list(values: Sequence[str]) -> str:
    return json.dumps(list(values))


# --- Reads -----------------------------------------------------------------------------------


async def read_generation(conn: asyncpg.Connection) -> tuple[str, int]:
    """The live generation and its version (call inside the read's transaction)."""
    generation = await live_generation(conn)
    version = await conn.fetchval(f"SELECT version FROM {_schema(generation)}.progress")
    return generation, int(version)


async def progress(conn: asyncpg.Connection, generation: str) -> dict[str, Any]:
    row = await conn.fetchrow(f"SELECT version, events_applied, updated_at FROM {_schema(generation)}.progress")
    assert row is not None
    return dict(row.items())


_INCIDENT_COLUMNS = """incident_id, target_ref, partner, retracted,
    CASE WHEN report_in_classified THEN classified->'incident' ELSE report END AS report,
    classified->'classification' AS classification,
    occurred_on, country, target_group, act_types, pace_methods, ccdi_methods,
    persuasion_channels, ir_categories, classifier_version"""


def _where(filters: IncidentFilters, params: list[Any], *, listing: bool = True) -> str:
    clauses = ["i.occurred_on IS NOT NULL"]  # a report has been seen
    if not (listing and filters.include_retracted):
        clauses.append("NOT i.retracted")

    def param(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    if filters.countries:
        clauses.append(f"i.country = ANY({param(list(filters.countries))}::text[])")
    if filters.groups:
        clauses.append(f"i.target_group = ANY({param(list(filters.groups))}::text[])")
    if filters.methods:
        p = param(list(filters.methods))
        clauses.append(
            f"(i.pace_methods && {p}::text[] OR i.ccdi_methods && {p}::text[] OR i.persuasion_channels && {p}::text[])"
        )
    if filters.ir_categories:
        clauses.append(f"i.ir_categories && {param(list(filters.ir_categories))}::text[]")
    if filters.occurred_from:
        clauses.append(f"i.occurred_on >= {param(filters.occurred_from)}")
    if filters.occurred_to:
        clauses.append(f"i.occurred_on <= {param(filters.occurred_to)}")
    return " AND ".join(clauses)


async def get_incident(conn: asyncpg.Connection, generation: str, incident_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_INCIDENT_COLUMNS} FROM {_schema(generation)}.incidents i WHERE incident_id = $1",
        incident_id,
    )
    return dict(row.items()) if row is not None else None


async def list_incidents(
    conn: asyncpg.Connection,
    generation: str,
    filters: IncidentFilters,
    *,
    cursor: Cursor | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Newest first; keyset pagination on (occurred_on, incident_id)."""
    params: list[Any] = []
    where = _where(filters, params)
    if cursor is not None:
        params += [cursor.occurred_on, cursor.incident_id]
        where += f" AND (i.occurred_on, i.incident_id) < (${len(params) - 1}, ${len(params)})"
    params.append(limit)
    rows = await conn.fetch(
        f"""SELECT {_INCIDENT_COLUMNS} FROM {_schema(generation)}.incidents i WHERE {where}
            ORDER BY i.occurred_on DESC, i.incident_id DESC LIMIT ${len(params)}""",
        *params,
    )
    return [dict(r.items()) for r in rows]


async def iterate_incidents(
    conn: asyncpg.Connection, generation: str, filters: IncidentFilters, *, page: int = 1000
) -> AsyncIterator[list[dict[str, Any]]]:
    cursor: Cursor | None = None
    while True:
        rows = await list_incidents(conn, generation, filters, cursor=cursor, limit=page)
        if not rows:
            return
        yield rows
        if len(rows) < page:
            return
        last = rows[-1]
        cursor = Cursor(last["occurred_on"], last["incident_id"])


async def target_incidents(
    conn: asyncpg.Connection, generation: str, target_ref: str, *, include_retracted: bool
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""SELECT {_INCIDENT_COLUMNS} FROM {_schema(generation)}.incidents i
             WHERE i.target_ref = $1 AND i.occurred_on IS NOT NULL AND ($2 OR NOT i.retracted)
             ORDER BY i.occurred_on, i.incident_id""",
        target_ref,
        include_retracted,
    )
    return [dict(r.items()) for r in rows]


_DIMENSION_SQL = {
    "country": ("i.country", None),
    "group": ("i.target_group", None),
    "year": ("i.year", None),
    "pace_method": ("pace_method", "i.pace_methods"),
    "ccdi_method": ("ccdi_method", "i.ccdi_methods"),
    "persuasion_channel": ("persuasion_channel", "i.persuasion_channels"),
    "ir_category": ("ir_category", "i.ir_categories"),
}
assert set(_DIMENSION_SQL) == set(STATS_DIMENSIONS)


async def stats(
    conn: asyncpg.Connection, generation: str, by: Sequence[str], filters: IncidentFilters
) -> list[dict[str, Any]]:
    """Incident counts per cell of the cube; an incident with two labels of one scheme counts
    in both cells, and an incident with none counts under null."""
    params: list[Any] = []
    where = _where(filters, params, listing=False)
    joins, selects = [], []
    for dimension in by:
        expression, array = _DIMENSION_SQL[dimension]
        if array is not None:
            joins.append(
                f"CROSS JOIN LATERAL unnest(CASE WHEN cardinality({array}) > 0 THEN {array}"
                f" ELSE ARRAY[NULL]::text[] END) AS u_{dimension}({expression})"
            )
        selects.append(f'{expression} AS "{dimension}"')
    positions = ", ".join(str(n + 1) for n in range(len(by)))
    group = f"GROUP BY {positions} ORDER BY {positions}" if by else ""
    rows = await conn.fetch(
        f"""SELECT {", ".join([*selects, "count(*) AS incidents"])}
              FROM {_schema(generation)}.incidents i {" ".join(joins)}
             WHERE {where} {group}""",
        *params,
    )
    return [dict(r.items()) for r in rows if r["incidents"]]


async def alerts(
    conn: asyncpg.Connection, generation: str, statuses: Sequence[str], limit: int
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""SELECT fingerprint, alert_id, rule, severity, status, target_ref, place, incident_ids,
                   summary, first_seen, last_seen, deadline
              FROM {_schema(generation)}.alerts WHERE status = ANY($1::text[])
             ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2 ELSE 3 END,
                      last_seen DESC
             LIMIT $2""",
        list(statuses),
        limit,
    )
    return [dict(r.items()) for r in rows]
