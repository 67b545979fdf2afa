-- Identity and access: API users (argon2id password hashes, role, scope patterns, lock-out
-- state), bearer tokens stored only as SHA-256 digests, failed-login counters per source
-- address, and the normalised number of each participant that scopes and search compare with.
-- Users are never deleted: a removed user is disabled so the audit trail keeps its actor.

CREATE TABLE users (
    id                  uuid PRIMARY KEY,
    username            text NOT NULL,
    role                text NOT NULL CHECK (role IN ('admin', 'supervisor', 'auditor', 'agent',
                                                      'integration')),
    password_hash       text NOT NULL,
    scopes              text[] NOT NULL DEFAULT '{}',
    disabled            boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    password_changed_at timestamptz NOT NULL,
    failed_logins       integer NOT NULL DEFAULT 0,  -- attempts since the last success
    last_failed_at      timestamptz,
    last_login_at       timestamptz,             -- finds inactive accounts (PCI DSS 8.2.6)
    locked_until        timestamptz
);
-- "Alice" and "alice" would be two look-alike accounts: one name, whatever its case.
CREATE UNIQUE INDEX users_username ON users (lower(username));

CREATE TABLE api_tokens (
    token_hash      bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id         uuid NOT NULL REFERENCES users (id),
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    last_used_at    timestamptz,
    source          text                     -- client address that logged in
);
CREATE INDEX api_tokens_live_by_user ON api_tokens (user_id) WHERE revoked_at IS NULL;

CREATE TABLE login_failures (
    source          text PRIMARY KEY,        -- client address
    failures        integer NOT NULL,
    window_start    timestamptz NOT NULL,
    last_failed_at  timestamptz NOT NULL,
    blocked_until   timestamptz
);

-- normalize_number(aor), filled by the recorder. text_pattern_ops serves both = and the
-- prefix LIKE of scope patterns like '+4420794600%'.
ALTER TABLE participants ADD COLUMN number text;
CREATE INDEX participants_number ON participants (number text_pattern_ops);

-- GET /api/v1/audit filters by these and pages by seq.
CREATE INDEX audit_events_actor ON audit_events (actor, seq);
CREATE INDEX audit_events_action ON audit_events (action, seq);
CREATE INDEX audit_events_target ON audit_events (target, seq);
