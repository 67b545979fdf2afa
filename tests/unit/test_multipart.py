"""Splitting SIPREC message bodies: the interop cases, every dialect in SIPREC.md, the limits,
and hypothesis-built bodies in random shapes."""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from siprec_server.siprec.multipart import (
    MAX_BODY_BYTES,
    MAX_PARTS,
    BodyPart,
    MultipartError,
    find_part,
    metadata_part,
    parse_content_type,
    split_body,
)
from tests.interop import INTEROP_DIR  # noqa: E402

REGRESSIONS = Path(__file__).resolve().parents[1] / "regressions" / "multipart"

# --- interop cases ------------------------------------------------------------------------------


def interop_dir() -> Path | None:
    """The interop corpus (tests/interop.py finds it or fails)."""
    return INTEROP_DIR


@dataclass(frozen=True)
class InteropMessage:
    name: str
    headers: dict[str, str]
    body: bytes
    expect: dict[str, Any]

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def disposition(self) -> str | None:
        return self.headers.get("content-disposition")

    def parts(self) -> tuple[BodyPart, ...]:
        return split_body(self.content_type, self.body, self.disposition)

    def metadata_bytes(self) -> bytes:
        part = metadata_part(self.parts())
        assert part is not None, f"{self.name}: no metadata part"
        return part.body


_COMPACT = {"c": "content-type", "l": "content-length"}


def load_interop(name: str) -> InteropMessage:
    directory = interop_dir()
    assert directory is not None
    raw = (directory / f"{name}.sip").read_bytes()
    head, _, body = raw.partition(b"\r\n\r\n")
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", head).decode("utf-8")
    headers: dict[str, str] = {}
    for line in unfolded.split("\r\n")[1:]:
        header, _, value = line.partition(":")
        key = header.strip().lower()
        headers.setdefault(_COMPACT.get(key, key), value.strip())
    length = int(headers.get("content-length", len(body)))
    expect = json.loads((directory / f"{name}.expect.json").read_text())
    return InteropMessage(name, headers, body[:length], expect)


def interop_names() -> list[str]:
    directory = interop_dir()
    if directory is None:
        return []
    return sorted(path.stem for path in directory.glob("*.sip"))


requires_interop = pytest.mark.skipif(interop_dir() is None, reason="interop corpus not found")


@requires_interop
def test_interop_corpus_is_present() -> None:
    assert len(interop_names()) >= 10


@requires_interop
@pytest.mark.parametrize("name", interop_names())
def test_interop_body_splits_as_expected(name: str) -> None:
    message = load_interop(name)
    parts = message.parts()
    multipart = message.expect.get("multipart")
    if multipart:
        _, params = parse_content_type(message.content_type)
        assert params["boundary"] == multipart["boundary"]
        assert [p.content_type for p in parts] == multipart["part_order"]
        meta = metadata_part(parts)
        assert meta is not None
        assert meta.content_type == multipart["metadata_content_type"]
        assert meta.disposition == multipart["metadata_content_disposition"]
        sdp = find_part(parts, "application/sdp")
        assert sdp is not None
        assert sdp.body.startswith(b"v=0\r\n")
        # The SDP's own last line keeps its CRLF; the CRLF before the delimiter is gone.
        assert sdp.body.endswith(b"\r\n") and not sdp.body.endswith(b"\r\n\r\n")
        assert b"--" + multipart["boundary"].encode() not in sdp.body + meta.body
    else:
        single = message.expect["single_part_body"]
        assert len(parts) == 1
        assert parts[0].content_type == single["content_type"]
        assert parts[0].disposition == single["content_disposition"]
        assert parts[0].body == message.body
        assert metadata_part(parts) is parts[0]
    meta = metadata_part(parts)
    assert meta is not None
    assert meta.body.lstrip().startswith(b"<?xml")
    assert meta.body.rstrip().endswith(b">")


@requires_interop
def test_sems_body_without_close_delimiter_still_yields_the_metadata_part() -> None:
    message = load_interop("sems_1")
    assert message.expect["multipart"]["close_delimiter_present"] is False
    meta = metadata_part(message.parts())
    assert meta is not None
    assert meta.body.rstrip().endswith(b"</recording>")


@requires_interop
def test_webex_metadata_first_with_no_space_after_colon() -> None:
    parts = load_interop("webex_calling_1").parts()
    assert parts[0].content_type == "application/rs-metadata+xml"
    assert parts[0].disposition == "recording-session"
    assert parts[1].content_type == "application/sdp"


# --- dialects -----------------------------------------------------------------------------------

SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=label:1\r\n"
XML = b'<?xml version="1.0"?>\r\n<recording xmlns="urn:ietf:params:xml:ns:recording:1"/>'


def message(*chunks: bytes) -> bytes:
    return b"".join(chunks)


def test_plain_two_part_body() -> None:
    body = message(
        b"--b\r\nContent-Type: application/sdp\r\n\r\n",
        SDP,
        b"\r\n--b\r\nContent-Type: application/rs-metadata+xml\r\n",
        b"Content-Disposition: recording-session\r\n\r\n",
        XML,
        b"\r\n--b--\r\n",
    )
    sdp, meta = split_body("multipart/mixed;boundary=b", body)
    assert sdp == BodyPart(
        content_type="application/sdp",
        params={},
        disposition=None,
        headers={"content-type": "application/sdp"},
        body=SDP,
    )
    assert meta.body == XML
    assert meta.disposition == "recording-session"


def test_metadata_part_may_come_first() -> None:
    body = message(
        b"--b\r\nContent-Type: application/rs-metadata\r\nContent-Disposition: recording-session",
        b"\r\n\r\n",
        XML,
        b"\r\n--b\r\nContent-Type: application/sdp\r\n\r\n",
        SDP,
        b"\r\n--b--",
    )
    parts = split_body("multipart/mixed;boundary=b", body)
    assert metadata_part(parts) is parts[0]
    assert find_part(parts, "APPLICATION/SDP") is parts[1]


def test_content_disposition_before_content_type_and_no_space_after_colon() -> None:
    body = b"--b\r\nContent-Disposition:recording-session\r\nContent-Type:application/rs-metadata\r\n\r\n<r/>\r\n--b--"
    (part,) = split_body("multipart/mixed; boundary=b", body)
    assert (part.content_type, part.disposition, part.body) == (
        "application/rs-metadata",
        "recording-session",
        b"<r/>",
    )


def test_whitespace_after_boundary_lines_and_close_delimiter() -> None:
    body = b"--b \t\r\nContent-Type: text/plain\r\n\r\none\r\n--b  \r\n\r\ntwo\r\n--b-- \t\r\n"
    parts = split_body("multipart/mixed;boundary=b", body)
    assert [p.body for p in parts] == [b"one", b"two"]


def test_missing_close_delimiter_lets_the_last_part_run_to_the_end() -> None:
    body = (
        b"--b\r\nContent-Type: application/sdp\r\n\r\n"
        + SDP
        + b"\r\n--b\r\nContent-Type: application/rs-metadata\r\n\r\n<recording/>\r\n"
    )
    parts = split_body("multipart/mixed;boundary=b", body)
    assert parts[0].body == SDP
    assert parts[1].body == b"<recording/>\r\n"


def test_close_delimiter_without_line_end_at_end_of_body() -> None:
    body = b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--"
    (part,) = split_body("multipart/mixed;boundary=b", body)
    assert part.body == b"hello"


def test_blank_line_between_headers_and_body_is_skipped_for_sdp_and_metadata() -> None:
    body = message(
        b"--b\r\nContent-Type: application/sdp\r\n\r\n\r\n",
        SDP,
        b"\r\n--b\r\nContent-Type: application/rs-metadata+xml\r\n\r\n\r\n\r\n",
        XML,
        b"\r\n--b--\r\n",
    )
    sdp, meta = split_body("multipart/mixed;boundary=b", body)
    assert sdp.body == SDP
    assert meta.body == XML


def test_blank_line_between_delimiter_and_headers_is_tolerated() -> None:
    body = b"--b\r\n\r\nContent-Type: application/sdp\r\n\r\n" + SDP + b"\r\n--b--\r\n"
    (part,) = split_body("multipart/mixed;boundary=b", body)
    assert part.content_type == "application/sdp"
    assert part.body == SDP


def test_wrong_per_part_content_length_is_ignored() -> None:
    body = message(
        b"--b\r\nContent-Type: application/sdp\r\nContent-Length: 3\r\n\r\n",
        SDP,
        b"\r\n--b\r\nContent-Type: application/rs-metadata\r\nContent-Length: 99999\r\n\r\n",
        XML,
        b"\r\n--b--\r\n",
    )
    sdp, meta = split_body("multipart/mixed;boundary=b", body)
    assert sdp.body == SDP
    assert meta.body == XML
    assert sdp.headers["content-length"] == "3"


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ('multipart/mixed; boundary="simple"', b"simple"),
        ('multipart/mixed;boundary="with space\'()+_,-./:=?"', b"with space'()+_,-./:=?"),
        ('Multipart/Mixed ; charset=utf-8; BOUNDARY = "Q" ; x=y', b"Q"),
        ("multipart/related;type=application/sdp;boundary=unique-boundary-1", b"unique-boundary-1"),
    ],
)
def test_boundary_quoted_with_specials_or_among_other_parameters(
    content_type: str, boundary: bytes
) -> None:
    body = b"--" + boundary + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n--" + boundary + b"--\r\n"
    (part,) = split_body(content_type, body)
    assert part.body == b"x"


def test_content_type_parameters_are_parsed_and_type_lower_cased() -> None:
    body = (
        b'--b\r\nCONTENT-TYPE: Application/SDP; charset="UTF-8"; Version=2\r\n\r\nv=0\r\n\r\n--b--'
    )
    (part,) = split_body("multipart/mixed;boundary=b", body)
    assert part.content_type == "application/sdp"
    assert dict(part.params) == {"charset": "UTF-8", "version": "2"}
    assert "content-type" in part.headers


def test_lf_only_line_endings() -> None:
    body = b"--b\nContent-Type: application/sdp\n\nv=0\ns=-\n\n--b\nContent-Type: application/rs-metadata\n\n<r/>\n--b--\n"
    sdp, meta = split_body("multipart/mixed;boundary=b", body)
    assert sdp.body == b"v=0\ns=-\n"
    assert meta.body == b"<r/>"


def test_preamble_and_epilogue_are_dropped() -> None:
    body = b"This is a preamble.\r\n--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n--b--\r\nepilogue --b\r\n"
    (part,) = split_body("multipart/mixed;boundary=b", body)
    assert part.body == b"body"


def test_part_without_headers_is_text_plain() -> None:
    body = b"--b\r\n\r\nplain text\r\n--b\r\n<no headers at all>\r\n--b--"
    first, second = split_body("multipart/mixed;boundary=b", body)
    assert (first.content_type, first.headers, first.body) == ("text/plain", {}, b"plain text")
    assert (second.content_type, second.body) == ("text/plain", b"<no headers at all>")


def test_crlf_before_a_delimiter_belongs_to_the_delimiter() -> None:
    body = b"--b\r\nContent-Type: text/plain\r\n\r\nline\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\r\n--b--"
    first, second = split_body("multipart/mixed;boundary=b", body)
    assert first.body == b"line\r\n"
    assert second.body == b""


def test_boundary_text_inside_a_line_or_as_a_prefix_does_not_split() -> None:
    body = b"--foo\r\nContent-Type: text/plain\r\n\r\nsee --foo here\r\n--foobar is not it\r\n--foo--\r\n"
    (part,) = split_body("multipart/mixed;boundary=foo", body)
    assert part.body == b"see --foo here\r\n--foobar is not it"


def test_folded_part_headers_are_unfolded() -> None:
    body = b"--b\r\nContent-Type: application/rs-metadata;\r\n charset=utf-8\r\nContent-Disposition:\r\n\trecording-session;handling=required\r\n\r\n<r/>\r\n--b--"
    (part,) = split_body("multipart/mixed;boundary=b", body)
    assert part.params["charset"] == "utf-8"
    assert part.disposition == "recording-session"


def test_header_block_without_blank_line_ends_at_the_first_non_header_line() -> None:
    body = b"--b\r\nContent-Type: application/sdp\r\nv=0\r\ns=-\r\n--b--"
    (part,) = split_body("multipart/mixed;boundary=b", body)
    assert part.content_type == "application/sdp"
    assert part.body == b"v=0\r\ns=-"


def test_unknown_parts_are_returned_and_metadata_still_found() -> None:
    gtd = b"IAM,\r\nPRN,isdn*,,NT100,,,,,,\r\n"
    body = message(
        b"--b\r\nContent-Type: application/sdp\r\n\r\n",
        SDP,
        b"\r\n--b\r\nContent-Type: application/gtd\r\nContent-Disposition: signal;handling=optional\r\n\r\n",
        gtd,
        b"\r\n--b\r\nContent-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n",
        XML,
        b"\r\n--b--\r\n",
    )
    parts = split_body("multipart/mixed;boundary=b", body)
    assert [p.content_type for p in parts] == [
        "application/sdp",
        "application/gtd",
        "application/rs-metadata+xml",
    ]
    assert parts[1].body == gtd
    assert metadata_part(parts) is parts[2]


def test_nested_multipart_is_returned_as_is() -> None:
    inner = b"--inner\r\nContent-Type: text/plain\r\n\r\nx\r\n--inner--"
    body = (
        b"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
        + inner
        + b"\r\n--outer--"
    )
    (part,) = split_body("multipart/mixed;boundary=outer", body)
    assert part.content_type == "multipart/alternative"
    assert part.body == inner
    assert split_body("multipart/alternative; boundary=inner", part.body)[0].body == b"x"


def test_non_multipart_body_is_one_part_with_the_message_headers() -> None:
    (part,) = split_body(
        "Application/RS-Metadata+XML; charset=utf-8", XML, "Recording-Session; handling=required"
    )
    assert part.content_type == "application/rs-metadata+xml"
    assert part.params == {"charset": "utf-8"}
    assert part.disposition == "recording-session"
    assert part.body == XML
    assert metadata_part((part,)) is part


def test_empty_content_type_is_text_plain() -> None:
    (part,) = split_body("", b"hello")
    assert part.content_type == "text/plain"


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/mixed",
        "multipart/mixed; boundary=",
        'multipart/mixed; boundary=""',
        "multipart/mixed;charset=x",
    ],
)
def test_multipart_without_boundary_is_an_error(content_type: str) -> None:
    with pytest.raises(MultipartError):
        split_body(content_type, b"--b\r\n\r\nx\r\n--b--")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"no delimiter at all",
        b"--b--\r\n",
        b"x--b\r\n\r\nnot at line start",
        b"--b\r\n   \r\n",
    ],
)
def test_body_without_any_part_is_an_error(body: bytes) -> None:
    with pytest.raises(MultipartError):
        split_body("multipart/mixed;boundary=b", body)


def test_more_than_sixteen_parts_is_an_error() -> None:
    one = b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n"
    split_body("multipart/mixed;boundary=b", one * MAX_PARTS + b"--b--")
    with pytest.raises(MultipartError):
        split_body("multipart/mixed;boundary=b", one * (MAX_PARTS + 1) + b"--b--")
    with pytest.raises(MultipartError):  # no close delimiter: counted all the same
        split_body("multipart/mixed;boundary=b", one * (MAX_PARTS + 1))


def test_body_over_one_mebibyte_is_an_error() -> None:
    with pytest.raises(MultipartError):
        split_body("multipart/mixed;boundary=b", b"--b\r\n\r\n" + b"x" * MAX_BODY_BYTES)
    with pytest.raises(MultipartError):
        split_body("application/sdp", b"x" * (MAX_BODY_BYTES + 1))


def test_part_header_block_over_eight_kib_is_an_error() -> None:
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 100) for i in range(90))
    with pytest.raises(MultipartError):
        split_body("multipart/mixed;boundary=b", b"--b\r\n" + headers + b"\r\nx\r\n--b--")
    # A long body line is not a header and is fine.
    long_line = b"<" + b"z" * 20000 + b">"
    (part,) = split_body("multipart/mixed;boundary=b", b"--b\r\n" + long_line + b"\r\n--b--")
    assert part.body == long_line


def test_metadata_part_prefers_recording_session_disposition() -> None:
    plain = BodyPart("application/rs-metadata+xml", body=b"a")
    marked = BodyPart("application/rs-metadata", disposition="recording-session", body=b"b")
    assert metadata_part([plain, marked]) is marked
    assert metadata_part([plain]) is plain
    xml_marked = BodyPart("application/xml", disposition="recording-session")
    assert metadata_part([BodyPart("application/sdp"), xml_marked]) is xml_marked
    assert (
        metadata_part([BodyPart("application/sdp"), BodyPart("application/rs-metadata-request")])
        is None
    )
    assert find_part([plain], "application/sdp") is None


# --- regressions --------------------------------------------------------------------------------


def regression_inputs() -> list[Path]:
    return sorted(REGRESSIONS.glob("*.mime"))


@pytest.mark.parametrize("path", regression_inputs(), ids=lambda p: p.name)
def test_regression_input_splits_or_fails_cleanly(path: Path) -> None:
    """Each file: first line is the Content-Type value, the rest is the body."""
    content_type, _, body = path.read_bytes().partition(b"\n")
    try:
        parts = split_body(content_type.decode("latin-1").strip(), body)
    except MultipartError:
        return
    assert 1 <= len(parts) <= MAX_PARTS


# --- hypothesis ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    content_type=st.one_of(
        st.text(max_size=60),
        st.builds(lambda b: f"multipart/mixed; boundary={b}", st.text(max_size=20)),
    ),
    body=st.binary(max_size=600),
)
def test_random_bytes_split_or_raise_multipart_error(content_type: str, body: bytes) -> None:
    try:
        parts = split_body(content_type, body)
    except MultipartError:
        return
    assert 1 <= len(parts) <= MAX_PARTS
    assert all(isinstance(p.body, bytes) for p in parts)


@settings(max_examples=200, deadline=None)
@given(
    boundary=st.text(alphabet="abcXYZ0123'()+_,-./=?", min_size=1, max_size=20),
    body=st.binary(max_size=400),
    seed_lines=st.lists(st.sampled_from([b"\r\n", b"\n", b"--", b"\r\n\r\n", b" \t"]), max_size=8),
)
def test_random_bodies_around_a_real_boundary_never_crash(
    boundary: str, body: bytes, seed_lines: list[bytes]
) -> None:
    dash = b"--" + boundary.encode()
    mixed = dash + b"".join(seed_lines) + body + b"\r\n" + dash + b"".join(seed_lines) + body
    with contextlib.suppress(MultipartError):
        split_body(f'multipart/mixed; boundary="{boundary}"', mixed)


KNOWN_PARTS = [
    ("application/sdp", None),
    ("application/rs-metadata+xml", "recording-session"),
    ("application/rs-metadata", "recording-session"),
    ("application/gtd", "signal;handling=optional"),
    ("text/plain", None),
]

line_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=30
)


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[str, bytes, list[tuple[str, str | None, bytes]]]:
    boundary = draw(st.text(alphabet="abcdefXYZ0123456789'()+_,-./=?", min_size=1, max_size=40))
    quoted = draw(st.booleans()) or any(c in boundary for c in "'()+,/=?")
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    chosen = draw(st.lists(st.sampled_from(KNOWN_PARTS), min_size=1, max_size=5))
    expected: list[tuple[str, str | None, bytes]] = []
    chunks: list[bytes] = []
    if draw(st.booleans()):
        chunks.append(b"preamble text" + eol)
    dash = b"--" + boundary.encode()
    for index, (content_type, disposition) in enumerate(chosen):
        lines = draw(st.lists(line_text, min_size=1, max_size=5))
        # A first line starting with '<' can never be read as a header.
        content = eol.join(
            ("<" + lines[0]).encode() if i == 0 else line.encode() for i, line in enumerate(lines)
        )
        assume(all(not line.startswith(dash) for line in content.split(eol)))
        pad = draw(st.sampled_from([b"", b" ", b"\t ", b"  "]))
        headers: list[bytes] = []
        headerless = content_type == "text/plain" and draw(st.booleans())
        if not headerless:
            name = draw(st.sampled_from([b"Content-Type", b"content-type", b"CONTENT-TYPE"]))
            sep = draw(st.sampled_from([b": ", b":", b" : "]))
            type_text = content_type.encode()
            if draw(st.booleans()):
                type_text = type_text.upper()
            headers.append(name + sep + type_text)
            if disposition is not None:
                headers.append(b"Content-Disposition" + sep + disposition.encode())
            if draw(st.booleans()):
                headers.append(b"Content-Length: 1")  # wrong on purpose
            if draw(st.booleans()):
                headers.reverse()
        chunks.append(dash + pad + eol)
        chunks.append(b"".join(h + eol for h in headers) + eol)
        chunks.append(content)
        is_last = index == len(chosen) - 1
        if not is_last:
            chunks.append(eol)
        expected.append((content_type, disposition.split(";")[0] if disposition else None, content))
    ending = draw(st.sampled_from(["close", "close-no-eol", "close-padded", "none"]))
    if ending == "close":
        chunks.append(eol + dash + b"--" + eol)
    elif ending == "close-no-eol":
        chunks.append(eol + dash + b"--")
    elif ending == "close-padded":
        chunks.append(eol + dash + b"-- \t" + eol + b"epilogue")
    b_param = f'"{boundary}"' if quoted else boundary
    order = draw(
        st.sampled_from(["multipart/mixed; boundary={b}", "Multipart/Mixed;boundary={b};x=y"])
    )
    return order.format(b=b_param), b"".join(chunks), expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(multipart_bodies())
def test_recognisable_parts_survive_the_round_trip(
    case: tuple[str, bytes, list[tuple[str, str | None, bytes]]],
) -> None:
    content_type, body, expected = case
    parts = split_body(content_type, body)
    assert [(p.content_type, p.disposition, p.body) for p in parts] == expected
    has_metadata = any(t.startswith("application/rs-metadata") for t, _, _ in expected)
    assert (metadata_part(parts) is not None) == has_metadata
