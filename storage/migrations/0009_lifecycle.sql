-- Lifecycle of recordings after the call: background jobs, retention policies (and changes
-- waiting for a second user), legal holds, annotations, and what retention matches on that the
-- SRC sent in its metadata.

-- Background jobs (the table is key custody's, 0007): rows with progress that any node can
-- claim, resumable after a crash (a 'running' job whose updated_at stopped moving is claimed
-- again). Lifecycle jobs are found by kind.
CREATE INDEX jobs_open ON jobs (kind, created_at) WHERE state IN ('queued', 'running');

CREATE TABLE retention_policies (
    id                uuid PRIMARY KEY,
    name              text NOT NULL,
    days              integer NOT NULL CHECK (days > 0),
    match             jsonb NOT NULL DEFAULT '{}',
    legal_obligation  boolean NOT NULL DEFAULT false,  -- refuses Art. 17 erasure until the end
    basis             text,                             -- the law or decision behind it
    preset            text,
    created_by        text NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);
CREATE UNIQUE INDEX retention_policies_name ON retention_policies (lower(name));

-- A change that could shorten retention waits here until a second user approves it.
CREATE TABLE retention_policy_changes (
    id            uuid PRIMARY KEY,
    policy_id     uuid NOT NULL REFERENCES retention_policies (id) ON DELETE CASCADE,
    action        text NOT NULL CHECK (action IN ('update', 'delete')),
    change        jsonb NOT NULL,
    state         text NOT NULL CHECK (state IN ('pending', 'applied', 'cancelled')),
    requested_by  text NOT NULL,
    requested_at  timestamptz NOT NULL,
    decided_by    text,
    decided_at    timestamptz
);
CREATE UNIQUE INDEX retention_policy_changes_pending
    ON retention_policy_changes (policy_id) WHERE state = 'pending';

CREATE TABLE legal_holds (
    id                    uuid PRIMARY KEY,
    matter                text NOT NULL,
    reason                text NOT NULL,
    query                 jsonb,                -- a saved search: its future matches are held
    created_by            text NOT NULL,
    created_at            timestamptz NOT NULL,
    release_requested_by  text,
    release_requested_at  timestamptz,
    released_by           text,
    released_at           timestamptz,
    CHECK (released_at IS NULL OR released_by IS DISTINCT FROM release_requested_by)
);
CREATE INDEX legal_holds_active ON legal_holds (created_at) WHERE released_at IS NULL;

CREATE TABLE legal_hold_recordings (
    hold_id       uuid NOT NULL REFERENCES legal_holds (id) ON DELETE CASCADE,
    recording_id  uuid NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    added_at      timestamptz NOT NULL,
    PRIMARY KEY (hold_id, recording_id)
);
CREATE INDEX legal_hold_recordings_recording ON legal_hold_recordings (recording_id);

-- Tags, comments and flags on a recording: personal data (they describe a call), erased with it.
CREATE TABLE annotations (
    id            uuid PRIMARY KEY,
    recording_id  uuid NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('tag', 'comment', 'flag')),
    value         text NOT NULL,
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL
);
CREATE INDEX annotations_recording ON annotations (recording_id, created_at);
CREATE INDEX annotations_tag ON annotations (lower(value), recording_id) WHERE kind = 'tag';

-- What retention policies match on besides the parties, extracted when the metadata arrives:
-- - src_metadata: the leaves of every <extensiondata> element the SRC sent (RFC 7865 allows any
--   vendor XML there: BroadWorks' groupID, Metaswitch's businessGroup and callType, a contact
--   centre's queue), as {"lower-cased local name": ["lower-cased value", ...]}, merged over
--   every snapshot and update of the session;
-- - direction: inbound/outbound where the SRC says so (a <direction> leaf, Metaswitch callType
--   originating/terminating, BroadWorks origCall/termCall).
-- Extracted by a trigger at write time rather than parsed at retention time: enforcement then
-- decides over millions of recordings with plain column tests, and every writer (the recorder,
-- the write-behind replay, tools, tests) fills them without knowing they exist (the same reason
-- as participants.started_at in 0005). Personal data may sit in extension data (a recorded
-- party's number): erasure clears src_metadata with the rest. A document that does not parse
-- leaves them as they were: a recording is never refused over its extension data.
ALTER TABLE recordings
    ADD COLUMN src_metadata jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN direction text CHECK (direction IN ('inbound', 'outbound'));

CREATE FUNCTION src_metadata_leaves(doc xml) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT COALESCE(jsonb_object_agg(k, v), '{}') FROM (
        SELECT k, jsonb_agg(DISTINCT val ORDER BY val) AS v FROM (
            SELECT lower((xpath('local-name(/*)', leaf))[1]::text) AS k,
                   lower(btrim((xpath('string(/*)', leaf))[1]::text)) AS val
            FROM unnest(xpath('//*[local-name()="extensiondata"]//*[not(*)]', doc)) AS leaf
        ) leaves
        WHERE k <> '' AND val <> '' AND length(val) <= 200
        GROUP BY k
        LIMIT 64
    ) kv
$$;

CREATE FUNCTION src_metadata_merge(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT COALESCE(jsonb_object_agg(k, v), '{}') FROM (
        SELECT k, jsonb_agg(DISTINCT e ORDER BY e) AS v FROM (
            SELECT key AS k, jsonb_array_elements(value) AS e FROM jsonb_each(a)
            UNION ALL
            SELECT key, jsonb_array_elements(value) FROM jsonb_each(b)
        ) x GROUP BY k
    ) y
$$;

CREATE FUNCTION metadata_events_extract() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    doc xml;
    leaves jsonb;
    dir text;
BEGIN
    BEGIN
        doc := xmlparse(document regexp_replace(NEW.document, '^\s*<\?xml[^>]*\?>', ''));
        leaves := src_metadata_leaves(doc);
        dir := CASE
            WHEN leaves->'direction' ?| array['inbound', 'in', 'incoming'] THEN 'inbound'
            WHEN leaves->'direction' ?| array['outbound', 'out', 'outgoing'] THEN 'outbound'
            WHEN leaves->'calltype' ? 'terminating' THEN 'inbound'
            WHEN leaves->'calltype' ? 'originating' THEN 'outbound'
            WHEN xpath_exists('//*[local-name()="termCall"]', doc) THEN 'inbound'
            WHEN xpath_exists('//*[local-name()="origCall"]', doc) THEN 'outbound'
        END;
    EXCEPTION WHEN OTHERS THEN
        RETURN NULL;  -- not XML we can read: nothing extracted, the event is stored as sent
    END;
    IF leaves <> '{}' OR dir IS NOT NULL THEN
        UPDATE recordings
           SET src_metadata = src_metadata_merge(src_metadata, leaves),
               direction = COALESCE(dir, direction)
         WHERE id = NEW.recording_id AND state <> 'erased';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER metadata_events_extract
    AFTER INSERT ON metadata_events
    FOR EACH ROW EXECUTE FUNCTION metadata_events_extract();
