-- Every report intake accepted, by (source, id): the durable idempotency store.
CREATE TABLE intake_reports (
    source       text NOT NULL,
    report_id    text NOT NULL,
    incident_id  text NOT NULL,
    target_ref   text NOT NULL,
    event_type   text NOT NULL,
    partner      text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, report_id)
);
CREATE INDEX intake_reports_incident ON intake_reports (incident_id);
