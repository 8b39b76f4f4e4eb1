-- The data-driven rule engine (issue 5): lifecycle columns on alerts, per-key rule state,
-- the history of alert changes, silences, and the durable delivery outbox.
ALTER TABLE alerts
    ADD COLUMN deadline_as_of      timestamptz,
    ADD COLUMN epoch               integer NOT NULL DEFAULT 0,
    ADD COLUMN revision            integer NOT NULL DEFAULT 1,
    ADD COLUMN acknowledged_at     timestamptz,
    ADD COLUMN acknowledged_by     text,
    ADD COLUMN acknowledged_reason text,
    ADD COLUMN resolved_at         timestamptz,
    ADD COLUMN resolved_by         text,
    ADD COLUMN resolved_reason     text,
    ADD COLUMN updated_at          timestamptz NOT NULL DEFAULT now();
CREATE INDEX alerts_place ON alerts (place);
CREATE INDEX alerts_rule ON alerts (rule);

-- One row per key (target_ref:<ref> or place:<CC>/<city>): the incidents the rules can still
-- use and what each rule found last. Written in the consumer's transaction.
CREATE TABLE rule_state (
    key         text PRIMARY KEY,
    state       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Which keys each incident's latest version is filed under; retracted incidents stay as
-- tombstones so a late copy of an older version cannot bring them back.
CREATE TABLE rule_incidents (
    incident_id text PRIMARY KEY,
    keys        text[] NOT NULL,
    received_at timestamptz NOT NULL,
    retracted   boolean NOT NULL DEFAULT false
);

-- Event time: the latest act date seen. Drives the expiry of old state.
CREATE TABLE rule_watermark (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    watermark   date NOT NULL
);

CREATE TABLE alert_changes (
    change_id   bigserial PRIMARY KEY,
    alert_id    text NOT NULL,
    fingerprint text NOT NULL,
    revision    integer NOT NULL,
    kind        text NOT NULL,
    notify_key  text,
    silenced    boolean NOT NULL DEFAULT false,
    payload     jsonb NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_changes_alert ON alert_changes (alert_id, change_id);

CREATE TABLE silences (
    silence_id  text PRIMARY KEY,
    rule        text,
    target_ref  text,
    place       text,
    ends_at     timestamptz NOT NULL,
    reason      text NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,
    deleted_by  text,
    CHECK (rule IS NOT NULL OR target_ref IS NOT NULL OR place IS NOT NULL)
);

-- Durable delivery: one row per (receiver, alert, notification); the unique key makes
-- enqueueing idempotent across restarts and replays.
CREATE TABLE outbox (
    outbox_id       bigserial PRIMARY KEY,
    receiver        text NOT NULL,
    fingerprint     text NOT NULL,
    notify_key      text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    delivered_at    timestamptz,
    last_error      text,
    UNIQUE (receiver, fingerprint, notify_key)
);
CREATE INDEX outbox_pending ON outbox (receiver, outbox_id) WHERE delivered_at IS NULL;

CREATE TABLE delivery_attempts (
    attempt_id  bigserial PRIMARY KEY,
    outbox_id   bigint NOT NULL REFERENCES outbox (outbox_id),
    receiver    text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    ok          boolean NOT NULL,
    status_code integer,
    error       text,
    duration_ms double precision NOT NULL
);
CREATE INDEX delivery_attempts_outbox ON delivery_attempts (outbox_id);
