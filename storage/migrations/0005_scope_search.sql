-- Scoped search at millions of recordings: every participant carries its recording's started_at,
-- so "the newest calls of extension 2001" is answered from the participants indexes alone.
--
-- Before this, an agent's latest page either walked recordings newest first, testing the scope
-- per row, or fetched every recording the agent ever took part in and sorted them (thousands of
-- row lookups for a page of 50). With started_at next to number and lower(aor), the page is
-- picked in the participants index and only its rows of recordings are read (storage/search.py).
--
-- participants.started_at is a copy of recordings.started_at, kept equal by triggers rather than
-- by the writers: participants are written by the recorder (save_session_state), by erasure and
-- by tests and tools with plain INSERTs, and a copy that one writer forgot would hide calls from
-- scoped searches without any error. The BEFORE trigger overwrites whatever a writer supplies.
-- It is personal data no more than the recording's own time, and goes with the participant rows
-- when erasure deletes them.

ALTER TABLE participants ADD COLUMN started_at timestamptz;

CREATE FUNCTION participants_copy_started_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- No recording: left NULL, and the foreign key rejects the row as before.
    SELECT r.started_at INTO NEW.started_at FROM recordings r WHERE r.id = NEW.recording_id;
    RETURN NEW;
END
$$;

CREATE TRIGGER participants_started_at
    BEFORE INSERT OR UPDATE OF recording_id, started_at ON participants
    FOR EACH ROW EXECUTE FUNCTION participants_copy_started_at();

CREATE FUNCTION recordings_started_at_to_participants() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE participants SET started_at = NEW.started_at WHERE recording_id = NEW.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER recordings_started_at_moved
    AFTER UPDATE OF started_at ON recordings
    FOR EACH ROW WHEN (OLD.started_at IS DISTINCT FROM NEW.started_at)
    EXECUTE FUNCTION recordings_started_at_to_participants();

-- The existing rows, once. The old single-column indexes go first: they are replaced below and
-- would only slow the rewrite down.
DROP INDEX participants_number;
DROP INDEX participants_aor_lower;
UPDATE participants p SET started_at = r.started_at FROM recordings r WHERE r.id = p.recording_id;

-- A number or an AOR, equal or by prefix (text_pattern_ops serves =, the ~>=~/~<~ ranges scopes
-- are rendered as, and LIKE 'prefix%'), then newest first; recording_id included so the page is
-- picked without reading the table. They replace participants_number (0003) and
-- participants_aor_lower (0004) for every search those served.
CREATE INDEX participants_number_started
    ON participants (number text_pattern_ops, started_at DESC) INCLUDE (recording_id);
CREATE INDEX participants_aor_started
    ON participants (lower(aor) text_pattern_ops, started_at DESC) INCLUDE (recording_id);

-- Newest first across all parties, with what scopes compare: for wide scopes ("every agent",
-- sip:*@pbx.example.com) walking this until a page is full beats sorting a million matches.
CREATE INDEX participants_started
    ON participants (started_at DESC, recording_id) INCLUDE (number, aor);

-- Which plan wins depends on how many participants a scope matches: 500 extensions of 0.1 %
-- each fall through the default statistics (100 most common values) and were estimated at a
-- quarter of their real count. A finer sample keeps the estimates near the truth.
ALTER TABLE participants ALTER COLUMN number SET STATISTICS 1000;
ALTER INDEX participants_aor_started ALTER COLUMN 1 SET STATISTICS 1000;
ANALYZE participants;
