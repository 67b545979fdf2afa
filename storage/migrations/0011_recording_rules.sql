-- Recording rules (what may be recorded), consent withdrawn mid-call (opt-out), and restricted
-- recordings (who may hear them).
--
-- A rule matches a call on its parties (number patterns, AOR globs), its direction and the SRC's
-- extension metadata — the match of a retention policy (0009) — and decides: record,
-- metadata_only or do_not_record. The recorder decides at INVITE time; the facts it decides on
-- come from the same SQL the 0009 trigger uses (src_metadata_facts below), so a rule and a
-- retention policy can never read one document differently.

CREATE TABLE recording_rules (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    action       text NOT NULL CHECK (action IN ('record', 'metadata_only', 'do_not_record')),
    restricted   boolean NOT NULL DEFAULT false,     -- recordings it matches are restricted
    opt_out      text CHECK (opt_out IN ('keep', 'discard')),  -- NULL: [rules] opt_out_default
    priority     integer NOT NULL DEFAULT 100,       -- lower first; the first match decides
    match        jsonb NOT NULL DEFAULT '{}',
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE UNIQUE INDEX recording_rules_name ON recording_rules (lower(name));

-- Every node caches the rules; this counter, read with each INVITE's facts, says when to reload.
CREATE TABLE recording_rules_version (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version    bigint NOT NULL
);
INSERT INTO recording_rules_version VALUES (true, 1);

CREATE FUNCTION recording_rules_bump() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE recording_rules_version SET version = version + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER recording_rules_bump
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON recording_rules
    FOR EACH STATEMENT EXECUTE FUNCTION recording_rules_bump();

ALTER TABLE recordings
    ADD COLUMN restricted boolean NOT NULL DEFAULT false,
    ADD COLUMN recording_mode text NOT NULL DEFAULT 'record'
        CHECK (recording_mode IN ('record', 'metadata_only')),
    ADD COLUMN rule_id uuid,                  -- the rule that decided (none: the default)
    ADD COLUMN opt_out text CHECK (opt_out IN ('keep', 'discard')),  -- what an opt-out does
    ADD COLUMN opted_out_at timestamptz,
    ADD COLUMN opted_out_by text;
-- Users without the restricted permission: "not one of these" is an anti-join on a small index.
CREATE INDEX recordings_restricted ON recordings (id) WHERE restricted;

-- Who else may see restricted recordings: a permission granted per user on top of the role
-- (admins hold every permission).
ALTER TABLE users ADD COLUMN grants text[] NOT NULL DEFAULT '{}';

-- The extraction of 0009 as one function of a document, for the trigger and for the recorder
-- (which asks before it answers an INVITE, when no row exists yet).
CREATE FUNCTION src_metadata_facts(document text, OUT leaves jsonb, OUT direction text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    doc xml;
BEGIN
    leaves := '{}';
    BEGIN
        doc := xmlparse(document regexp_replace(document, '^\s*<\?xml[^>]*\?>', ''));
        leaves := src_metadata_leaves(doc);
        direction := CASE
            WHEN leaves->'direction' ?| array['inbound', 'in', 'incoming'] THEN 'inbound'
            WHEN leaves->'direction' ?| array['outbound', 'out', 'outgoing'] THEN 'outbound'
            WHEN leaves->'calltype' ? 'terminating' THEN 'inbound'
            WHEN leaves->'calltype' ? 'originating' THEN 'outbound'
            WHEN xpath_exists('//*[local-name()="termCall"]', doc) THEN 'inbound'
            WHEN xpath_exists('//*[local-name()="origCall"]', doc) THEN 'outbound'
        END;
    EXCEPTION WHEN OTHERS THEN
        leaves := NULL;  -- not XML we can read: nothing extracted
        direction := NULL;
    END;
END
$$;

CREATE OR REPLACE FUNCTION metadata_events_extract() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    facts record;
BEGIN
    facts := src_metadata_facts(NEW.document);
    IF facts.leaves IS NULL THEN
        RETURN NULL;  -- not XML we can read: the event is stored as sent
    END IF;
    IF facts.leaves <> '{}' OR facts.direction IS NOT NULL THEN
        UPDATE recordings
           SET src_metadata = src_metadata_merge(src_metadata, facts.leaves),
               direction = COALESCE(facts.direction, direction)
         WHERE id = NEW.recording_id AND state <> 'erased';
    END IF;
    RETURN NULL;
END
$$;
