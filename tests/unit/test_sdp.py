"""The SDP parser against the interop offers, the dialects of SIPREC.md and hostile input."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from siprec_server.media.srtp_suites import SUITES, find_suite
from siprec_server.siprec.sdp import (
    MAX_FORMATS_PER_MEDIA,
    MAX_LINES,
    MAX_MEDIA,
    MAX_SDP_BYTES,
    Codec,
    Connection,
    SdpError,
    SessionDescription,
    parse_sdp,
)
from tests.interop import INTEROP_DIR  # noqa: E402

INTEROP = INTEROP_DIR

REGRESSIONS = Path(__file__).resolve().parents[1] / "regressions" / "sdp"

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- interop cases -------------------------------------------------------------------------


def sdp_part(message: bytes) -> bytes | None:
    """The application/sdp body of a SIP request: a deliberately small splitter for tests."""
    head, _, body = message.partition(b"\r\n\r\n")
    content_type = re.search(rb"(?im)^content-type:[ \t]*([^\r\n]*)", head)
    if content_type is None:
        return None
    if b"application/sdp" in content_type.group(1).lower():
        return body
    boundary = re.search(rb'boundary="?([^";\s]+)"?', content_type.group(1), re.IGNORECASE)
    if boundary is None:
        return None
    for part in body.split(b"--" + boundary.group(1)):
        part_head, sep, part_body = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        if sep and b"application/sdp" in part_head.lower():
            return part_body
    return None


def interop_offers() -> list[tuple[str, bytes, dict[str, Any]]]:
    """(case name, SDP offer bytes, expect.json) for every interop case that carries an offer."""
    cases = []
    for expect_path in sorted(INTEROP.glob("*.expect.json")):
        expect = json.loads(expect_path.read_text())
        if not expect.get("sdp_offer"):
            continue
        name = expect_path.name.removesuffix(".expect.json")
        sdp = sdp_part((INTEROP / f"{name}.sip").read_bytes())
        assert sdp is not None, name
        cases.append((name, sdp, expect))
    return cases


INTEROP_OFFERS = interop_offers()


def test_interop_corpus_is_present() -> None:
    assert len(INTEROP_OFFERS) >= 8


@pytest.mark.parametrize(
    ("name", "sdp", "expect"), INTEROP_OFFERS, ids=[c[0] for c in INTEROP_OFFERS]
)
def test_interop_offer_parses_as_expected(name: str, sdp: bytes, expect: dict[str, Any]) -> None:
    offer = parse_sdp(sdp)
    expected_media = expect["sdp_offer"]["media"]
    assert len(offer.media) == len(expected_media)
    for media, want in zip(offer.media, expected_media, strict=True):
        assert media.index == want["index"]
        assert media.kind == want["type"]
        assert media.port == want["port"]
        assert media.proto == want["proto"]
        assert media.label == want["label"]
        # "sendrecv (implicit)" documents a default, the first word is the direction.
        assert media.direction == want["direction"].split()[0]
        assert media.connection is not None
        assert len(media.codecs) == len(want["codecs"])
        for codec, want_codec in zip(media.codecs, want["codecs"], strict=True):
            assert codec.pt == want_codec["pt"]
            assert codec.name == want_codec["name"]
            assert codec.rate == want_codec["rate"]
            assert codec.channels == want_codec.get("channels", 1)
            assert codec.fmtp == want_codec.get("fmtp")
        assert [c.tag for c in media.crypto] == [c["tag"] for c in want["crypto"]]
        for described in want.get("attributes", []):
            attr_name, colon, value = described.split(" (", 1)[0].partition(":")
            assert (attr_name, value if colon else None) in media.attributes


# --- the dialects of SIPREC.md --------------------------------------------------------------

BASIC = (
    "v=0\r\n"
    "o=- 1 2 IN IP4 192.0.2.1\r\n"
    "s=-\r\n"
    "c=IN IP4 192.0.2.1\r\n"
    "t=0 0\r\n"
    "m=audio 4000 RTP/AVP 0 101\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=label:1\r\n"
    "a=sendonly\r\n"
)


def test_basic_offer_fields() -> None:
    offer = parse_sdp(BASIC.encode())
    assert offer.origin is not None
    assert (offer.origin.session_id, offer.origin.session_version) == ("1", "2")
    assert offer.origin.address == "192.0.2.1"
    assert offer.session_name == "-"
    assert offer.connection == Connection("IN", "IP4", "192.0.2.1")
    assert offer.direction == "sendrecv"
    (audio,) = offer.media
    assert audio.codecs == (
        Codec(0, "PCMU", 8000),
        Codec(101, "telephone-event", 8000, 1, "0-16"),
    )
    assert audio.formats == ("0", "101")
    assert audio.port_count == 1
    assert not audio.is_secure
    assert audio.rtcp_port is None and not audio.rtcp_mux and audio.ptime is None
    assert ("t=0 0") in offer.other_lines


def test_str_and_bytes_give_the_same_description() -> None:
    assert parse_sdp(BASIC) == parse_sdp(BASIC.encode())


def test_lf_only_and_trailing_spaces_are_tolerated() -> None:
    sloppy = BASIC.replace("\r\n", "   \n").replace("a=sendonly", "a=sendonly\t")
    assert parse_sdp(sloppy) == parse_sdp(BASIC)


def test_bare_cr_line_endings_are_tolerated() -> None:
    assert parse_sdp(BASIC.replace("\r\n", "\r")) == parse_sdp(BASIC)


def test_utf8_bom_is_ignored() -> None:
    assert parse_sdp(b"\xef\xbb\xbf" + BASIC.encode()) == parse_sdp(BASIC)


def test_no_session_connection_uses_media_level_c() -> None:
    offer = parse_sdp(
        "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nt=0 0\n"
        "m=audio 4000 RTP/AVP 8\nc=IN IP4 198.51.100.7\n"
        "m=audio 4002 RTP/AVP 8\nc=IN IP4 198.51.100.8\n"
    )
    assert offer.connection is None
    assert [m.connection for m in offer.media] == [
        Connection("IN", "IP4", "198.51.100.7"),
        Connection("IN", "IP4", "198.51.100.8"),
    ]


def test_media_level_c_overrides_session_level() -> None:
    offer = parse_sdp(BASIC + "m=audio 4002 RTP/AVP 0\r\nc=IN IP4 203.0.113.9\r\n")
    assert offer.media[0].connection == Connection("IN", "IP4", "192.0.2.1")
    assert offer.media[1].connection == Connection("IN", "IP4", "203.0.113.9")


def test_t_before_c_and_unusual_session_order() -> None:
    shuffled = (
        "v=0\r\nt=0 0\r\ns=call\r\nc=IN IP4 192.0.2.1\r\no=- 5 6 IN IP4 192.0.2.1\r\n"
        "m=audio 4000 RTP/AVP 0\r\n"
    )
    offer = parse_sdp(shuffled)
    assert offer.session_name == "call"
    assert offer.origin is not None and offer.origin.session_id == "5"
    assert offer.media[0].connection == Connection("IN", "IP4", "192.0.2.1")


def test_attributes_before_rtpmap_order_does_not_matter() -> None:
    offer = parse_sdp(
        "v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 96\n"
        "a=fmtp:96 useinbandfec=1\na=sendonly\na=label:x\na=rtpmap:96 opus/48000/2\n"
    )
    assert offer.media[0].codecs == (Codec(96, "opus", 48000, 2, "useinbandfec=1"),)


def test_ipv6_connection() -> None:
    offer = parse_sdp("v=0\nc=IN IP6 2001:db8::1\nm=audio 4000 RTP/AVP 0\n")
    assert offer.media[0].connection == Connection("IN", "IP6", "2001:db8::1")


def test_multicast_ttl_suffix_is_not_part_of_the_address() -> None:
    offer = parse_sdp("v=0\nc=IN IP4 233.252.0.1/127\nm=audio 4000 RTP/AVP 0\n")
    assert offer.connection == Connection("IN", "IP4", "233.252.0.1")


def test_lower_case_addr_type_is_normalised() -> None:
    offer = parse_sdp("v=0\nc=IN ip4 192.0.2.1\nm=audio 4000 RTP/AVP 0\n")
    assert offer.connection is not None and offer.connection.addr_type == "IP4"


def test_upper_case_opus_keeps_its_spelling() -> None:
    offer = parse_sdp("v=0\nm=audio 4000 RTP/AVP 111\na=rtpmap:111 OPUS/48000/2\n")
    assert offer.media[0].codecs == (Codec(111, "OPUS", 48000, 2),)


@pytest.mark.parametrize(
    ("pt", "name", "rate"),
    [
        (0, "PCMU", 8000),
        (3, "GSM", 8000),
        (4, "G723", 8000),
        (8, "PCMA", 8000),
        (9, "G722", 8000),
        (13, "CN", 8000),
        (18, "G729", 8000),
    ],
)
def test_static_payload_type_without_rtpmap(pt: int, name: str, rate: int) -> None:
    offer = parse_sdp(f"v=0\nm=audio 4000 RTP/AVP {pt}\n")
    assert offer.media[0].codecs == (Codec(pt, name, rate),)


def test_explicit_rtpmap_wins_over_the_static_table() -> None:
    offer = parse_sdp("v=0\nm=audio 4000 RTP/AVP 0\na=rtpmap:0 PCMA/8000\n")
    assert offer.media[0].codecs[0].name == "PCMA"


def test_dynamic_payload_type_without_rtpmap_has_no_name() -> None:
    offer = parse_sdp("v=0\nm=audio 4000 RTP/AVP 96 0\n")
    assert offer.media[0].codecs == (Codec(96, "", 0), Codec(0, "PCMU", 8000))


def test_non_numeric_formats_are_kept_but_are_not_codecs() -> None:
    offer = parse_sdp("v=0\nm=image 4000 udptl t38\nm=audio 4002 RTP/AVP 0 0 200\n")
    assert offer.media[0].formats == ("t38",) and offer.media[0].codecs == ()
    # duplicates and out-of-range payload types are not codecs either
    assert offer.media[1].formats == ("0", "0", "200")
    assert [c.pt for c in offer.media[1].codecs] == [0]


def test_direction_both_is_comedia_not_media_direction() -> None:
    offer = parse_sdp("v=0\nm=audio 4000 RTP/AVP 8\na=direction:both\n")
    assert offer.media[0].direction == "sendrecv"
    assert ("direction", "both") in offer.media[0].attributes


@pytest.mark.parametrize("direction", ["sendonly", "recvonly", "inactive", "sendrecv"])
def test_media_direction(direction: str) -> None:
    offer = parse_sdp(f"v=0\nm=audio 4000 RTP/AVP 8\na={direction}\n")
    assert offer.media[0].direction == direction


def test_session_level_direction_applies_unless_media_overrides() -> None:
    offer = parse_sdp(
        "v=0\na=inactive\nm=audio 4000 RTP/AVP 8\nm=audio 4002 RTP/AVP 8\na=sendonly\n"
    )
    assert offer.direction == "inactive"
    assert [m.direction for m in offer.media] == ["inactive", "sendonly"]


def test_ice_and_unknown_attributes_are_kept_raw() -> None:
    offer = parse_sdp(
        "v=0\nm=audio 4000 RTP/AVP 0\n"
        "a=ice-ufrag:F7gI\na=ice-pwd:x9cml/YzichV2+XlhiMu8g\n"
        "a=candidate:1 1 UDP 2130706431 10.0.1.1 8998 typ host\n"
        "a=x-vendor-thing\nb=AS:64\nthis is not sdp\n"
    )
    media = offer.media[0]
    assert ("ice-ufrag", "F7gI") in media.attributes
    assert ("candidate", "1 1 UDP 2130706431 10.0.1.1 8998 typ host") in media.attributes
    assert ("x-vendor-thing", None) in media.attributes
    assert media.attribute_values("ICE-PWD") == ("x9cml/YzichV2+XlhiMu8g",)
    assert media.other_lines == ("b=AS:64", "this is not sdp")


@pytest.mark.parametrize(
    "label", ["1", "0", "a_leg", "16777227", "Caller_Stream", "two words", "é"]
)
def test_label_is_any_string(label: str) -> None:
    offer = parse_sdp(f"v=0\nm=audio 4000 RTP/AVP 0\na=label:{label}\n")
    assert offer.media[0].label == label


def test_missing_label_is_none() -> None:
    assert parse_sdp("v=0\nm=audio 4000 RTP/AVP 0\n").media[0].label is None


def test_tabs_between_fields_are_tolerated() -> None:
    offer = parse_sdp(
        "v=0\nm=audio\t4000\tRTP/AVP\t101\na=rtpmap:101\ttelephone-event/8000\n"
        "a=fmtp:101\t0-15\na=rtcp:4005\tIN IP4 192.0.2.1\n"
    )
    media = offer.media[0]
    assert media.codecs == (Codec(101, "telephone-event", 8000, 1, "0-15"),)
    assert media.rtcp_port == 4005


def test_rtcp_rtcp_mux_ptime_and_port_count() -> None:
    offer = parse_sdp(
        "v=0\nm=audio 4000/2 RTP/AVPF 0\na=rtcp:4005 IN IP4 192.0.2.9\na=rtcp-mux\na=ptime:20\n"
    )
    media = offer.media[0]
    assert (media.port, media.port_count) == (4000, 2)
    assert media.rtcp_port == 4005 and media.rtcp_mux and media.ptime == 20


def test_unreadable_numbers_are_ignored_not_fatal() -> None:
    offer = parse_sdp("v=0\nm=audio 4000 RTP/AVP 0\na=rtcp:abc\na=ptime:-1\na=rtpmap:x PCMU/8000\n")
    media = offer.media[0]
    assert media.rtcp_port is None and media.ptime is None
    assert media.codecs == (Codec(0, "PCMU", 8000),)


def test_session_without_media_parses() -> None:
    offer = parse_sdp("v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nt=0 0\n")
    assert offer.media == ()


def test_latin1_text_is_kept_byte_for_byte() -> None:
    offer = parse_sdp(b"v=0\ns=Caf\xe9\nm=audio 4000 RTP/AVP 0\n")
    assert offer.session_name == "Café"


# --- what is refused ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an SDP"),
        (b"hello world\r\n", "not an SDP"),
        (b"s=only a name\r\n", "not an SDP"),
        (b"v=0\nm=audio\n", "m-line 0"),
        (b"v=0\nm=audio 4000 RTP/AVP\n", "no formats"),
        (b"v=0\nm=audio port RTP/AVP 0\n", "not a number"),
        (b"v=0\nm=audio 70000 RTP/AVP 0\n", "out of range"),
        (b"v=0\nm=audio 4000/0 RTP/AVP 0\n", "port count"),
        ("v=0\nm=audio \u0664\u0660\u0660\u0660 RTP/AVP 0\n".encode(), "not a number"),
        (b"v=0\na=label:a\x00b\n", "NUL"),
    ],
)
def test_broken_input_raises_sdp_error(data: bytes, message: str) -> None:
    with pytest.raises(SdpError, match=message):
        parse_sdp(data)


def test_size_limit() -> None:
    big = BASIC + "a=x-pad:" + "x" * MAX_SDP_BYTES + "\r\n"
    with pytest.raises(SdpError, match="larger"):
        parse_sdp(big.encode())
    with pytest.raises(SdpError, match="larger"):
        parse_sdp(big)


def test_media_line_limit() -> None:
    ok = "v=0\n" + "m=audio 4000 RTP/AVP 0\n" * MAX_MEDIA
    assert len(parse_sdp(ok).media) == MAX_MEDIA
    with pytest.raises(SdpError, match="m-lines"):
        parse_sdp(ok + "m=audio 4000 RTP/AVP 0\n")


def test_format_limit() -> None:
    formats = " ".join(["0"] * MAX_FORMATS_PER_MEDIA)
    assert parse_sdp(f"v=0\nm=audio 4000 RTP/AVP {formats}\n").media[0].formats
    with pytest.raises(SdpError, match="formats"):
        parse_sdp(f"v=0\nm=audio 4000 RTP/AVP {formats} 8\n")


def test_line_limit() -> None:
    with pytest.raises(SdpError, match="lines"):
        parse_sdp("v=0\n" + "a=x\n" * MAX_LINES)


def test_wrong_input_type_and_unencodable_text() -> None:
    with pytest.raises(SdpError):
        parse_sdp(1234)  # type: ignore[arg-type]
    with pytest.raises(SdpError):
        parse_sdp("v=0\nm=audio 4000 RTP/AVP 0\na=label:\ud800\n")


# --- a=crypto (RFC 4568) --------------------------------------------------------------------

KEY30 = bytes(range(30))
KEY46 = bytes(range(46))
KEY28 = bytes(range(28))
KEY44 = bytes(range(44))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def crypto_of(line: str) -> Any:
    offer = parse_sdp(f"v=0\nm=audio 4000 RTP/SAVP 0\na=crypto:{line}\n")
    assert offer.media[0].is_secure
    (crypto,) = offer.media[0].crypto
    return crypto


def test_crypto_basic_line() -> None:
    crypto = crypto_of(f"1 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY30)}")
    assert crypto.tag == 1
    assert crypto.suite_name == "AES_CM_128_HMAC_SHA1_80"
    assert crypto.suite == SUITES[0]
    assert crypto.key_salt == KEY30
    assert crypto.lifetime is None and crypto.mki is None and crypto.session_params == ()
    assert crypto.usable and not crypto.unencrypted_srtcp


@pytest.mark.parametrize("suite", SUITES, ids=[s.name for s in SUITES])
def test_every_known_suite_with_a_key_of_its_length_is_usable(suite: Any) -> None:
    key = bytes(range(suite.key_salt_len))
    crypto = crypto_of(f"7 {suite.name} inline:{b64(key)}")
    assert crypto.suite == suite and crypto.key_salt == key and crypto.usable


@pytest.mark.parametrize("spelling", ["AES_CM_256_HMAC_SHA1_80", "AES_CM_256_HMAC_SHA1_32"])
def test_aes_cm_256_spelling_is_understood_and_kept(spelling: str) -> None:
    crypto = crypto_of(f"2 {spelling} inline:{b64(KEY46)}")
    assert crypto.suite_name == spelling
    assert crypto.suite == find_suite(spelling) and crypto.usable


@pytest.mark.parametrize(
    ("suffix", "lifetime", "mki"),
    [
        ("|2^31", 2**31, None),
        ("|2^20|1:4", 2**20, (1, 4)),
        ("|1048576", 1048576, None),
        ("|1:1", None, (1, 1)),
        ("|2^48|255:1", 2**48, (255, 1)),
    ],
)
def test_crypto_lifetime_and_mki_forms(
    suffix: str, lifetime: int | None, mki: tuple[int, int] | None
) -> None:
    crypto = crypto_of(f"1 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY30)}{suffix}")
    assert crypto.key_salt == KEY30
    assert (crypto.lifetime, crypto.mki) == (lifetime, mki)
    assert crypto.usable


@pytest.mark.parametrize(
    "key_params",
    [
        f"inline:{b64(KEY30)}|2^31|x",  # garbage third field
        f"inline:{b64(KEY30)}|1:4|2^31",  # lifetime after MKI
        f"inline:{b64(KEY30)}|256:1",  # MKI value does not fit its length
        f"inline:{b64(KEY30)}|1:0",  # zero-length MKI
        f"inline:{b64(KEY30)}|soon",
        "inline:!!!notbase64!!!",
        f"inline:{b64(KEY30)[:-3]}",  # truncated: decodes to the wrong length
        f"inline:{b64(KEY46)}",  # a 256-bit key under a 128-bit suite
        f"uri:{b64(KEY30)}",  # a key method other than inline
        "",
    ],
)
def test_unreadable_or_wrong_length_key_is_not_usable(key_params: str) -> None:
    crypto = crypto_of(f"1 AES_CM_128_HMAC_SHA1_80 {key_params}".rstrip())
    assert crypto.key_salt is None
    assert not crypto.usable


def test_key_without_base64_padding_is_accepted() -> None:
    unpadded = b64(KEY46).rstrip("=")
    assert unpadded != b64(KEY46)
    assert crypto_of(f"1 AES_256_CM_HMAC_SHA1_80 inline:{unpadded}").key_salt == KEY46


def test_first_of_several_inline_keys_is_used() -> None:
    other = bytes(30)
    crypto = crypto_of(
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY30)}|2^20|1:4;inline:{b64(other)}|2^20|2:4"
    )
    assert crypto.key_salt == KEY30 and crypto.mki == (1, 4)


def test_unknown_suite_is_kept_but_unusable() -> None:
    crypto = crypto_of(f"3 F8_128_HMAC_SHA1_80 inline:{b64(KEY30)}")
    assert crypto.suite is None and crypto.suite_name == "F8_128_HMAC_SHA1_80"
    assert not crypto.usable


@pytest.mark.parametrize(
    ("params", "usable"),
    [
        ("UNENCRYPTED_SRTCP", True),
        ("KDR=0", True),
        ("kdr=0", True),
        ("WSH=64", True),
        ("FEC_ORDER=FEC_SRTP", True),
        ("-x-optional-extension", True),
        ("UNENCRYPTED_SRTCP WSH=128", True),
        ("KDR=1", False),
        ("KDR=24", False),
        ("KDR=x", False),
        ("UNENCRYPTED_SRTP", False),
        ("UNAUTHENTICATED_SRTP", False),
        ("X_MANDATORY_EXTENSION", False),
    ],
)
def test_session_parameters(params: str, usable: bool) -> None:
    crypto = crypto_of(f"1 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY30)} {params}")
    assert crypto.session_params == tuple(params.split())
    assert crypto.usable is usable
    assert crypto.unencrypted_srtcp is ("UNENCRYPTED_SRTCP" in params)


def test_several_crypto_lines_keep_offer_order() -> None:
    offer = parse_sdp(
        "v=0\nm=audio 4000 RTP/SAVP 0\n"
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY46)}\n"
        f"a=crypto:2 AEAD_AES_256_GCM inline:{b64(KEY44)}\n"
        f"a=crypto:3 AEAD_AES_128_GCM inline:{b64(KEY28)}\n"
        "a=crypto:notatag AES_CM_128_HMAC_SHA1_80 inline:x\n"
        "a=crypto:4\n"
    )
    crypto = offer.media[0].crypto
    assert [c.tag for c in crypto] == [1, 2, 3]
    assert [c.usable for c in crypto] == [False, True, True]
    # the unreadable lines are still there, raw
    assert len(offer.media[0].attribute_values("crypto")) == 5


def test_key_material_is_not_in_repr() -> None:
    crypto = crypto_of(f"1 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY30)}")
    assert repr(KEY30) not in repr(crypto)
    assert b64(KEY30) not in repr(crypto)


# --- never anything but SdpError -------------------------------------------------------------


def parse_or_sdp_error(data: bytes | str) -> SessionDescription | None:
    try:
        return parse_sdp(data)
    except SdpError:
        return None


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_sdp_error(data: bytes) -> None:
    parse_or_sdp_error(data)


@FUZZ
@given(st.text(max_size=2048))
def test_random_text_only_raises_sdp_error(data: str) -> None:
    parse_or_sdp_error(data)


_tokens = st.sampled_from(
    [
        "0",
        "8",
        "9",
        "18",
        "96",
        "101",
        "111",
        "127",
        "128",
        "-1",
        "65535",
        "65536",
        "x",
        "",
        "2^31",
        "1:4",
        "IN",
        "IP4",
        "IP6",
        "::1",
        "0.0.0.0",
        "/",
        ":",
        "|",
        ";",
        "=",
    ]
)
_b64_key = st.binary(min_size=0, max_size=50).map(lambda b: base64.b64encode(b).decode())
_suite_names = st.sampled_from([*(s.name for s in SUITES), "AES_CM_256_HMAC_SHA1_80", "NOPE"])
_directions = st.sampled_from(["sendrecv", "sendonly", "recvonly", "inactive", "direction:both"])

sdp_lines = st.one_of(
    st.just("v=0"),
    st.builds(lambda a, b: f"o=- {a} {b} IN IP4 192.0.2.1", _tokens, _tokens),
    st.builds(lambda a: f"s={a}", st.text(max_size=20)),
    st.builds(lambda a, b: f"c=IN {a} {b}", st.sampled_from(["IP4", "IP6", "ip4", "X"]), _tokens),
    st.just("t=0 0"),
    st.builds(
        lambda kind, port, proto, fmts: f"m={kind} {port} {proto} {' '.join(fmts)}",
        st.sampled_from(["audio", "video", "AUDIO", "application", "image", "text"]),
        st.one_of(st.integers(0, 70000).map(str), _tokens, st.just("4000/2")),
        st.sampled_from(
            [
                "RTP/AVP",
                "RTP/SAVP",
                "RTP/SAVPF",
                "RTP/AVPF",
                "UDP/TLS/RTP/SAVPF",
                "udptl",
                "rtp/avp",
                "TCP/MSRP",
            ]
        ),
        st.lists(_tokens, max_size=6),
    ),
    st.builds(
        lambda pt, name, rate, ch: f"a=rtpmap:{pt} {name}/{rate}{ch}",
        _tokens,
        st.sampled_from(
            ["PCMU", "PCMA", "G722", "G729", "opus", "OPUS", "telephone-event", "H.264", ""]
        ),
        st.sampled_from(["8000", "48000", "16000", "90000", "", "x"]),
        st.sampled_from(["", "/2", "/1", "/0", "/x"]),
    ),
    st.builds(lambda pt, p: f"a=fmtp:{pt} {p}", _tokens, st.text(max_size=20)),
    st.builds(
        lambda tag, suite, key, extra, params: (
            f"a=crypto:{tag} {suite} inline:{key}{extra} {params}"
        ),
        _tokens,
        _suite_names,
        _b64_key,
        st.sampled_from(["", "|2^31", "|2^31|1:4", "|1:1", "|2^99", "|x|y|z"]),
        st.sampled_from(["", "UNENCRYPTED_SRTCP", "KDR=0", "KDR=3", "-opt", "WSH=64 FOO"]),
    ),
    st.builds(lambda label: f"a=label:{label}", st.text(max_size=20)),
    _directions.map(lambda d: f"a={d}"),
    st.builds(lambda p: f"a=rtcp:{p}", _tokens),
    st.just("a=rtcp-mux"),
    st.builds(lambda p: f"a=ptime:{p}", _tokens),
    st.text(max_size=40),
)
line_endings = st.sampled_from(["\r\n", "\n", "\r", " \r\n"])


@st.composite
def sdp_soups(draw: st.DrawFn) -> str:
    lines = draw(st.lists(sdp_lines, max_size=40))
    ending = draw(line_endings)
    return ending.join(["v=0", *lines]) + ending


# Labels are any printable text; control characters (CR, LF, NUL) cannot be part of a line.
_label_chars = st.characters(blacklist_categories=("Cc", "Cs"))


@st.composite
def media_sections(draw: st.DrawFn, noise: bool = True) -> list[str]:
    """A mostly well-formed m= section: the kind of offer SBCs really send, varied."""
    proto = draw(
        st.sampled_from(["RTP/AVP", "RTP/SAVP", "RTP/SAVPF", "RTP/AVPF", "UDP/TLS/RTP/SAVPF"])
    )
    kind = draw(st.sampled_from(["audio", "audio", "audio", "video"]))
    pts = draw(
        st.lists(st.sampled_from([0, 8, 9, 18, 3, 96, 101, 107, 111]), min_size=1, max_size=5)
    )
    port = draw(st.sampled_from([0, 4000, 65535, 12654]))
    lines = [f"m={kind} {port} {proto} {' '.join(map(str, pts))}"]
    if draw(st.booleans()):
        lines.append(f"c=IN IP4 198.51.100.{draw(st.integers(0, 255))}")
    names = {
        96: "opus/48000/2",
        101: "telephone-event/8000",
        107: "telephone-event/48000",
        111: "OPUS/48000/2",
    }
    for pt in pts:
        if pt in names and draw(st.booleans()):
            lines.append(f"a=rtpmap:{pt} {names[pt]}")
    for _ in range(draw(st.integers(0, 3))):
        suite = draw(st.sampled_from(SUITES))
        length = suite.key_salt_len + draw(st.sampled_from([0, 0, 0, -1, 2]))
        key = base64.b64encode(draw(st.binary(min_size=length, max_size=length))).decode()
        extra = draw(st.sampled_from(["", "|2^31", "|2^20|1:4", " UNENCRYPTED_SRTCP", " KDR=1"]))
        lines.append(f"a=crypto:{draw(st.integers(0, 99))} {suite.name} inline:{key}{extra}")
    if draw(st.booleans()):
        lines.append(f"a=label:{draw(st.text(_label_chars, max_size=12))}")
    if noise:
        lines.extend(draw(st.lists(sdp_lines, max_size=3)))
    return lines


@st.composite
def sdp_offers(draw: st.DrawFn, noise: bool = True) -> str:
    """Session lines in any order (some missing) and up to five m= sections."""
    head = ["o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0"]
    head = draw(st.permutations(head))[: draw(st.integers(0, 4))]
    lines = ["v=0", *head]
    sections = draw(st.lists(media_sections(noise), max_size=5))
    for section in sections:
        lines.extend(section)
    return draw(line_endings).join(lines)


@FUZZ
@given(st.lists(media_sections(noise=False), max_size=5), line_endings)
def test_plausible_offers_parse_with_one_description_per_m_line(
    sections: list[list[str]], ending: str
) -> None:
    text = ending.join(["v=0", *(line for section in sections for line in section)])
    assert len(parse_sdp(text).media) == len(sections)


@FUZZ
@given(sdp_soups())
def test_structured_line_soup_only_raises_sdp_error(text: str) -> None:
    offer = parse_or_sdp_error(text)
    if offer is not None:
        assert [m.index for m in offer.media] == list(range(len(offer.media)))
        for media in offer.media:
            assert media.direction in {"sendrecv", "sendonly", "recvonly", "inactive"}
            assert 0 <= media.port <= 65535
            for crypto in media.crypto:
                if crypto.usable:
                    assert crypto.suite is not None and crypto.key_salt is not None
                    assert len(crypto.key_salt) == crypto.suite.key_salt_len


@st.composite
def mutated_interop_offers(draw: st.DrawFn) -> bytes:
    """A real vendor offer with a few bytes cut, inserted or overwritten."""
    data = bytearray(draw(st.sampled_from([sdp for _, sdp, _ in INTEROP_OFFERS])))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["cut", "insert", "overwrite"]))
        chunk = draw(st.binary(min_size=1, max_size=8))
        if action == "cut":
            del data[at : at + len(chunk)]
        elif action == "insert":
            data[at:at] = chunk
        else:
            data[at : at + len(chunk)] = chunk
    return bytes(data)


@FUZZ
@given(mutated_interop_offers())
def test_mutated_interop_offers_only_raise_sdp_error(data: bytes) -> None:
    parse_or_sdp_error(data)


# --- inputs that once broke something ---------------------------------------------------------

REGRESSION_FILES = sorted(p for p in REGRESSIONS.glob("*") if p.is_file() and p.suffix != ".md")


@pytest.mark.parametrize("path", REGRESSION_FILES, ids=[p.name for p in REGRESSION_FILES])
def test_regression_corpus_only_raises_sdp_error(path: Path) -> None:
    parse_or_sdp_error(path.read_bytes())
