-- Partners, their CloudEvents sources, and their API keys (stored as hashes only).
CREATE TABLE partners (
    partner     text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE partner_sources (
    source      text PRIMARY KEY,
    partner     text NOT NULL REFERENCES partners (partner),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    partner     text NOT NULL REFERENCES partners (partner),
    key_hash    bytea NOT NULL,
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_partner ON api_keys (partner);

-- Consumer positions kept in the same transaction as the effects they produced, so a crash
-- between the two can neither lose nor double an event.
CREATE TABLE consumer_offsets (
    group_id    text NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
