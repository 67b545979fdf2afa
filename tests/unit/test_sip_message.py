"""The SIP message layer against RFC 3261 §7 (syntax), §18.3 (framing) and §20 (compact forms),
with the wire shapes SBCs really send, and the interop requests in ../shared/interop."""

from __future__ import annotations

import json

import pytest

from siprec_server.sip.message import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    StreamFramer,
    build_response,
    parse_message,
    parse_via,
    split_list,
)
from tests.interop import INTEROP_DIR
from tests.unit.test_sip_support import SDP, request

INTEROP = INTEROP_DIR

OPTIONS = (
    b"OPTIONS sip:srs@192.0.2.10 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-opt-1\r\n"
    b"From: <sip:sbc@198.51.100.7>;tag=ka1\r\n"
    b"To: <sip:srs@192.0.2.10>\r\n"
    b"Call-ID: keepalive-1\r\n"
    b"CSeq: 7 OPTIONS\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def parse_request(data: bytes, *, datagram: bool = True) -> SipRequest:
    message = parse_message(data, datagram=datagram)
    assert isinstance(message, SipRequest)
    return message


def error_of(data: bytes, *, datagram: bool = True) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_message(data, datagram=datagram)
    return info.value


# ---------------------------------------------------------------- header syntax


def test_compact_header_forms_are_the_long_headers() -> None:
    data = (
        b"INVITE sip:srs@192.0.2.10 SIP/2.0\r\n"
        b"v: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK-c1\r\n"
        b"f: <sip:src@example.com>;tag=a\r\n"
        b"t: <sip:srs@example.com>\r\n"
        b"i: compact-1\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"m: <sip:src@198.51.100.7>;+sip.src\r\n"
        b"k: timer, siprec\r\n"
        b"x: 600;refresher=uac\r\n"
        b"c: application/sdp\r\n"
        b"l: 4\r\n\r\nv=0\r\n"
    )
    message = parse_request(data)
    h = message.headers
    assert message.call_id == "compact-1"
    assert message.from_tag == "a"
    assert h.get("Contact") == "<sip:src@198.51.100.7>;+sip.src"
    assert h.tokens("Supported") == {"timer", "siprec"}
    assert h.get("Session-Expires") == "600;refresher=uac"
    assert message.content_type == "application/sdp"
    assert message.body == b"v=0\r"  # l: 4 cuts the datagram body (RFC 3261 §18.3)
    assert message.top_via.branch == "z9hG4bK-c1"
    # Serialised with the long names, which every peer understands.
    out = message.to_bytes()
    assert b"\r\nCall-ID: compact-1\r\n" in out and b"\r\nSession-Expires: 600" in out


def test_header_names_are_case_insensitive() -> None:
    data = OPTIONS.replace(b"Call-ID:", b"call-id:").replace(b"CSeq:", b"CSEQ:")
    data = data.replace(b"Via:", b"vIa:")
    message = parse_request(data)
    assert message.call_id == "keepalive-1"
    assert message.cseq == (7, "OPTIONS")
    assert message.headers.get("VIA") == message.headers.get("via")


def test_folded_header_is_joined_with_a_space() -> None:
    message = parse_request((INTEROP / "rfc7866_1.sip").read_bytes())
    assert message.headers.get("Session-ID") == (
        "ab30317f1a784dc48ff824d0d3715d86 ;remote=00000000000000000000000000000000"
    )
    assert message.headers.values("Accept") == [
        "application/sdp",
        "application/rs-metadata",
        "application/rs-metadata-request",
    ]


def test_folding_with_tabs_and_several_continuation_lines() -> None:
    data = OPTIONS.replace(
        b"Max-Forwards: 70\r\n", b"Subject: one\r\n\ttwo\r\n   three\r\nMax-Forwards: 70\r\n"
    )
    assert parse_request(data).headers.get("Subject") == "one two three"


def test_several_via_values_in_one_line_and_over_lines_keep_their_order() -> None:
    data = OPTIONS.replace(
        b"Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-opt-1\r\n",
        b"Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-top, "
        b"SIP/2.0/TCP proxy.example.com;branch=z9hG4bK-2\r\n"
        b"Via: SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bK-3;received=2001:db8::1\r\n",
    )
    message = parse_request(data)
    vias = [parse_via(v) for v in message.headers.values("Via")]
    assert [v.branch for v in vias] == ["z9hG4bK-top", "z9hG4bK-2", "z9hG4bK-3"]
    assert vias[1].transport == "TCP" and vias[1].port is None
    assert vias[2].host == "[2001:db8::1]" and vias[2].port == 5070
    assert message.top_via.branch == "z9hG4bK-top"
    # A response copies every Via line, in order (RFC 3261 §8.2.6.2).
    response = build_response(message, 200, to_tag="x")
    assert response.headers.get_all("Via") == message.headers.get_all("Via")


def test_split_list_respects_quotes_and_angle_brackets() -> None:
    value = '"Doe, John" <sip:a@b;x=1,2>;tag=1, <sip:c@d>'
    assert split_list(value) == ['"Doe, John" <sip:a@b;x=1,2>;tag=1', "<sip:c@d>"]


def test_lf_only_message_parses() -> None:
    body = SDP.replace(b"\r\n", b"\n")
    message = parse_request(request("INVITE", body=body).replace(b"\r\n", b"\n"))
    assert message.method == "INVITE" and message.body == body
    assert message.headers.get("CSeq") == "1 INVITE"


def test_leading_crlfs_before_the_start_line_are_ignored() -> None:
    # RFC 3261 §7.5: implementations SHOULD ignore CRLFs before the start line.
    message = parse_request(b"\r\n\r\n\r\n" + OPTIONS)
    assert message.method == "OPTIONS"


def test_datagram_without_the_final_empty_line_is_headers_only() -> None:
    message = parse_request(OPTIONS[:-2])
    assert message.method == "OPTIONS" and message.body == b""


def test_content_length_smaller_than_the_datagram_truncates_the_body() -> None:
    data = request("INVITE", body=SDP) + b"trailing garbage after the body"
    assert parse_request(data).body == SDP


def test_content_length_larger_than_the_datagram_is_a_respondable_error() -> None:
    data = request("INVITE", body=SDP)[:-10]
    exc = error_of(data)
    assert exc.status == 400
    assert exc.partial is not None and exc.partial.method == "INVITE"


def test_content_length_larger_without_mandatory_headers_is_not_respondable() -> None:
    data = request("INVITE", body=SDP, omit=["Call-ID"])[:-10]
    assert error_of(data).partial is None


def test_missing_content_length_on_a_datagram_takes_the_whole_rest() -> None:
    data = request("INVITE", body=SDP, omit=["Content-Length"])
    assert parse_request(data).body == SDP


def test_missing_content_length_on_a_stream_means_no_body() -> None:
    data = request("INVITE", body=SDP, omit=["Content-Length"])
    assert parse_request(data, datagram=False).body == b""


@pytest.mark.parametrize("missing", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_header_cannot_be_answered(missing: str) -> None:
    exc = error_of(request("OPTIONS", omit=[missing]))
    assert exc.reason == f"Missing {missing}"
    assert exc.partial is None


def test_missing_max_forwards_is_tolerated() -> None:
    assert parse_request(request("OPTIONS", max_forwards=None)).method == "OPTIONS"


def test_cseq_method_mismatch_is_a_respondable_error() -> None:
    exc = error_of(request("BYE", cseq_method="INVITE"))
    assert exc.partial is not None and "CSeq" in exc.reason


@pytest.mark.parametrize("cseq", ["abc INVITE", "1", "99999999999 INVITE", "-1 INVITE"])
def test_malformed_cseq_is_not_respondable(cseq: str) -> None:
    data = request("INVITE").replace(b"CSeq: 1 INVITE", f"CSeq: {cseq}".encode())
    assert error_of(data).partial is None


def test_cseq_above_two_to_the_31_is_rejected() -> None:
    data = request("INVITE").replace(b"CSeq: 1 INVITE", b"CSeq: 2147483648 INVITE")
    assert error_of(data).partial is not None


@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "1e3", "-5", "0x10", ""])
def test_content_length_must_be_ascii_digits(value: str) -> None:
    # '²'.isdigit() is True but int('²') raises: this once escaped as a bare ValueError.
    data = request("OPTIONS").replace(b"Content-Length: 0", f"Content-Length: {value}".encode())
    exc = error_of(data)
    assert exc.reason == "Malformed Content-Length" and exc.partial is not None


def test_malformed_max_forwards_is_respondable() -> None:
    exc = error_of(request("OPTIONS", max_forwards="\u00b9\u00b9"))
    assert exc.partial is not None and "Max-Forwards" in exc.reason


def test_unsupported_sip_version_gets_505() -> None:
    data = request("OPTIONS").replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1)
    exc = error_of(data)
    assert exc.status == 505 and exc.partial is not None


def test_malformed_header_line_is_respondable_when_the_rest_is_sound() -> None:
    data = OPTIONS.replace(b"Max-Forwards: 70\r\n", b"This line has no colon\r\n")
    exc = error_of(data)
    assert exc.reason == "Malformed header line" and exc.partial is not None


def test_malformed_request_line_is_not_respondable() -> None:
    assert error_of(b"INVITE\r\n" + OPTIONS.split(b"\r\n", 1)[1]).partial is None


def test_non_utf8_bytes_survive_a_round_trip() -> None:
    weird = b"\xff\xfe\xc3\x28 caf\xc3\xa9"
    data = OPTIONS.replace(b"Max-Forwards: 70\r\n", b"X-Weird: " + weird + b"\r\n")
    data = data.replace(b"Content-Length: 0\r\n\r\n", b"Content-Length: 4\r\n\r\n\x00\x80\xff\n")
    message = parse_request(data)
    assert message.body == b"\x00\x80\xff\n"
    out = message.to_bytes()
    assert b"X-Weird: " + weird + b"\r\n" in out
    assert out.endswith(b"\r\n\r\n\x00\x80\xff\n")
    again = parse_request(out)
    assert again.headers.get("X-Weird") == message.headers.get("X-Weird")
    # And a response copying From/To with such bytes still serialises.
    response = build_response(again, 200, to_tag="t")
    assert parse_message(response.to_bytes()).headers.get("Call-ID") == "keepalive-1"


def test_header_block_over_the_limit_is_rejected() -> None:
    big = b"X-Pad: " + b"a" * MAX_HEADER_BYTES + b"\r\n"
    data = OPTIONS.replace(b"Max-Forwards: 70\r\n", big)
    assert error_of(data).reason == "Header block too large"


def test_too_many_header_lines_are_rejected() -> None:
    lines = b"".join(b"X-H%d: 1\r\n" % i for i in range(300))
    data = OPTIONS.replace(b"Max-Forwards: 70\r\n", lines)
    assert error_of(data).reason == "Too many header lines"


def test_body_over_the_limit_gets_413() -> None:
    data = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: %d" % (MAX_BODY_BYTES + 1))
    exc = error_of(data + b"x" * (MAX_BODY_BYTES + 1), datagram=False)
    assert exc.status == 413 and exc.partial is not None


def test_empty_or_whitespace_input_is_a_parse_error() -> None:
    for data in (b"", b"\r\n\r\n", b"\n"):
        with pytest.raises(SipParseError):
            parse_message(data)


def test_response_status_line() -> None:
    message = parse_message(
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(message, SipResponse)
    assert (message.status, message.reason) == (180, "Ringing")
    with pytest.raises(SipParseError):
        parse_message(b"SIP/2.0 99 Nope\r\n\r\n")


def test_via_with_bad_port_is_malformed() -> None:
    for value in ("SIP/2.0/UDP host:0", "SIP/2.0/UDP host:70000", "UDP host", "SIP/2.0/UDP"):
        with pytest.raises(SipParseError):
            parse_via(value)


def test_headers_keep_values_as_received_and_order() -> None:
    h = Headers([("v", "a"), ("X-Custom", " spaced "), ("VIA", "b")])
    assert [n for n, _ in h] == ["Via", "X-Custom", "Via"]
    assert h.get_all("via") == ["a", "b"]
    h.replace_first("Via", "c")
    assert h.get_all("Via") == ["c", "b"]
    assert "x-custom" in h and "Nope" not in h


def test_response_carries_the_request_identity_and_adds_a_to_tag() -> None:
    message = parse_request(request("INVITE", body=SDP, headers=[("Timestamp", "54")]))
    trying = build_response(message, 100, to_tag="never")
    assert trying.to_tag is None and trying.headers.get("Timestamp") == "54"
    ok = build_response(message, 200, to_tag="ours")
    assert ok.to_tag == "ours"
    assert ok.headers.get("From") == message.headers.get("From")
    assert ok.headers.get("CSeq") == "1 INVITE" and ok.call_id == message.call_id
    assert ok.headers.get("Timestamp") is None


# ---------------------------------------------------------------- stream framing (TCP/TLS)


def test_framer_reassembles_partial_reads() -> None:
    data = request("INVITE", body=SDP)
    framer = StreamFramer()
    assert framer.feed(data[:10]) == []
    assert framer.feed(data[10:200]) == []
    assert framer.feed(data[200:]) == [data]


def test_framer_cuts_many_messages_from_one_read() -> None:
    one = request("INVITE", body=SDP)
    two = request("OPTIONS")
    three = request("BYE", to_tag="x", cseq=2)
    framer = StreamFramer()
    assert framer.feed(one + two + three + one[:5]) == [one, two, three]
    assert framer.feed(one[5:]) == [one]


def test_framer_fed_byte_by_byte() -> None:
    stream = request("INVITE", body=SDP) + b"\r\n\r\n" + request("OPTIONS")
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(len(stream)):
        out.extend(framer.feed(stream[i : i + 1]))
    assert len(out) == 2
    assert parse_request(out[0], datagram=False).body == SDP
    assert parse_request(out[1], datagram=False).method == "OPTIONS"
    assert framer.pings == 1


def test_framer_counts_keepalive_pings_however_they_are_split() -> None:
    framer = StreamFramer()
    for byte in b"\r\n\r\n\r\n\r\n":
        assert framer.feed(bytes([byte])) == []
    assert framer.pings == 2
    framer.pings = 0
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r\n" + OPTIONS) == [OPTIONS]
    assert framer.pings == 1
    # A lone CRLF (a pong) is not a ping.
    framer.pings = 0
    framer.feed(b"\r\n" + OPTIONS)
    assert framer.pings == 0


def test_framer_accepts_lf_only_header_end() -> None:
    data = request("INVITE", body=SDP).replace(b"\r\n\r\n", b"\n\n", 1)
    framer = StreamFramer()
    (message,) = framer.feed(data)
    assert parse_request(message, datagram=False).body == SDP


def test_framer_requires_content_length() -> None:
    with pytest.raises(SipParseError, match="Content-Length"):
        StreamFramer().feed(request("OPTIONS", omit=["Content-Length"]))


def test_framer_rejects_oversize_messages() -> None:
    head = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 5000")
    with pytest.raises(SipParseError) as info:
        StreamFramer(max_message=4096).feed(head)
    assert info.value.status == 513
    with pytest.raises(SipParseError, match="Header block too large"):
        StreamFramer().feed(b"INVITE sip:a@b SIP/2.0\r\nX: " + b"a" * (MAX_HEADER_BYTES + 10))


def test_framer_rejects_malformed_content_length() -> None:
    with pytest.raises(SipParseError, match="Content-Length"):
        StreamFramer().feed(OPTIONS.replace(b"Content-Length: 0", b"Content-Length: \xc2\xb2"))


def test_framer_is_linear_for_a_large_body_fed_in_small_pieces() -> None:
    body = b"x" * 200_000
    data = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: %d" % len(body)) + body
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(0, len(data), 7):
        out.extend(framer.feed(data[i : i + 7]))
    assert out == [data]


# ---------------------------------------------------------------- interop requests


def interop_cases() -> list[str]:
    return sorted(p.stem for p in INTEROP.glob("*.sip"))


@pytest.mark.parametrize("case", interop_cases())
def test_every_interop_request_parses(case: str) -> None:
    data = (INTEROP / f"{case}.sip").read_bytes()
    expect = json.loads((INTEROP / f"{case}.expect.json").read_text())
    message = parse_request(data)
    assert message.method == expect["method"]
    number, method = message.cseq
    assert method == expect["method"] and number > 0
    assert message.call_id == message.headers.get("Call-ID") and len(message.call_id) > 8
    assert message.from_tag
    assert (message.to_tag is not None) == (
        expect.get("is_reinvite", False) or expect["method"] == "UPDATE"
    )
    content_type = (message.content_type or "").lower()
    boundary = (expect.get("multipart") or {}).get("boundary")
    if boundary:
        assert content_type.startswith("multipart/mixed") and boundary in content_type.replace(
            boundary.lower(), boundary
        )
    else:
        assert content_type.startswith("application/rs-metadata")
    # The body is cut exactly at Content-Length, and serialising changes nothing that counts.
    assert len(message.body) == int(message.headers.get("Content-Length") or "0")
    again = parse_request(message.to_bytes())
    assert again.body == message.body and again.call_id == message.call_id
    assert message.top_via.branch and message.top_via.branch.startswith("z9hG4bK")
