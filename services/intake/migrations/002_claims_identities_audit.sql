-- Idempotency as claims: a report is claimed ('sending') before it is written to the log and
-- marked 'accepted' once the broker acknowledged it, so a concurrent or later re-post of the
-- same (source, id) can tell "done" from "still in flight" (docs/intake.md, "Idempotency").
ALTER TABLE intake_reports
    ALTER COLUMN incident_id DROP NOT NULL,
    ADD COLUMN status text NOT NULL DEFAULT 'accepted' CHECK (status IN ('sending', 'accepted')),
    ADD COLUMN claimed_by text,
    ADD COLUMN claimed_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN event_id text,
    -- The target's clear identity, AES-GCM under the target's data key; NULL without identity
    -- or once the target is erased.
    ADD COLUMN identity_ciphertext bytea;
CREATE INDEX intake_reports_target ON intake_reports (target_ref);

-- One data key per target, wrapped (AES-GCM) by TNR_IDENTITY_MASTER_KEY. Erasure sets
-- wrapped_key to NULL: every ciphertext under it becomes unreadable (crypto-shredding). The
-- row stays as a tombstone so that later reports of the same person store no identity.
CREATE TABLE intake_target_keys (
    target_ref   text PRIMARY KEY,
    wrapped_key  bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    erased_at    timestamptz,
    CHECK ((wrapped_key IS NULL) = (erased_at IS NOT NULL))
);

-- Every request intake answered: who, what, when, outcome. Never personal data: no names,
-- no report bodies, only the partner's own ids and the outcome.
CREATE TABLE intake_audit (
    audit_id     bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    key_id       text,
    partner      text,
    action       text NOT NULL,
    mode         text,
    status       integer NOT NULL,
    outcome      text NOT NULL,
    report_ids   text[] NOT NULL DEFAULT '{}',
    accepted     integer NOT NULL DEFAULT 0,
    duplicates   integer NOT NULL DEFAULT 0,
    detail       text
);
CREATE INDEX intake_audit_at ON intake_audit (at);
CREATE INDEX intake_audit_partner ON intake_audit (partner, at);
