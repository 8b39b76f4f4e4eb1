CREATE TABLE alerts (
    alert_id      text PRIMARY KEY,
    fingerprint   text NOT NULL UNIQUE,
    rule          text NOT NULL,
    severity      text NOT NULL,
    status        text NOT NULL DEFAULT 'open',
    target_ref    text,
    place         text,
    incident_ids  text[] NOT NULL,
    matched_acts  jsonb NOT NULL DEFAULT '[]',
    summary       text NOT NULL,
    first_seen    timestamptz NOT NULL DEFAULT now(),
    last_seen     timestamptz NOT NULL DEFAULT now(),
    deadline      date
);
CREATE INDEX alerts_status ON alerts (status, severity);
CREATE INDEX alerts_target ON alerts (target_ref);
