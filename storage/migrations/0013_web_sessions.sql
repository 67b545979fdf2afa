-- Browser sessions of the web interface (api/ui) live in the tokens table: the same expiry,
-- idle time-out, revocation (log-out, a disabled account) and audit as API tokens. They are a
-- kind of their own so that neither credential stands in for the other: a session cookie is
-- never accepted as a bearer token (the API has no CSRF defence, it needs none), and a bearer
-- token is never accepted as a session cookie.
ALTER TABLE api_tokens ADD COLUMN kind text NOT NULL DEFAULT 'api' CHECK (kind IN ('api', 'web'));
