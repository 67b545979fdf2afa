"""Recording metadata as an event log: complete snapshots replace, partial updates merge
(RFC 7865 6.1.1), checked against the interop sequences and the operator's stories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siprec_server.siprec.metadata import (
    MetadataDocument,
    MetadataError,
    ParticipantInfo,
    StreamInfo,
    parse_metadata,
)
from siprec_server.siprec.metadata_state import (
    Participant,
    RecordingMetadata,
    apply_metadata,
    replay_metadata,
)
from tests.unit.test_metadata import metadata_xml
from tests.unit.test_multipart import load_interop, requires_interop

T0 = datetime(2024, 5, 13, 3, 55, 43, tzinfo=UTC)
T1 = T0 + timedelta(seconds=20)
T2 = T0 + timedelta(seconds=40)
RFC = "urn:ietf:params:xml:ns:recording:1"


def xml(body: str) -> MetadataDocument:
    return parse_metadata(f'<recording xmlns="{RFC}">{body}</recording>'.encode())


def interop_document(name: str) -> MetadataDocument:
    return parse_metadata(load_interop(name).metadata_bytes())


def stream_view(state: RecordingMetadata) -> dict[str, tuple[str | None, set[str], set[str]]]:
    return {s.id: (s.label, set(s.senders), set(s.receivers)) for s in state.streams.values()}


# --- interop sequences --------------------------------------------------------------------------


@requires_interop
def test_rfc7865_partial_update_puts_bob_on_hold() -> None:
    expect = load_interop("rfc7865_2").expect["metadata"]
    state = replay_metadata(
        [(T0, interop_document("rfc7865_1")), (T1, interop_document("rfc7865_2"))]
    )
    assert state is not None
    assert state.session_id == "hVpd7YQgRW2nD22h7q60JQ=="  # kept: the partial has no session
    assert stream_view(state) == {
        s["stream_id"]: (s["label"], set(s["sent_by"]), set(s["received_by"]))
        for s in expect["streams_after_merge"]
    }
    for wanted in expect["participants"]:
        participant = state.participants[wanted["id"]]
        assert (participant.aor, participant.name, participant.present) == (
            wanted["aor"],
            wanted["name"],
            True,
        )
    assert state.senders_of_label("96") == ()
    assert [p.name for p in state.senders_of_label("98")] == ["Bob"]


@requires_interop
def test_avaya_placeholder_is_replaced_by_the_real_party_in_the_update() -> None:
    expect = load_interop("avaya_sbce_2").expect["metadata"]
    first = apply_metadata(None, interop_document("avaya_sbce_1"), T0)
    assert {p.id for p in first.current_participants()} == {
        "b536ff63b7f3643d4d7b",
        "abcdef12345678901234",
    }
    assert first.stream_by_label("20") is None  # the stream_id="" element was left out
    second = apply_metadata(first, interop_document("avaya_sbce_2"), T1)
    current = {p.id for p in second.current_participants()}
    for added in expect["participants_added"]:
        assert added in current
        assert second.participants[added].joined_at == datetime(2017, 2, 13, 12, 54, 36, tzinfo=UTC)
    for removed in expect["participants_removed"]:
        gone = second.participants[removed]  # kept for the history
        assert (gone.present, gone.left_at) == (False, T1)
        assert gone.aor == "sip:ASBCE@asbce.com"
    for wanted in expect["streams"]:
        stream = second.streams[wanted["stream_id"]]
        assert stream.label == wanted["label"]
        assert set(stream.senders) == set(wanted["sent_by"])
        assert set(stream.receivers) == set(wanted["received_by"])
    assert [p.aor for p in second.senders_of_label("20")] == ["sip:7204541001@10.64.110.32"]


@requires_interop
def test_broadworks_update_grows_the_conference_from_two_to_three() -> None:
    message = load_interop("broadworks_2")
    expect = message.expect["metadata"]
    full = message.metadata_bytes()
    added = expect["participants_added"][0]
    start = full.index(f'<participant id="{added}"'.encode())
    end = full.index(b"</participant>", start) + len(b"</participant>")
    two_party = parse_metadata(full[:start] + full[end:])
    assert len(two_party.participants) == 2

    first = apply_metadata(None, two_party, T0)
    second = apply_metadata(first, parse_metadata(full), T1)
    assert [p.id for p in second.current_participants()] == [
        p["id"] for p in expect["participants"]
    ]
    assert not [p for p in second.participants.values() if not p.present]
    assert second.participants[added].joined_at == T1
    assert (
        second.participants[added].aor == "sip:86074075017701@cloudcalling-e.onestreamnetworks.com"
    )
    (stream,) = second.streams.values()
    assert (stream.label, stream.mode) == ("1", "mixed")
    assert list(stream.senders) == expect["streams"][0]["sent_by"]
    assert second.recording_id == "urn:uuid:57c64971-bb67-4845-9d51-70b7f564bc78"
    assert any(e.element == "broadWorksRecordingMetadata" for e in second.extensions)


# --- complete snapshots -------------------------------------------------------------------------

TWO_PARTY = """
    <datamode>complete</datamode>
    <session session_id="s1"><sipSessionID>abc;remote=def</sipSessionID></session>
    <participant participant_id="alice"><nameID aor="sip:alice@example.com"><name>Alice</name></nameID></participant>
    <participant participant_id="bob"><nameID aor="4155550100"/></participant>
    <stream stream_id="st1"><label>1</label></stream>
    <stream stream_id="st2"><label>2</label></stream>
    <participantstreamassoc participant_id="alice"><send>st1</send><recv>st2</recv></participantstreamassoc>
    <participantstreamassoc participant_id="bob"><send>st2</send><recv>st1</recv></participantstreamassoc>
"""


def two_party() -> RecordingMetadata:
    return apply_metadata(None, xml(TWO_PARTY), T0)


def test_first_snapshot_builds_the_state() -> None:
    state = two_party()
    assert (state.session_id, state.sip_session_id) == ("s1", "abc;remote=def")
    assert state.participants["bob"].aor == "tel:4155550100"
    assert state.participants["bob"].aor_raw == "4155550100"
    assert state.participants["alice"].joined_at == T0  # no associate-time: first seen
    assert [p.id for p in state.senders_of_label("1")] == ["alice"]
    assert state.streams["st1"].receivers == ("bob",)
    assert state.stream_by_label(" 2 ") is state.streams["st2"]
    assert state.stream_by_label("3") is None
    assert state.senders_of_label("3") == ()
    assert state.updated_at == T0


def test_complete_snapshot_marks_absent_participants_left_and_replaces_streams() -> None:
    state = apply_metadata(
        two_party(),
        xml(
            """<datamode>complete</datamode>
            <participant participant_id="alice"><nameID aor="sip:alice@example.com"/></participant>
            <stream stream_id="st9"><label>9</label></stream>
            <participantstreamassoc participant_id="alice"><send>st9</send></participantstreamassoc>"""
        ),
        T1,
    )
    bob = state.participants["bob"]
    assert (bob.present, bob.left_at, bob.joined_at) == (False, T1, T0)
    assert list(state.streams) == ["st9"]
    assert state.streams["st9"].senders == ("alice",)
    assert state.participants["alice"].name == "Alice"  # not restated, so kept
    assert state.session_id == "s1"
    assert [p.id for p in state.current_participants()] == ["alice"]


def test_left_participant_keeps_the_first_left_at_over_later_snapshots() -> None:
    solo = '<participant participant_id="alice"/>'
    state = replay_metadata([(T0, xml(TWO_PARTY)), (T1, xml(solo)), (T2, xml(solo))])
    assert state is not None
    assert state.participants["bob"].left_at == T1


def test_participant_coming_back_in_a_snapshot_is_present_again() -> None:
    state = replay_metadata(
        [
            (T0, xml(TWO_PARTY)),
            (T1, xml('<participant participant_id="alice"/>')),
            (T2, xml(TWO_PARTY)),
        ]
    )
    assert state is not None
    bob = state.participants["bob"]
    assert (bob.present, bob.left_at, bob.joined_at) == (True, None, T0)


def test_complete_snapshot_without_stream_statements_clears_the_sets() -> None:
    state = apply_metadata(
        two_party(),
        xml(
            '<participant participant_id="alice"/><participant participant_id="bob"/><stream stream_id="st1"><label>1</label></stream>'
        ),
        T1,
    )
    assert state.streams["st1"].senders == ()
    assert state.participants["alice"].send == ()


def test_associate_time_from_the_document_is_joined_at() -> None:
    state = apply_metadata(
        None,
        xml(
            """<participant participant_id="a"/>
            <participantsessionassoc participant_id="a" session_id="s">
              <associate-time>2017-01-25T23:51:27+0100</associate-time>
            </participantsessionassoc>"""
        ),
        T0,
    )
    assert state.participants["a"].joined_at == datetime(2017, 1, 25, 22, 51, 27, tzinfo=UTC)


# --- partial updates ----------------------------------------------------------------------------


def test_partial_update_replaces_send_set() -> None:
    state = apply_metadata(
        two_party(),
        xml(
            """<datamode>partial</datamode>
            <participantstreamassoc participant_id="alice"><recv>st2</recv></participantstreamassoc>"""
        ),
        T1,
    )
    alice = state.participants["alice"]
    assert (alice.send, alice.recv) == ((), ("st2",))
    assert state.streams["st1"].senders == ()
    assert state.streams["st2"].senders == ("bob",)  # untouched
    assert set(state.streams) == {"st1", "st2"}  # a partial never drops streams


def test_partial_update_removes_participant_with_disassociate_time() -> None:
    state = apply_metadata(
        two_party(),
        xml(
            """<datamode>partial</datamode>
            <participantsessionassoc participant_id="bob" session_id="s1">
              <disassociate-time>2024-05-13T03:56:00Z</disassociate-time>
            </participantsessionassoc>"""
        ),
        T1,
    )
    bob = state.participants["bob"]
    assert (bob.present, bob.left_at) == (False, datetime(2024, 5, 13, 3, 56, tzinfo=UTC))
    assert bob.aor == "tel:4155550100"
    assert bob.send == ("st2",)  # history: the channel still shows who was heard on it
    assert state.streams["st2"].senders == ("bob",)
    assert state.participants["alice"].present


def test_unreadable_disassociate_time_still_removes_at_arrival() -> None:
    state = apply_metadata(
        two_party(),
        xml(
            '<datamode>partial</datamode><participant participant_id="bob"><disassociate-time>soon</disassociate-time></participant>'
        ),
        T1,
    )
    assert (state.participants["bob"].present, state.participants["bob"].left_at) == (False, T1)


def test_partial_update_adds_a_participant_and_a_stream() -> None:
    state = apply_metadata(
        two_party(),
        xml(
            """<datamode>partial</datamode>
            <participant participant_id="carol"><nameID aor="carol@example.com"><name>Carol</name></nameID></participant>
            <participantsessionassoc participant_id="carol" session_id="s1">
              <associate-time>2024-05-13T03:56:10Z</associate-time>
            </participantsessionassoc>
            <stream stream_id="st3"><label>3</label></stream>
            <participantstreamassoc participant_id="carol"><send>st3</send><recv>st1</recv></participantstreamassoc>"""
        ),
        T1,
    )
    carol = state.participants["carol"]
    assert (carol.aor, carol.present, carol.joined_at) == (
        "sip:carol@example.com",
        True,
        datetime(2024, 5, 13, 3, 56, 10, tzinfo=UTC),
    )
    assert list(state.participants) == ["alice", "bob", "carol"]
    assert state.streams["st3"].senders == ("carol",)
    assert state.streams["st1"].receivers == ("bob", "carol")


def test_partial_name_change_keeps_everything_else() -> None:
    state = apply_metadata(
        two_party(),
        xml(
            '<datamode>partial</datamode><participant participant_id="bob"><nameID><name xml:lang="en">Bob B.</name></nameID></participant>'
        ),
        T1,
    )
    bob = state.participants["bob"]
    assert (bob.name, bob.name_lang, bob.aor, bob.send, bob.joined_at, bob.present) == (
        "Bob B.",
        "en",
        "tel:4155550100",
        ("st2",),
        T0,
        True,
    )


def test_partial_stream_fields_merge() -> None:
    state = apply_metadata(
        two_party(),
        xml('<datamode>partial</datamode><stream stream_id="st1"><mode>mixed</mode></stream>'),
        T1,
    )
    assert (state.streams["st1"].label, state.streams["st1"].mode) == ("1", "mixed")
    assert state.streams["st1"].senders == ("alice",)


def test_partial_rejoin_after_leaving() -> None:
    leave = xml(
        '<datamode>partial</datamode><participantsessionassoc participant_id="bob">'
        "<disassociate-time>2024-05-13T03:56:00Z</disassociate-time></participantsessionassoc>"
    )
    rejoin = xml(
        '<datamode>partial</datamode><participantsessionassoc participant_id="bob">'
        "<associate-time>2024-05-13T03:57:00Z</associate-time></participantsessionassoc>"
    )
    state = replay_metadata([(T0, xml(TWO_PARTY)), (T1, leave), (T2, rejoin)])
    assert state is not None
    bob = state.participants["bob"]
    assert (bob.present, bob.left_at, bob.joined_at) == (True, None, T0)


def test_partial_first_document_starts_a_state() -> None:
    state = apply_metadata(
        None, xml('<datamode>partial</datamode><participant participant_id="x"/>'), T0
    )
    assert state.participants["x"] == Participant(id="x", joined_at=T0, present=True)
    assert state.session_id is None


def test_partial_extensions_merge_and_complete_extensions_replace() -> None:
    ext = '<participant participant_id="alice"><v:tag xmlns:v="urn:v">{}</v:tag></participant>'
    state = replay_metadata(
        [
            (T0, xml(TWO_PARTY + ext.format("one"))),
            (T1, xml("<datamode>partial</datamode>" + ext.format("two"))),
        ]
    )
    assert state is not None
    assert [dict(e.values) for e in state.extensions] == [{"tag": "two"}]
    state = apply_metadata(state, xml(TWO_PARTY), T2)
    assert state.extensions == ()


# --- the fold itself ----------------------------------------------------------------------------


def test_replay_of_an_empty_log_is_none() -> None:
    assert replay_metadata([]) is None


def test_naive_arrival_times_are_utc() -> None:
    state = apply_metadata(None, xml(TWO_PARTY), datetime(2024, 1, 1, 12, 0))
    assert state.participants["alice"].joined_at == datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


def test_hand_built_documents_with_only_one_set_given() -> None:
    doc = MetadataDocument(
        datamode="partial",
        participants=(ParticipantInfo(id="alice", recv=("st2",)),),
        streams=(StreamInfo(id="st2"),),
    )
    state = apply_metadata(two_party(), doc, T1)
    assert (state.participants["alice"].send, state.participants["alice"].recv) == ((), ("st2",))
    assert state.streams["st2"].label == "2"


def test_states_are_immutable() -> None:
    state = two_party()
    with pytest.raises(TypeError):
        state.participants["eve"] = Participant(id="eve")  # type: ignore[index]
    with pytest.raises(AttributeError):
        state.session_id = "other"  # type: ignore[misc]


# --- hypothesis ---------------------------------------------------------------------------------

ids = st.sampled_from(["p1", "p2", "p3", "st1", "st2"])
times = st.one_of(st.none(), st.datetimes(timezones=st.just(UTC)), st.datetimes())
id_sets = st.one_of(st.none(), st.lists(ids, max_size=3).map(tuple))
participants = st.builds(
    ParticipantInfo,
    id=ids,
    aor=st.one_of(st.none(), st.just("sip:a@b")),
    name=st.one_of(st.none(), st.text(max_size=5)),
    associate_time=times,
    disassociate_time=times,
    disassociated=st.booleans(),
    send=id_sets,
    recv=id_sets,
)
streams = st.builds(StreamInfo, id=ids, label=st.one_of(st.none(), st.sampled_from(["1", "2"])))
documents = st.builds(
    MetadataDocument,
    datamode=st.sampled_from(["complete", "partial"]),
    participants=st.lists(participants, max_size=4).map(tuple),
    streams=st.lists(streams, max_size=3).map(tuple),
)


def check_invariants(state: RecordingMetadata, doc: MetadataDocument) -> None:
    for info in doc.participants:
        assert info.id in state.participants
    if doc.datamode == "complete":
        assert set(state.streams) == {s.id for s in doc.streams}
    for stream in state.streams.values():
        for sender in stream.senders:
            assert stream.id in state.participants[sender].send
    for participant in state.participants.values():
        assert participant.joined_at is not None and participant.joined_at.tzinfo is not None
        assert participant.present == (participant.left_at is None)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.datetimes(), documents), max_size=6))
def test_any_sequence_of_documents_folds_without_error(
    events: list[tuple[datetime, MetadataDocument]],
) -> None:
    state = None
    for received_at, doc in events:
        state = apply_metadata(state, doc, received_at)
        check_invariants(state, doc)
    assert replay_metadata(events) == state


@settings(max_examples=100, deadline=None)
@given(st.lists(metadata_xml(), min_size=1, max_size=4))
def test_any_sequence_of_parsed_documents_folds_without_error(bodies: list[bytes]) -> None:
    state = None
    for index, body in enumerate(bodies):
        try:
            doc = parse_metadata(body)
        except MetadataError:
            continue
        state = apply_metadata(state, doc, T0 + timedelta(seconds=index))
        check_invariants(state, doc)
