-- Data-subject requests (GDPR Art. 15 access, Art. 17 erasure) and what happened to each of the
-- person's recordings. The request keeps who it was about (numbers, AORs, names as given): it is
-- the controller's record of having answered (Art. 5(2), 12), not a copy of the recordings.
-- The access bundle is a file encrypted to the requester; the row says where and which node.

CREATE TABLE subject_requests (
    id              uuid PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('access', 'erasure')),
    subject         jsonb NOT NULL,
    state           text NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    job_id          uuid,
    recipient_kind  text CHECK (recipient_kind IN ('passphrase', 'openpgp', 'cms')),
    recipient       jsonb,            -- public key, or the age header and the wrapped file key
    bundle_path     text,
    bundle_node     text,
    bundle_bytes    bigint,
    bundle_sha256   bytea,
    found           integer,
    erased          integer,
    refused         integer,
    error           text,
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL,
    finished_at     timestamptz
);
CREATE INDEX subject_requests_created ON subject_requests (created_at DESC, id);

CREATE TABLE subject_request_items (
    request_id      uuid NOT NULL REFERENCES subject_requests (id) ON DELETE CASCADE,
    recording_id    uuid NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('included', 'erased', 'refused', 'failed')),
    reason          text,
    matter          text,
    retained_until  timestamptz,
    basis           text,
    PRIMARY KEY (request_id, recording_id)
);
