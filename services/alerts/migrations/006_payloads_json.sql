-- What alerts write per alert change (its history row, its outbox rows, the alert's matched
-- acts) is read back whole, never queried inside: `json` keeps the text as written (checked
-- as JSON) where `jsonb` parsed it into a binary form on every write and printed it back on
-- every read, on the core the alerts service shares with PostgreSQL. Readers see the same
-- values (the pool's codec decodes both types).
ALTER TABLE alert_changes ALTER COLUMN payload TYPE json USING payload::json;
ALTER TABLE outbox ALTER COLUMN payload TYPE json USING payload::json;
ALTER TABLE alerts ALTER COLUMN matched_acts DROP DEFAULT;
ALTER TABLE alerts ALTER COLUMN matched_acts TYPE json USING matched_acts::json;
ALTER TABLE alerts ALTER COLUMN matched_acts SET DEFAULT '[]';
