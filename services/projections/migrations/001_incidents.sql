CREATE TABLE incidents (
    incident_id       text PRIMARY KEY,
    target_ref        text NOT NULL,
    partner           text NOT NULL,
    occurred_on       date,
    country           text,
    retracted         boolean NOT NULL DEFAULT false,
    -- The whole folded view; the columns above are for filtering and joins.
    view              jsonb NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX incidents_target ON incidents (target_ref, occurred_on);
CREATE INDEX incidents_country ON incidents (country, occurred_on);
