-- Key custody (issue 9): master key versions with states and cryptoperiods, custodians' shares
-- (only their digests and, until fetched once, their encrypted envelopes), dual-control
-- ceremonies, and jobs (rotation re-wrap, re-encryption) as rows with progress.
--
-- No key material is ever stored in clear here. A master key of the sealed (Shamir) custody
-- exists only in memory and in its custodians' shares; while a rotation runs, the retiring
-- version is kept sealed under the new one (sealed_key) so that one set of shares unseals both;
-- destroying a version clears it. Local (development) keys stay files under data_dir/keys;
-- PKCS#11 keys stay in their token.

CREATE TABLE master_key_versions (
    id                text PRIMARY KEY,         -- the key id wrapped data keys name
    seq               integer NOT NULL UNIQUE,  -- 1, 2, 3, ... in order of creation
    custody           text NOT NULL CHECK (custody IN ('local', 'shamir', 'pkcs11')),
    state             text NOT NULL CHECK (state IN ('active', 'retiring', 'retired',
                                                     'destroyed')),
    created_at        timestamptz NOT NULL,
    activated_at      timestamptz,
    retired_at        timestamptz,
    destroyed_at      timestamptz,
    cryptoperiod_days integer NOT NULL CHECK (cryptoperiod_days > 0),
    commitment        bytea,                    -- HMAC-SHA256(key, label): checks a rebuilt key
    threshold         integer,                  -- shamir: shares needed
    shares            integer,                  -- shamir: shares made
    sealed_key        bytea,                    -- this version sealed under sealed_by (retiring)
    sealed_by         text REFERENCES master_key_versions (id),
    token_label       text,                     -- pkcs11: the key object's label
    reminded_at       timestamptz,              -- last cryptoperiod reminder or expiry alert
    CONSTRAINT master_key_versions_destroyed_holds_nothing
        CHECK (state <> 'destroyed' OR sealed_key IS NULL)
);
-- One active version at a time: it wraps every new data key.
CREATE UNIQUE INDEX master_key_versions_one_active ON master_key_versions ((true))
    WHERE state = 'active';

-- One row per share handed out. The digest recognises a submitted share; the envelope is the
-- share encrypted to its custodian, kept only until the custodian fetched it once.
CREATE TABLE key_shares (
    version_id      text NOT NULL REFERENCES master_key_versions (id),
    x               smallint NOT NULL CHECK (x BETWEEN 1 AND 255),
    custodian_id    uuid NOT NULL REFERENCES users (id),
    digest          bytea NOT NULL CHECK (length(digest) = 32),
    recipient_kind  text NOT NULL CHECK (recipient_kind IN ('age', 'openpgp', 'passphrase')),
    recipient       text,                   -- the public key (rotation encrypts to it again)
    fingerprint     text NOT NULL DEFAULT '',
    envelope        text,                   -- NULL once fetched
    fetched_at      timestamptz,
    PRIMARY KEY (version_id, x),
    UNIQUE (version_id, custodian_id)
);

-- Dual control: an action runs only after `needed` distinct users with keys.manage approved it,
-- each re-entering their password, before expires_at.
CREATE TABLE key_ceremonies (
    id              uuid PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('init', 'rotate', 'reencrypt')),
    state           text NOT NULL CHECK (state IN ('pending', 'approved', 'expired')),
    needed          integer NOT NULL CHECK (needed >= 1),
    params          jsonb NOT NULL DEFAULT '{}',   -- never a passphrase
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    job_id          uuid
);

CREATE TABLE key_ceremony_approvals (
    ceremony_id     uuid NOT NULL REFERENCES key_ceremonies (id),
    user_id         uuid NOT NULL REFERENCES users (id),
    at              timestamptz NOT NULL,
    source          text,
    PRIMARY KEY (ceremony_id, user_id)
);

-- Background jobs: any node may pick up a queued job (or one whose runner's heartbeat stopped)
-- and resume it from what is recorded.
CREATE TABLE jobs (
    id              uuid PRIMARY KEY,
    kind            text NOT NULL,
    state           text NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    done            bigint NOT NULL DEFAULT 0,
    total           bigint DEFAULT 0,           -- NULL while a job does not know yet
    params          jsonb NOT NULL DEFAULT '{}',
    result          jsonb,
    error           text,
    created_by      text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),  -- the last progress (stale = dead)
    started_at      timestamptz,
    finished_at     timestamptz,
    runner          text,                   -- node_id of the node running it
    heartbeat_at    timestamptz
);
CREATE INDEX jobs_waiting ON jobs (created_at) WHERE state IN ('queued', 'running');

-- Signing keys become versions sealed by the master key: the private key is stored AES-GCM
-- sealed under a master key version (re-sealed on rotation), never as a plain file.
ALTER TABLE signing_keys
    ADD COLUMN sealed_private  bytea,
    ADD COLUMN sealed_under    text,
    ADD COLUMN retired_at      timestamptz;

-- Key custodians: a role holding keys.manage and nothing else (split of duties: a custodian
-- approves key ceremonies and holds a share, but hears no call and manages no account).
ALTER TABLE users DROP CONSTRAINT users_role_check;
ALTER TABLE users ADD CONSTRAINT users_role_check
    CHECK (role IN ('admin', 'supervisor', 'auditor', 'agent', 'integration', 'custodian'));

-- Re-encryption of a recording under a fresh data key: the new wrapped key waits here while the
-- file is rewritten, so a crash between the file and the row leaves both keys to try.
ALTER TABLE recording_keys ADD COLUMN next_wrapped_key bytea;
