-- Recorded media: where the encrypted file is, how its channels map to streams and parties,
-- what it contained when it was closed (hashes, sizes, duration, statistics) and the node's
-- signature over that summary. The wrapped data key lives in its own table so that erasure
-- destroys it first (crypto-shredding every copy of the file).

ALTER TABLE recordings
    ADD COLUMN file_path          text,
    ADD COLUMN sample_rate        integer,
    ADD COLUMN channels           jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN pauses             jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN dtmf_events        integer NOT NULL DEFAULT 0,
    ADD COLUMN duration_ms        bigint,
    ADD COLUMN plaintext_sha256   bytea,
    ADD COLUMN ciphertext_sha256  bytea,
    ADD COLUMN plaintext_bytes    bigint,
    ADD COLUMN ciphertext_bytes   bigint,
    ADD COLUMN recovered          boolean NOT NULL DEFAULT false,
    ADD COLUMN summary            jsonb,
    ADD COLUMN signature          bytea,
    ADD COLUMN signing_key_id     text;

ALTER TABLE streams
    ADD COLUMN channel            integer,
    ADD COLUMN stats              jsonb NOT NULL DEFAULT '{}';

CREATE TABLE recording_keys (
    recording_id    uuid PRIMARY KEY REFERENCES recordings (id) ON DELETE CASCADE,
    master_key_id   text NOT NULL,
    wrapped_key     bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recording_keys_master ON recording_keys (master_key_id);

CREATE TABLE signing_keys (
    key_id          text PRIMARY KEY,
    node_id         text NOT NULL,
    public_key      bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
