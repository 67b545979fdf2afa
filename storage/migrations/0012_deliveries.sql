-- Where recordings go after the call: deliveries of the sealed audio and its metadata, encrypted
-- to a customer's public key, to SFTP servers and S3 buckets; and webhooks telling CRMs that a
-- recording started, was sealed, erased or put under a legal hold.
--
-- The recording events are written by triggers (an outbox), not by the code paths that cause
-- them: the recorder, the write-behind's replay, start-up recovery, retention, subject requests
-- and the API all seal, erase and hold, and none of them has to know that anyone listens. Any
-- node's delivery service fans the events out into rows per destination and per webhook
-- endpoint, and any node works those rows (a lease that expires hands a dead node's work on).

CREATE TABLE recording_events (
    seq           bigserial PRIMARY KEY,
    recording_id  uuid NOT NULL,               -- no foreign key: an erasure is an event too
    event         text NOT NULL CHECK (event IN ('started', 'sealed', 'erased', 'held')),
    at            timestamptz NOT NULL DEFAULT now(),
    dispatched    boolean NOT NULL DEFAULT false
);
CREATE INDEX recording_events_pending ON recording_events (seq) WHERE NOT dispatched;

CREATE FUNCTION recording_events_of_recordings() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO recording_events (recording_id, event) VALUES (NEW.id, 'started');
    ELSE
        IF NEW.signature IS NOT NULL AND OLD.signature IS NULL AND NEW.state <> 'erased' THEN
            INSERT INTO recording_events (recording_id, event) VALUES (NEW.id, 'sealed');
        END IF;
        IF NEW.state = 'erased' AND OLD.state <> 'erased' THEN
            INSERT INTO recording_events (recording_id, event) VALUES (NEW.id, 'erased');
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER recording_events_insert AFTER INSERT ON recordings
    FOR EACH ROW EXECUTE FUNCTION recording_events_of_recordings();
CREATE TRIGGER recording_events_update AFTER UPDATE OF signature, state ON recordings
    FOR EACH ROW EXECUTE FUNCTION recording_events_of_recordings();

CREATE FUNCTION recording_events_of_holds() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO recording_events (recording_id, event) VALUES (NEW.recording_id, 'held');
    RETURN NULL;
END
$$;

CREATE TRIGGER recording_events_held AFTER INSERT ON legal_hold_recordings
    FOR EACH ROW EXECUTE FUNCTION recording_events_of_holds();

-- One row per (sealed recording, configured destination).
CREATE TABLE deliveries (
    id                     uuid PRIMARY KEY,
    recording_id           uuid NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    destination            text NOT NULL,
    state                  text NOT NULL CHECK (state IN ('pending', 'running', 'delivered',
                                                           'failed', 'cancelled')),
    attempts               integer NOT NULL DEFAULT 0,
    next_attempt_at        timestamptz NOT NULL,
    lease_until            timestamptz,
    node_id                text,
    last_error             text,
    recipient_fingerprint  text,
    files                  jsonb,          -- [{"name", "bytes", "sha256"}] of the ciphertext
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL,
    delivered_at           timestamptz,
    UNIQUE (recording_id, destination)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state IN ('pending', 'running');

-- One row per (recording event, webhook endpoint); 'dead' is the dead letter, visible in the API.
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    endpoint         text NOT NULL,
    event_seq        bigint NOT NULL,
    event            text NOT NULL,
    recording_id     uuid,
    payload          jsonb NOT NULL,
    state            text NOT NULL CHECK (state IN ('pending', 'running', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    lease_until      timestamptz,
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    delivered_at     timestamptz,
    UNIQUE (endpoint, event_seq)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE state IN ('pending', 'running');
CREATE INDEX webhook_deliveries_dead ON webhook_deliveries (endpoint, created_at)
    WHERE state = 'dead';
