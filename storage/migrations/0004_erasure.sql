-- Erasure (GDPR art. 17) by crypto-shredding, and the indexes search needs at millions of
-- recordings.
--
-- An erased recording keeps a tombstone without personal data: its id, times, duration, state
-- 'erased', when, by whom and why. erased_at is set in the same transaction that destroys the
-- wrapped data key; state becomes 'erased' once the file and the personal metadata are gone, so
-- `erased_at IS NOT NULL AND state <> 'erased'` lists erasures to finish after a crash.

ALTER TABLE recordings DROP CONSTRAINT recordings_state_check;
ALTER TABLE recordings ADD CONSTRAINT recordings_state_check
    CHECK (state IN ('offered', 'recording', 'complete', 'interrupted', 'failed', 'erased'));

ALTER TABLE recordings
    ALTER COLUMN call_id DROP NOT NULL,       -- the Call-ID can name a party (user@host)
    ALTER COLUMN src_address DROP NOT NULL,
    ADD COLUMN erased_at       timestamptz,
    ADD COLUMN erased_by       text,          -- user id, or "system:<job>"
    ADD COLUMN erasure_reason  text,
    ADD CONSTRAINT recordings_erased_has_tombstone
        CHECK (state <> 'erased' OR (erased_at IS NOT NULL AND erased_by IS NOT NULL));

CREATE INDEX recordings_erasing ON recordings (erased_at)
    WHERE erased_at IS NOT NULL AND state <> 'erased';

-- Search by AOR (any party) compares lower(aor) for equality; text_pattern_ops also serves the
-- prefix LIKE of AOR scope globs like 'sip:agent1%'. Search by number uses participants_number
-- (0003). Pages are read in (started_at DESC, id ASC) order, which recordings_started_at (0001)
-- serves as it is.
CREATE INDEX participants_aor_lower ON participants (lower(aor) text_pattern_ops);

-- Name search is a case-insensitive substring (LIKE '%smith%'), which only a trigram index
-- serves. pg_trgm ships with PostgreSQL's contrib and is a trusted extension (PostgreSQL 13+):
-- a database owner may create it without superuser. Where it is not installed or not allowed,
-- the migration still succeeds and name search falls back to scanning participants (slower at
-- millions of rows; the same results).
DO $$
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'pg_trgm unavailable (%): name search will scan participants', SQLERRM;
    END;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        EXECUTE 'CREATE INDEX participants_name_trgm ON participants
                 USING gin (lower(name) gin_trgm_ops)';
    END IF;
END
$$;
