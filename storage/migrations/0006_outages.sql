-- Surviving database outages (write-behind) and one owner per node.
--
-- Writes a recording makes while the database is away wait in the node's encrypted journal and
-- are applied when it is back; after a crash the journal is replayed, so every such write must be
-- idempotent. Updates already are; the two inserts that are not get the id of the write that made
-- them, and a replayed write with a known id does nothing.
ALTER TABLE metadata_events ADD COLUMN op_id uuid;
CREATE UNIQUE INDEX metadata_events_op_id ON metadata_events (op_id);
ALTER TABLE audit_events ADD COLUMN event_id uuid;
CREATE UNIQUE INDEX audit_events_event_id ON audit_events (event_id);

-- A session whose streams never delivered a single packet is not a good 0-second recording.
ALTER TABLE recordings ADD COLUMN no_media boolean NOT NULL DEFAULT false;

-- The running servers. A node claims its node_id at start and keeps a heartbeat; a second
-- server claiming a live node_id is refused (it would take the first one's calls for its own
-- crash leftovers). Recordings of a node whose heartbeat stopped can be recovered by others.
CREATE TABLE nodes (
    node_id         text PRIMARY KEY,
    instance_id     uuid NOT NULL,           -- this run of the server
    host            text NOT NULL,
    pid             integer NOT NULL,
    data_dir        text NOT NULL,
    started_at      timestamptz NOT NULL,
    heartbeat_at    timestamptz,             -- NULL once stopped cleanly
    draining        boolean NOT NULL DEFAULT false
);
