"""Reading recording metadata: the interop cases, the dialects of SIPREC.md, hostile XML, the
lenient scalar readers, and hypothesis-built documents from the SIPREC vocabulary."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siprec_server.siprec.metadata import (
    MAX_DOCUMENT_BYTES,
    MAX_ELEMENTS,
    MAX_EXTENSIONS,
    MetadataDocument,
    MetadataError,
    normalize_aor,
    parse_metadata,
    parse_timestamp,
)
from tests.unit.test_multipart import interop_names, load_interop, requires_interop

REGRESSIONS = Path(__file__).resolve().parents[1] / "regressions" / "metadata"
RFC = "urn:ietf:params:xml:ns:recording:1"


def doc(body: str, root: str = f'<recording xmlns="{RFC}">') -> MetadataDocument:
    name = root[1:].split()[0].rstrip(">")
    return parse_metadata(f'<?xml version="1.0" encoding="UTF-8"?>\n{root}{body}</{name}>'.encode())


# --- interop cases ------------------------------------------------------------------------------


def senders(document: MetadataDocument, stream_id: str) -> set[str]:
    return {p.id for p in document.participants if stream_id in (p.send or ())}


def receivers(document: MetadataDocument, stream_id: str) -> set[str]:
    return {p.id for p in document.participants if stream_id in (p.recv or ())}


def extension_matches(document: MetadataDocument, wanted: dict[str, Any]) -> bool:
    element = wanted["element"].split("/")[-1].split(":")[-1]
    namespace = wanted["namespace"].split(" ")[0]
    parent = wanted.get("parent", "").split(" ")
    for extension in document.extensions:
        if extension.element != element or extension.namespace != namespace:
            continue
        if parent[0] and extension.parent_kind != parent[0]:
            continue
        if len(parent) > 1 and extension.parent_id != parent[1]:
            continue
        values = dict(extension.values)
        for key, value in wanted.get("value", {}).items():
            if key == "direction":  # BroadWorks: the name of the element under <callType>
                if not any(f"callType/{value}/" in path for path in values):
                    break
            elif values.get(f"@{key}") != value and not any(
                (path == key or path.endswith("/" + key)) and text == value
                for path, text in values.items()
            ):
                break
        else:
            return True
    return False


@requires_interop
@pytest.mark.parametrize("name", interop_names())
def test_interop_metadata_reads_as_expected(name: str) -> None:
    message = load_interop(name)
    expect = message.expect["metadata"]
    document = parse_metadata(message.metadata_bytes())
    assert document.datamode == expect["datamode"]
    assert document.session_id == expect["session_id"]
    assert document.namespace == expect["namespace"]
    if "recording_id" in expect:
        assert document.recording_id == expect["recording_id"]
    if "group_id" in expect:
        assert document.group_ids == (expect["group_id"],)
    if "sip_session_id" in expect:
        assert document.sessions[0].sip_session_id == expect["sip_session_id"]
    if "session_group_ref" in expect:
        assert document.sessions[0].group_ref == expect["session_group_ref"]
    for wanted in expect.get("participants", []):
        participant = document.participant(wanted["id"])
        if document.datamode == "partial" and participant is None:
            continue  # the partial example lists the state after the merge, not the delta
        assert participant is not None, wanted["id"]
        if document.datamode == "complete":
            assert participant.aor_raw == wanted["aor"]
            normalized = wanted.get("aor_normalized", wanted["aor"]).split(" ")[0]
            assert participant.aor == normalized
            if "name" in wanted:
                assert participant.name == wanted["name"]
            if "name_lang" in wanted:
                assert participant.name_lang == wanted["name_lang"]
    for wanted in expect.get("streams", []):
        stream = document.stream(wanted["stream_id"])
        if wanted["stream_id"] == "":
            assert stream is None  # avaya_sbce_1: no usable id, so left out
            assert any("stream without an id" in w for w in document.warnings)
            continue
        assert stream is not None, wanted["stream_id"]
        assert stream.label == wanted["label"]
        if "mode" in wanted:
            assert stream.mode == wanted["mode"]
        if wanted.get("sent_by") is not None:
            assert senders(document, stream.id) == set(wanted["sent_by"])
        if wanted.get("received_by") is not None:
            assert receivers(document, stream.id) == set(wanted["received_by"])
    for wanted in expect.get("extensions", []):
        assert extension_matches(document, wanted), wanted
    for delta in expect.get("delta", {}).get("participantstreamassoc", []):
        participant = document.participant(delta["participant_id"])
        assert participant is not None
        assert participant.send == tuple(delta["send"])
        assert participant.recv == tuple(delta["recv"])


# --- dialects -----------------------------------------------------------------------------------


def test_rfc_document_with_every_association_element() -> None:
    document = doc(
        """
        <datamode>complete</datamode>
        <group group_id="g1"><associate-time>2010-12-16T23:41:07Z</associate-time></group>
        <session session_id="s1">
          <sipSessionID>ab30317f;
                remote=47755a9d</sipSessionID>
          <group-ref>g1
          </group-ref>
          <start-time>2010-12-16T23:41:07Z</start-time>
          <end-time>2010-12-16T23:51:07.250+01:00</end-time>
        </session>
        <participant participant_id="p1">
          <nameID aor="sip:alice@atlanta.com"><name xml:lang="it">Alice</name></nameID>
        </participant>
        <stream stream_id="st1" session_id="s1"><label>96</label></stream>
        <sessionrecordingassoc session_id="s1">
          <associate-time>2010-12-16T23:41:07Z</associate-time>
        </sessionrecordingassoc>
        <participantsessionassoc participant_id="p1" session_id="s1">
          <associate-time>2010-12-16T23:41:08Z</associate-time>
        </participantsessionassoc>
        <participantstreamassoc participant_id="p1"><send>st1</send></participantstreamassoc>
        """
    )
    (session,) = document.sessions
    assert session.sip_session_id == "ab30317f;remote=47755a9d"
    assert session.group_ref == "g1"
    assert session.start_time == datetime(2010, 12, 16, 23, 41, 7, tzinfo=UTC)
    assert session.end_time == datetime(2010, 12, 16, 22, 51, 7, 250000, tzinfo=UTC)
    assert session.associate_time == datetime(2010, 12, 16, 23, 41, 7, tzinfo=UTC)
    (alice,) = document.participants
    assert (alice.aor, alice.name, alice.name_lang, alice.session) == (
        "sip:alice@atlanta.com",
        "Alice",
        "it",
        "s1",
    )
    assert alice.associate_time == datetime(2010, 12, 16, 23, 41, 8, tzinfo=UTC)
    assert (alice.send, alice.recv) == (("st1",), ())
    assert document.streams[0].session == "s1"
    assert document.group_ids == ("g1",)


@pytest.mark.parametrize(
    "root",
    [
        f'<recording xmlns="{RFC}">',
        '<recording xmlns="urn:ietf:params:xml:ns:recording">',
        '<recording_metadata xmlns="urn:ietf:params:xml:ns:siprec">',
        "<recording>",
        f'<tns:recording xmlns:tns="{RFC}">',
        "<tns:recording>",  # a prefix nobody declared
    ],
)
def test_every_namespace_and_prefix_style_reads_the_same(root: str) -> None:
    prefix = "tns:" if root.startswith("<tns:") else ""
    body = f"""
        <{prefix}dataMode>Partial</{prefix}dataMode>
        <{prefix}participant {prefix and ""}participant_id="p1">
          <{prefix}nameID aor="sip:a@b"><{prefix}name>A</{prefix}name></{prefix}nameID>
        </{prefix}participant>
        <{prefix}participantstreamassoc participant_id="p1">
          <{prefix}recv>s1</{prefix}recv>
        </{prefix}participantstreamassoc>
    """
    name = root[1:].split()[0].rstrip(">")
    document = parse_metadata(f"{root}{body}</{name}>".encode())
    assert document.datamode == "partial"
    (participant,) = document.participants
    assert (participant.aor, participant.name, participant.send, participant.recv) == (
        "sip:a@b",
        "A",
        (),
        ("s1",),
    )


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("<datamode>complete</datamode>", "complete"),
        ("<dataMode>Complete</dataMode>", "complete"),
        ("<DATAMODE> PARTIAL </DATAMODE>", "partial"),
        ("", "complete"),
        ("<datamode>bogus</datamode>", "complete"),
    ],
)
def test_datamode_spellings(text: str, mode: str) -> None:
    assert doc(text).datamode == mode


def test_draft_style_ids_refs_and_send_inside_participant() -> None:
    document = doc(
        """
        <session id="s1"><associate-time>2019-03-09T16:50:20</associate-time></session>
        <participant id="p1" session="s1">
          <nameID aor="sip:9000@192.0.2.1"><name>9000</name></nameID>
          <send>st1</send>
          <associate-time>2019-03-09T16:50:20</associate-time>
          <disassociate-time>2019-03-09T16:55:00+0300</disassociate-time>
        </participant>
        <stream id="st1" session="s1">
          <label>16777227</label><mode>separate</mode>
          <associate-time>2019-03-09T16:50:20</associate-time>
          <disassociate-time>2019-03-09T16:55:00Z</disassociate-time>
        </stream>
        """,
        root='<recording xmlns="urn:ietf:params:xml:ns:recording">',
    )
    assert document.session_id == "s1"
    (participant,) = document.participants
    assert participant.session == "s1"
    assert (participant.send, participant.recv) == (("st1",), ())
    assert participant.disassociated
    assert participant.disassociate_time == datetime(2019, 3, 9, 13, 55, tzinfo=UTC)
    (stream,) = document.streams
    assert (stream.label, stream.mode, stream.session) == ("16777227", "separate", "s1")
    assert stream.disassociate_time == datetime(2019, 3, 9, 16, 55, tzinfo=UTC)


def test_broadworks_aor_element_and_send_with_nested_id() -> None:
    document = doc(
        """
        <dataMode>complete</dataMode>
        <recording id="urn:uuid:r1"><requestor>SRC</requestor><type>selective</type></recording>
        <session id="urn:uuid:s1" group="urn:uuid:g1"/>
        <participant id="urn:uuid:p1" session="urn:uuid:s1">
          <aor>86074075017701@example.com</aor>
          <send>
            <id>urn:uuid:st1</id>
          </send>
          <recv><id>urn:uuid:st2</id><id>urn:uuid:st3</id></recv>
        </participant>
        """,
        root='<recording_metadata xmlns="urn:ietf:params:xml:ns:siprec">',
    )
    assert document.recording_id == "urn:uuid:r1"
    assert document.sessions[0].group_ref == "urn:uuid:g1"
    (participant,) = document.participants
    assert participant.aor_raw == "86074075017701@example.com"
    assert participant.aor == "sip:86074075017701@example.com"
    assert participant.send == ("urn:uuid:st1",)
    assert participant.recv == ("urn:uuid:st2", "urn:uuid:st3")


def test_attribute_style_names_ids_and_modes() -> None:
    document = doc(
        """
        <session session="sess-1"/>
        <participant id="p1" name="Alice"><aor>sip:alice@example.com</aor></participant>
        <stream label="stream1" streamid="audio-stream" mode="Mixed"/>
        """
    )
    assert document.session_id == "sess-1"
    assert (document.participants[0].name, document.participants[0].aor) == (
        "Alice",
        "sip:alice@example.com",
    )
    (stream,) = document.streams
    assert (stream.id, stream.label, stream.mode) == ("audio-stream", "stream1", "mixed")


def test_send_in_participant_and_in_participantstreamassoc_are_united() -> None:
    document = doc(
        """
        <participant participant_id="p1"><send>a</send></participant>
        <participantstreamassoc participant_id="p1"><send>b</send><send>a</send><recv>c</recv>
        </participantstreamassoc>
        """
    )
    (participant,) = document.participants
    assert participant.send == ("a", "b")
    assert participant.recv == ("c",)


def test_participant_without_any_stream_statement_has_none_sets() -> None:
    document = doc(
        '<datamode>partial</datamode><participant participant_id="p1"><nameID aor="sip:x@y"/></participant>'
    )
    (participant,) = document.participants
    assert (participant.send, participant.recv) == (None, None)


def test_empty_participantstreamassoc_means_sends_and_receives_nothing() -> None:
    (participant,) = doc(
        '<participantstreamassoc participant_id="p1"></participantstreamassoc>'
    ).participants
    assert (participant.send, participant.recv) == ((), ())


def test_participant_known_only_from_a_disassociation_is_read() -> None:
    document = doc(
        """<datamode>partial</datamode>
        <participantsessionassoc participant_id="bob" session_id="s1">
          <disassociate-time>2011-01-01T00:00:00Z</disassociate-time>
        </participantsessionassoc>"""
    )
    (bob,) = document.participants
    assert bob.disassociated and bob.session == "s1"
    assert bob.disassociate_time == datetime(2011, 1, 1, tzinfo=UTC)
    assert document.session_id is None


def test_unreadable_disassociate_time_still_marks_the_participant() -> None:
    (bob,) = doc(
        '<participant id="bob"><disassociate-time>yesterday</disassociate-time></participant>'
    ).participants
    assert bob.disassociated and bob.disassociate_time is None


def test_stream_with_empty_id_is_left_out_with_a_warning() -> None:
    document = doc(
        '<stream stream_id="" session_id="s"><label>20</label></stream>'
        '<stream stream_id="  "><label>21</label></stream>'
        '<stream stream_id="ok"><label>10</label></stream>'
        '<participantstreamassoc participant_id="p"><send></send><send> </send></participantstreamassoc>'
    )
    assert [s.id for s in document.streams] == ["ok"]
    assert len([w for w in document.warnings if "stream without an id" in w]) == 2
    assert document.participants[0].send == ()


def test_participant_without_id_is_left_out() -> None:
    document = doc('<participant><nameID aor="sip:a@b"/></participant>')
    assert document.participants == ()
    assert document.warnings


def test_comments_cdata_and_processing_instructions_are_harmless() -> None:
    document = doc(
        """<!-- a comment --><?vendor thing?>
        <participant participant_id="p1"><!-- inside -->
          <nameID aor="sip:a@b"><name><![CDATA[A & B]]></name></nameID>
        </participant>"""
    )
    assert document.participants[0].name == "A & B"


def test_leading_blank_lines_before_the_xml_declaration_are_tolerated() -> None:
    assert parse_metadata(b"\r\n\r\n  <?xml version='1.0'?><recording/>").datamode == "complete"


def test_root_id_attribute_is_the_recording_id() -> None:
    assert (
        doc("", root='<recording id="L7FJ" xmlns="urn:ietf:params:xml:ns:recording">').recording_id
        == "L7FJ"
    )


def test_foreign_namespace_extensions_are_kept_per_parent() -> None:
    document = doc(
        """
        <participant participant_id="p1">
          <x:info xmlns:x="urn:example:x" level="3"><x:a>1</x:a><x:b><x:c>2</x:c></x:b></x:info>
        </participant>
        <stream stream_id="st1"><label>1</label><content-type>audio</content-type></stream>
        <y:top xmlns:y="urn:example:y">t</y:top>
        """
    )
    by_element = {e.element: e for e in document.extensions}
    info = by_element["info"]
    assert (info.parent_kind, info.parent_id, info.namespace) == (
        "participant",
        "p1",
        "urn:example:x",
    )
    assert dict(info.values) == {"@level": "3", "a": "1", "b/c": "2"}
    assert by_element["content-type"].parent_kind == "stream"
    assert by_element["top"].parent_kind == "recording"
    assert dict(by_element["top"].values) == {"top": "t"}


def test_extensiondata_wrapper_children_are_the_extensions() -> None:
    document = doc(
        """
        <session id="s1"/>
        <participant id="p1">
          <extensiondata xmlns:apkt="http://acmepacket.com/siprec/extensiondata">
            <apkt:callingParty>true</apkt:callingParty>
          </extensiondata>
        </participant>
        <extensiondata><vendorData><callType>originating</callType></vendorData></extensiondata>
        <extensiondata parent="s1"><z xmlns="urn:z"><k>v</k></z></extensiondata>
        """
    )
    calling, vendor, bound = document.extensions
    assert (calling.parent_kind, calling.parent_id, calling.element) == (
        "participant",
        "p1",
        "callingParty",
    )
    assert dict(calling.values) == {"callingParty": "true"}
    assert (vendor.parent_kind, vendor.namespace, vendor.element) == (
        "recording",
        RFC,
        "vendorData",
    )
    assert dict(vendor.values) == {"callType": "originating"}
    assert (bound.parent_kind, bound.parent_id) == ("session", "s1")


def test_extensions_are_bounded() -> None:
    many = "".join(f'<e{i} xmlns="urn:x">{"v" * 2000}</e{i}>' for i in range(MAX_EXTENSIONS + 10))
    document = doc(many)
    assert len(document.extensions) == MAX_EXTENSIONS
    assert all(len(v) <= 512 for e in document.extensions for v in e.values.values())
    assert any("extension" in w for w in document.warnings)
    wide = "<w xmlns='urn:x'>" + "".join(f"<k{i}>v</k{i}>" for i in range(100)) + "</w>"
    (extension,) = doc(wide).extensions
    assert len(extension.values) <= 32


def test_duplicate_participant_elements_are_merged() -> None:
    document = doc(
        '<participant participant_id="p"><nameID aor="sip:a@b"/></participant>'
        '<participant participant_id="p"><nameID><name>A</name></nameID><send>s</send></participant>'
    )
    (participant,) = document.participants
    assert (participant.aor, participant.name, participant.send) == ("sip:a@b", "A", ("s",))


def test_a_document_that_is_not_recording_metadata_is_refused() -> None:
    with pytest.raises(MetadataError):
        parse_metadata(b'<requestsnapshot xmlns="urn:ietf:params:xml:ns:recording:1"/>')
    with pytest.raises(MetadataError):
        parse_metadata(b"<html><body/></html>")


def test_unknown_root_namespace_is_accepted_with_a_warning() -> None:
    document = doc('<participant id="p"/>', root='<recording xmlns="urn:example:typo">')
    assert [p.id for p in document.participants] == ["p"]
    assert document.warnings


# --- lenient scalars ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2010-12-16T23:41:07Z", datetime(2010, 12, 16, 23, 41, 7, tzinfo=UTC)),
        ("2017-02-13T12:54:34", datetime(2017, 2, 13, 12, 54, 34, tzinfo=UTC)),
        ("2021-05-17T19:22:08+00:00", datetime(2021, 5, 17, 19, 22, 8, tzinfo=UTC)),
        (
            "2021-05-17T19:22:08+0300",
            datetime(2021, 5, 17, 19, 22, 8, tzinfo=timezone(timedelta(hours=3))),
        ),
        (
            "2021-05-17T19:22:08-05:30",
            datetime(2021, 5, 17, 19, 22, 8, tzinfo=timezone(-timedelta(hours=5, minutes=30))),
        ),
        ("2021-05-17T19:22:08.123456789Z", datetime(2021, 5, 17, 19, 22, 8, 123456, tzinfo=UTC)),
        ("2021-05-17T19:22:08,5", datetime(2021, 5, 17, 19, 22, 8, 500000, tzinfo=UTC)),
        ("1970-01-01T00:00:00Z", datetime(1970, 1, 1, tzinfo=UTC)),
        ("  2021-05-17 19:22:08 ", datetime(2021, 5, 17, 19, 22, 8, tzinfo=UTC)),
        ("2021-05-17", datetime(2021, 5, 17, tzinfo=UTC)),
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("2021-13-01T00:00:00Z", None),
        ("2021-05-17T25:00:00Z", None),
        ("2021-05-17T10:00:00+2500", None),
        ("yesterday", None),
        ("", None),
        (None, None),
    ],
)
def test_timestamps_are_read_leniently(text: str | None, expected: datetime | None) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is not None


@given(st.text(max_size=40))
def test_timestamp_reader_never_raises(text: str) -> None:
    parsed = parse_timestamp(text)
    assert parsed is None or parsed.tzinfo is not None


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("sip:alice@atlanta.com", "sip:alice@atlanta.com"),
        ("SIP:alice@atlanta.com", "sip:alice@atlanta.com"),
        ("sips:bob@example.com", "sips:bob@example.com"),
        ("tel:+15551234567", "tel:+15551234567"),
        ("sip:8101@10.21.0.216;user=phone", "sip:8101@10.21.0.216;user=phone"),
        ("sip:@10.0.0.1", "sip:@10.0.0.1"),
        ("  <sip:a@b>  ", "sip:a@b"),
        ("86074075017701@example.com", "sip:86074075017701@example.com"),
        ("Extension-016190619@speechpath.ie", "sip:Extension-016190619@speechpath.ie"),
        ("alice@host:5060", "sip:alice@host:5060"),
        ("7602922410", "tel:7602922410"),
        ("+1 (760) 292-2410", "tel:+17602922410"),
        ("+44.20.7946.0018", "tel:+442079460018"),
        ("anonymous", "anonymous"),
        ("urn:service:sos", "urn:service:sos"),
        ("  ", ""),
    ],
)
def test_aor_normalisation(raw: str, normalized: str) -> None:
    assert normalize_aor(raw) == normalized


@given(st.text(max_size=60))
def test_aor_normalisation_never_raises(raw: str) -> None:
    assert isinstance(normalize_aor(raw), str)


# --- hostile input ------------------------------------------------------------------------------

BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    + b"".join(
        b' <!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]>\n<recording><datamode>&lol9;</datamode></recording>"
)

HOSTILE = {
    "billion_laughs": BILLION_LAUGHS,
    "external_entity": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b"<recording><participant id='p'><nameID><name>&x;</name></nameID></participant></recording>",
    "external_dtd": b'<!DOCTYPE recording SYSTEM "http://192.0.2.1/evil.dtd"><recording/>',
    "parameter_entity": b'<!DOCTYPE r [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><recording/>',
    "plain_doctype": b"<!DOCTYPE recording><recording/>",
    "undeclared_entity": b"<recording><datamode>&x;</datamode></recording>",
    "too_big": b"<recording>" + b" " * MAX_DOCUMENT_BYTES + b"</recording>",
    "too_deep": b"<recording>" + b"<a>" * 40 + b"</a>" * 40 + b"</recording>",
    "too_many": b"<recording>" + b"<a/>" * (MAX_ELEMENTS + 1) + b"</recording>",
    "garbage": bytes(range(256)) * 4,
    "latin1_bytes_declared_utf8": b'<?xml version="1.0" encoding="UTF-8"?><recording id="\xe9\xff"/>',
    "truncated": b'<?xml version="1.0"?><recording><participant participant_id="p',
    "unknown_encoding": b'<?xml version="1.0" encoding="x-nonesuch"?><recording/>',
    "two_roots": b"<recording/><recording/>",
    "empty": b"",
    "text_only": b"recording",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_documents_are_refused_with_metadata_error(name: str) -> None:
    with pytest.raises(MetadataError) as raised:
        parse_metadata(HOSTILE[name])
    assert "root:" not in str(raised.value)


def test_non_bytes_input_is_refused() -> None:
    with pytest.raises(MetadataError):
        parse_metadata("<recording/>")  # type: ignore[arg-type]


def test_documents_at_the_limits_are_accepted() -> None:
    assert parse_metadata(b"<recording>" + b"<a>" * 30 + b"</a>" * 30 + b"</recording>")
    assert parse_metadata(b"<recording>" + b"<a/>" * (MAX_ELEMENTS - 1) + b"</recording>")


# --- regressions --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*.xml")), ids=lambda p: p.name)
def test_regression_input_parses_or_fails_cleanly(path: Path) -> None:
    try:
        document = parse_metadata(path.read_bytes())
    except MetadataError:
        return
    assert document.datamode in ("complete", "partial")


# --- hypothesis: documents built from the SIPREC vocabulary ----------------------------------------

NAMESPACES = [
    RFC,
    "urn:ietf:params:xml:ns:recording",
    "urn:ietf:params:xml:ns:siprec",
    None,
    "urn:example:foreign",
]
ELEMENTS = [
    "datamode", "dataMode", "group", "session", "participant", "stream", "sessionrecordingassoc",
    "participantsessionassoc", "participantstreamassoc", "extensiondata", "recording", "nameID",
    "name", "aor", "send", "recv", "id", "label", "mode", "sipSessionID", "group-ref",
    "start-time", "end-time", "associate-time", "disassociate-time", "vendor",
]  # fmt: skip
ATTRIBUTES = [
    "id", "participant_id", "stream_id", "session_id", "group_id", "session", "group", "aor",
    "parent", "xml:lang", "recording", "label",
]  # fmt: skip
TEXTS = st.one_of(
    st.sampled_from(
        ["complete", "partial", "Partial", "p1", "p2", "s1", "st1", "st2", "", " ", "1",
         "sip:a@b", "7602922410", "2017-02-13T12:54:34", "2021-05-17T19:22:08+0300", "x&amp;y"]
    ),
    st.text(alphabet="abc123 :;@+-.", max_size=12),
)  # fmt: skip


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


ELEMENT_NAMES = st.sampled_from(ELEMENTS)
TOP_LEVEL_NAMES = st.sampled_from(
    ["datamode", "group", "session", "participant", "stream", "sessionrecordingassoc",
     "participantsessionassoc", "participantstreamassoc", "extensiondata", "recording"]
)  # fmt: skip
ATTRIBUTE_SETS = st.dictionaries(st.sampled_from(ATTRIBUTES), TEXTS, max_size=3)
ELEMENT_NAMESPACES = st.sampled_from([*NAMESPACES, "inherit", "inherit"])


@st.composite
def xml_start(
    draw: st.DrawFn, names: st.SearchStrategy[str] = ELEMENT_NAMES
) -> tuple[str, str, str]:
    """(element name, rendered attributes, escaped text) of one element."""
    name = draw(names)
    rendered = "".join(f' {k}="{escape(v)}"' for k, v in draw(ATTRIBUTE_SETS).items())
    namespace = draw(ELEMENT_NAMESPACES)
    if namespace is None:
        rendered += ' xmlns=""'
    elif namespace != "inherit":
        rendered += f' xmlns="{namespace}"'
    return name, rendered, escape(draw(TEXTS))


def render(start: tuple[str, str, str], children: list[str]) -> str:
    name, attrs, text = start
    return f"<{name}{attrs}>{text}{''.join(children)}</{name}>"


xml_elements = st.recursive(
    st.builds(render, xml_start(), st.just([])),
    lambda inner: st.builds(render, xml_start(), st.lists(inner, max_size=4)),
    max_leaves=12,
)
ID_VALUES = st.sampled_from(["p1", "p2", "p3", "s1", "st1", "st2", "g1", "", " "])
ID_ATTRIBUTES = {
    "participant": "participant_id",
    "stream": "stream_id",
    "session": "session_id",
    "group": "group_id",
    "participantsessionassoc": "participant_id",
    "participantstreamassoc": "participant_id",
    "sessionrecordingassoc": "session_id",
}
CHILD_TEXTS = {
    "send": ID_VALUES,
    "recv": ID_VALUES,
    "label": st.sampled_from(["1", "2", "a_leg", ""]),
    "mode": st.sampled_from(["separate", "mixed", "MIXED"]),
    "associate-time": st.sampled_from(["2017-02-13T12:54:34", "1970-01-01T00:00:00Z", "x"]),
    "disassociate-time": st.sampled_from(["2017-02-13T12:59:34+0300", "", "bad"]),
    "aor": st.sampled_from(["sip:a@b", "7602922410", "x@y", ""]),
    "name": st.sampled_from(["Alice", " Bob  B ", ""]),
    "sipSessionID": st.sampled_from(["ab;\n   remote=cd", ""]),
}
CHILD_NAMES = st.sampled_from(sorted(CHILD_TEXTS))


@st.composite
def child_element(draw: st.DrawFn) -> str:
    name = draw(CHILD_NAMES)
    text = escape(draw(CHILD_TEXTS[name]))
    if name == "send" and draw(st.booleans()):
        text = f"<id>{text}</id>"
    if name in ("aor", "name") and draw(st.booleans()):
        return f"<nameID><{name}>{text}</{name}></nameID>"
    return f"<{name}>{text}</{name}>"


@st.composite
def top_level_element(draw: st.DrawFn) -> str:
    """A SIPREC element with a plausible id, plausible children and some noise."""
    kind = draw(TOP_LEVEL_NAMES)
    attrs = draw(ATTRIBUTE_SETS)
    id_attribute = ID_ATTRIBUTES.get(kind)
    if id_attribute is not None and draw(st.integers(0, 9)):
        attrs[draw(st.sampled_from([id_attribute, "id"]))] = draw(ID_VALUES)
        if kind == "participantsessionassoc" or kind == "stream":
            attrs["session_id"] = "s1"
    rendered = "".join(f' {k}="{escape(v)}"' for k, v in attrs.items())
    if kind == "datamode":
        return f"<{kind}>{draw(st.sampled_from(['complete', 'Partial', 'bogus']))}</{kind}>"
    children = draw(st.lists(st.one_of(child_element(), child_element(), xml_elements), max_size=4))
    return f"<{kind}{rendered}>{''.join(children)}</{kind}>"


ROOT_NAMES = st.sampled_from(["recording", "recording_metadata"])
DATAMODES = st.sampled_from(
    [
        "",
        "<datamode>complete</datamode>",
        "<dataMode>partial</dataMode>",
        "<datamode>Partial</datamode>",
    ]
)
ROOT_NAMESPACES = st.sampled_from(NAMESPACES)
ROOT_CHILDREN = st.lists(
    st.one_of(top_level_element(), top_level_element(), xml_elements), max_size=8
)


@st.composite
def metadata_xml(draw: st.DrawFn) -> bytes:
    root = draw(ROOT_NAMES)
    namespace = draw(ROOT_NAMESPACES)
    xmlns = f' xmlns="{namespace}"' if namespace else ""
    children = draw(DATAMODES) + "".join(draw(ROOT_CHILDREN))
    return f'<?xml version="1.0"?><{root}{xmlns}>{children}</{root}>'.encode()


@settings(max_examples=200, deadline=None)
@given(metadata_xml())
def test_random_siprec_vocabulary_documents_parse_or_raise_metadata_error(xml: bytes) -> None:
    try:
        document = parse_metadata(xml)
    except MetadataError:
        return
    assert document.datamode in ("complete", "partial")
    assert len(document.extensions) <= MAX_EXTENSIONS
    for participant in document.participants:
        assert participant.id.strip()
        assert (participant.send is None) == (participant.recv is None)
    for stream in document.streams:
        assert stream.id.strip()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_parse_or_raise_metadata_error(data: bytes) -> None:
    with contextlib.suppress(MetadataError):
        parse_metadata(b"<recording>" + data + b"</recording>")
    with contextlib.suppress(MetadataError):
        parse_metadata(data)


def test_every_stated_field_is_kept_by_the_parse() -> None:
    # The parse freezes its drafts field by field by name: a field added to a value type must
    # be added to its draft too, or the parse would silently leave it unset.
    from dataclasses import fields

    from siprec_server.siprec import metadata

    for draft, info, derived in ((metadata._SessionDraft, metadata.SessionInfo, set()),
                                 (metadata._StreamDraft, metadata.StreamInfo, set()),
                                 (metadata._ParticipantDraft, metadata.ParticipantInfo, {"aor"})):
        assert {f.name for f in fields(info)} == {f.name for f in fields(draft)} | derived
