-- Read models live in a schema per generation ("projections_g1", "projections_g2", ...).
-- `tnrwatch replay projections` builds the next generation beside the live one and swaps the
-- pointer in projections_state in one transaction, so readers see either the old complete
-- model or the new complete one, never a half-built one.

DROP TABLE IF EXISTS incidents;  -- the walking skeleton's single table, replaced below

CREATE TABLE projections_generations (
    generation  text PRIMARY KEY,
    status      text NOT NULL CHECK (status IN ('building', 'live', 'retired')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    live_since  timestamptz,
    retired_at  timestamptz
);

-- The one row that says which generation serves reads and receives the live consumer's writes.
-- Writers hold it FOR SHARE during their transaction; the swap takes it FOR UPDATE.
CREATE TABLE projections_state (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation  text NOT NULL REFERENCES projections_generations (generation)
);

-- The tables of one generation. Secondary indexes come separately so that a rebuild can load
-- first and index once at the end (much faster than maintaining them row by row).
CREATE FUNCTION projections_create_generation(name text) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('CREATE SCHEMA %I', name);
    EXECUTE format($ddl$
        CREATE TABLE %1$I.incidents (
            incident_id             text PRIMARY KEY,
            target_ref              text NOT NULL,
            partner                 text NOT NULL,
            -- The events' data as they came, in `json` (checked, not converted: converting to
            -- jsonb was most of the cost of a replay). The current report is `report` (from
            -- the log) or, when report_in_classified, the "incident" inside `classified`, the
            -- IncidentClassified payload of the newest classification. Narrative and sources
            -- are kept; the API decides who may see them.
            report                  json,
            report_in_classified    boolean NOT NULL DEFAULT false,
            classified              json,
            report_received_at      timestamptz,
            classified_received_at  timestamptz,
            retracted               boolean NOT NULL DEFAULT false,
            retraction_reason       text,
            -- Filter and statistics columns, from the report and the classification above
            -- (computed by the fold from the typed events, so PostgreSQL parses no JSON twice).
            occurred_on             date,
            year                    integer,
            country                 text,
            target_group            text,
            act_types               text[] NOT NULL DEFAULT '{}',
            pace_methods            text[] NOT NULL DEFAULT '{}',
            ccdi_methods            text[] NOT NULL DEFAULT '{}',
            persuasion_channels     text[] NOT NULL DEFAULT '{}',
            ir_categories           text[] NOT NULL DEFAULT '{}',
            classifier_version      text,
            updated_at              timestamptz NOT NULL DEFAULT now()
        -- Rows of a report and its classification run to 2-4 kB: keep them inline and
        -- uncompressed rather than compress each one on the way in.
        ) WITH (toast_tuple_target = 8160);
        CREATE TABLE %1$I.alerts (
            fingerprint  text PRIMARY KEY,
            alert_id     text NOT NULL,
            rule         text NOT NULL,
            severity     text NOT NULL,
            status       text NOT NULL,
            target_ref   text,
            place        text,
            incident_ids text[] NOT NULL,
            summary      text NOT NULL,
            first_seen   timestamptz NOT NULL,
            last_seen    timestamptz NOT NULL,
            deadline     date,
            updated_at   timestamptz NOT NULL DEFAULT now()
        );
        -- Targets whose identity was erased: confidential text of their reports received
        -- up to erased_at is dropped, also from events folded later (a replay).
        CREATE TABLE %1$I.erased_targets (
            target_ref  text PRIMARY KEY,
            erased_at   timestamptz NOT NULL
        );
        -- This generation's own positions in the log: a record below them is already in it.
        CREATE TABLE %1$I.offsets (
            topic       text NOT NULL,
            partition   integer NOT NULL,
            next_offset bigint NOT NULL,
            PRIMARY KEY (topic, partition)
        );
        -- Bumped in every write transaction: the ETag of every read and the count of events
        -- applied (a double application would show here).
        CREATE TABLE %1$I.progress (
            singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            version        bigint NOT NULL DEFAULT 0,
            events_applied bigint NOT NULL DEFAULT 0,
            updated_at     timestamptz NOT NULL DEFAULT now()
        );
        INSERT INTO %1$I.progress DEFAULT VALUES;
    $ddl$, name);
    INSERT INTO projections_generations (generation, status) VALUES (name, 'building');
END
$fn$;

CREATE FUNCTION projections_create_indexes(name text) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format($ddl$
        CREATE INDEX incidents_listing ON %1$I.incidents (occurred_on DESC, incident_id DESC);
        CREATE INDEX incidents_target ON %1$I.incidents (target_ref, occurred_on);
        CREATE INDEX incidents_country ON %1$I.incidents (country, occurred_on);
        CREATE INDEX alerts_status ON %1$I.alerts (status, last_seen DESC);
        -- Statistics for the planner on what reads filter by; the JSON columns would make a
        -- full ANALYZE the slowest step of a rebuild and never appear in a WHERE clause.
        ANALYZE %1$I.incidents (incident_id, target_ref, occurred_on, year, country, target_group, retracted);
    $ddl$, name);
END
$fn$;

-- The first generation, live from the start.
SELECT projections_create_generation('projections_g1');
SELECT projections_create_indexes('projections_g1');
UPDATE projections_generations SET status = 'live', live_since = now() WHERE generation = 'projections_g1';
INSERT INTO projections_state (generation) VALUES ('projections_g1');
