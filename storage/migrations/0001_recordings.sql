-- Recording sessions as received over SIPREC: one row per session from the INVITE on, the
-- metadata event log (every snapshot or partial update as received), and the current
-- participants and streams derived from that log.

CREATE TABLE recordings (
    id              uuid PRIMARY KEY,
    node_id         text NOT NULL,
    call_id         text NOT NULL,
    dialog_id       text,
    sip_session_id  text,                    -- Session-ID header (RFC 7989), when sent
    session_id      text,                    -- SIPREC recording session id from the metadata
    state           text NOT NULL CHECK (state IN ('offered', 'recording', 'complete',
                                                   'interrupted', 'failed')),
    end_reason      text,
    started_at      timestamptz NOT NULL,    -- the INVITE arrived
    answered_at     timestamptz,
    ended_at        timestamptz,
    transport       text NOT NULL,
    src_address     text NOT NULL            -- the SRC's signalling address (an SBC, not a party)
);
CREATE INDEX recordings_call_id ON recordings (call_id);
CREATE INDEX recordings_session_id ON recordings (session_id);
CREATE INDEX recordings_started_at ON recordings (started_at DESC, id);
CREATE INDEX recordings_open ON recordings (node_id) WHERE state IN ('offered', 'recording');

CREATE TABLE metadata_events (
    id              bigserial PRIMARY KEY,
    recording_id    uuid NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    received_at     timestamptz NOT NULL,
    sip_method      text NOT NULL,
    datamode        text NOT NULL CHECK (datamode IN ('complete', 'partial')),
    document        text NOT NULL            -- the rs-metadata XML as received
);
CREATE INDEX metadata_events_recording ON metadata_events (recording_id, id);

CREATE TABLE participants (
    recording_id    uuid NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    participant_id  text NOT NULL,
    aor             text,
    aor_raw         text,
    name            text,
    joined_at       timestamptz,
    left_at         timestamptz,
    present         boolean NOT NULL,
    PRIMARY KEY (recording_id, participant_id)
);
CREATE INDEX participants_aor ON participants (aor);

CREATE TABLE streams (
    recording_id    uuid NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    m_index         integer NOT NULL,        -- position of the m-line in the SDP
    label           text,
    stream_id       text,                    -- metadata stream id the label resolves to
    kind            text NOT NULL,
    accepted        boolean NOT NULL,
    codec           text,                    -- e.g. PCMU/8000
    telephone_event integer,                 -- payload type, when negotiated
    srtp_suite      text,
    local_port      integer,
    remote_address  text,
    remote_port     integer,
    direction       text,
    senders         text[] NOT NULL DEFAULT '{}',  -- participant ids sending this stream
    PRIMARY KEY (recording_id, m_index)
);

-- Append-only trail of security-relevant events. The hash chain (prev_hash/hash) makes any edit
-- or deletion detectable; it is filled by storage/audit.py.
CREATE TABLE audit_events (
    seq             bigserial PRIMARY KEY,
    at              timestamptz NOT NULL,
    actor           text NOT NULL,
    action          text NOT NULL,
    target          text,
    source          text,
    outcome         text NOT NULL,
    details         jsonb NOT NULL DEFAULT '{}',
    prev_hash       bytea NOT NULL,
    hash            bytea NOT NULL
);
CREATE INDEX audit_events_at ON audit_events (at);
