"""The recorder's SDP answer: interop expectations, RFC 3264/4568/7866 rules, and fuzzed offers."""

from __future__ import annotations

import base64
import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

from siprec_server.media.srtp_suites import SUITES, SrtpSuite, find_suite
from siprec_server.siprec.sdp import Codec, SdpError, SessionDescription, parse_sdp
from siprec_server.siprec.sdp_answer import (
    AnswerPreferences,
    Negotiation,
    NoAcceptableMedia,
    negotiate,
)
from tests.unit.test_sdp import (
    FUZZ,
    INTEROP_OFFERS,
    REGRESSION_FILES,
    mutated_interop_offers,
    parse_or_sdp_error,
    sdp_offers,
    sdp_soups,
)

LOCAL = "192.0.2.100"


def ports(index: int) -> int:
    return 30000 + 2 * index


def answer(
    offer: str | bytes | SessionDescription,
    prefs: AnswerPreferences | None = None,
    **kwargs: Any,
) -> Negotiation:
    description = offer if isinstance(offer, SessionDescription) else parse_sdp(offer)
    options: dict[str, Any] = {
        "local_address": LOCAL,
        "port_for": ports,
        "session_id": 42,
        "session_version": 1,
    }
    options.update(kwargs)
    return negotiate(description, prefs or AnswerPreferences(), **options)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- interop cases -------------------------------------------------------------------------


def _codec_matches(codec: Codec | None, want: dict[str, Any] | None) -> bool:
    if want is None or codec is None:
        return codec is None and want is None
    return (
        codec.pt == want["pt"]
        and codec.name == want["name"]
        and codec.rate == want["rate"]
        and codec.channels == want.get("channels", 1)
        and codec.fmtp == want.get("fmtp")
    )


@pytest.mark.parametrize(
    ("name", "sdp", "expect"), INTEROP_OFFERS, ids=[c[0] for c in INTEROP_OFFERS]
)
def test_interop_answer_matches_expectation(name: str, sdp: bytes, expect: dict[str, Any]) -> None:
    negotiation = answer(sdp)
    assert negotiation.answer_sdp.endswith(b"\r\n")
    assert b"\n" not in negotiation.answer_sdp.replace(b"\r\n", b"")
    reply = parse_sdp(negotiation.answer_sdp)
    expected_media = expect["expected_answer"]["media"]
    assert len(reply.media) == len(expected_media)
    streams = {s.index: s for s in negotiation.streams}
    for media, want in zip(reply.media, expected_media, strict=True):
        assert media.index == want["index"]
        assert media.kind == want["type"]
        assert media.proto == want["proto"]
        if want["type"] == "video" and "alternative" in want:
            # documented alternative: the SRS does not record video
            assert media.port == 0
            assert media.formats == (str(want["codec"]["pt"]),)
            assert media.attributes == ()
            assert media.index not in streams
            continue
        assert media.port != 0
        assert media.label == want["label"]
        assert media.direction == want["direction"]
        audio_codecs = [c for c in media.codecs if not c.is_telephone_event]
        events = [c for c in media.codecs if c.is_telephone_event]
        assert len(audio_codecs) == 1
        assert len(events) <= 1
        assert _codec_matches(audio_codecs[0], want["codec"])
        assert _codec_matches(events[0] if events else None, want.get("telephone_event"))
        stream = streams[media.index]
        assert (stream.label, stream.local_port) == (want["label"], media.port)
        assert _codec_matches(stream.codec, want["codec"])
        assert _codec_matches(stream.telephone_event, want.get("telephone_event"))
        assert stream.srtp is None and media.crypto == ()


def test_webex_without_opus_pairs_pcmu_with_the_8k_telephone_event() -> None:
    # the "alternative" of webex_calling_1: never a 48 kHz telephone-event with an 8 kHz codec
    (_, sdp, _) = next(c for c in INTEROP_OFFERS if c[0] == "webex_calling_1")
    negotiation = answer(sdp, AnswerPreferences(codecs=("PCMU", "PCMA", "G722")))
    for stream in negotiation.streams:
        assert stream.codec == Codec(0, "PCMU", 8000)
        assert stream.telephone_event == Codec(101, "telephone-event", 8000, 1, "0-15")


def test_answer_session_part() -> None:
    negotiation = answer(
        "v=0\no=SRC 9 9 IN IP4 198.51.100.1\ns=rec\nc=IN IP4 198.51.100.1\nt=0 0\n"
        "m=audio 4000 RTP/AVP 0\na=sendonly\na=record:on\na=recordpref:on\n",
        session_id=123456789012,
        session_version=7,
    )
    text = negotiation.answer_sdp.decode()
    assert text.startswith(
        "v=0\r\no=- 123456789012 7 IN IP4 192.0.2.100\r\ns=-\r\nc=IN IP4 192.0.2.100\r\nt=0 0\r\n"
    )
    assert "a=record" not in text
    assert "a=recordpref" not in text


# --- directions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "answered"),
    [
        ("sendonly", "recvonly"),
        ("sendrecv", "recvonly"),
        ("inactive", "inactive"),
        ("recvonly", "inactive"),
    ],
)
def test_answer_direction(offered: str, answered: str) -> None:
    negotiation = answer(f"v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0\na={offered}\n")
    (media,) = parse_sdp(negotiation.answer_sdp).media
    assert media.direction == answered
    assert media.port == 30000
    assert negotiation.streams[0].direction == offered


def test_inactive_while_ringing_is_accepted_and_answered_inactive() -> None:
    negotiation = answer(
        "v=0\nc=IN IP4 192.0.2.1\na=inactive\nm=audio 4000 RTP/AVP 8\na=label:1\n"
        "m=audio 4002 RTP/AVP 8\na=label:2\n"
    )
    reply = parse_sdp(negotiation.answer_sdp)
    assert [m.direction for m in reply.media] == ["inactive", "inactive"]
    assert [s.label for s in negotiation.streams] == ["1", "2"]


def test_direction_both_does_not_change_the_answer() -> None:
    negotiation = answer("v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 8\na=direction:both\n")
    (media,) = parse_sdp(negotiation.answer_sdp).media
    assert media.direction == "recvonly"
    assert media.attribute_values("direction") == ()


# --- codec choice --------------------------------------------------------------------------


def test_upper_case_opus_is_chosen_with_the_48k_telephone_event() -> None:
    negotiation = answer(
        "v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 101 111 0 107\n"
        "a=rtpmap:101 telephone-event/8000\na=rtpmap:111 OPUS/48000/2\n"
        "a=fmtp:111 minptime=10;useinbandfec=1\na=rtpmap:107 telephone-event/48000\n"
    )
    stream = negotiation.streams[0]
    assert stream.codec == Codec(111, "OPUS", 48000, 2, "minptime=10;useinbandfec=1")
    assert stream.telephone_event == Codec(107, "telephone-event", 48000)
    text = negotiation.answer_sdp.decode()
    assert "m=audio 30000 RTP/AVP 111 107\r\n" in text
    assert "a=rtpmap:111 OPUS/48000/2\r\n" in text
    assert "a=fmtp:111 minptime=10;useinbandfec=1\r\n" in text
    assert "a=rtpmap:107 telephone-event/48000\r\n" in text
    assert "telephone-event/8000" not in text


def test_opus_at_a_rate_other_than_48000_is_not_opus() -> None:
    negotiation = answer(
        "v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 96 8\na=rtpmap:96 opus/16000\n"
    )
    assert negotiation.streams[0].codec.name == "PCMA"


def test_telephone_event_only_at_the_codec_clock() -> None:
    negotiation = answer(
        "v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0 107\na=rtpmap:107 telephone-event/48000\n"
    )
    assert negotiation.streams[0].telephone_event is None
    assert parse_sdp(negotiation.answer_sdp).media[0].formats == ("0",)


@pytest.mark.parametrize(("pt", "name"), [(9, "G722"), (18, "G729")])
def test_static_payload_type_without_rtpmap_is_answered_with_an_rtpmap(pt: int, name: str) -> None:
    negotiation = answer(f"v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP {pt} 0\n")
    assert negotiation.streams[0].codec == Codec(pt, name, 8000)
    assert f"a=rtpmap:{pt} {name}/8000\r\n" in negotiation.answer_sdp.decode()


def test_g729_fmtp_is_echoed_but_not_pcmu_fmtp() -> None:
    g729 = answer("v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 18\na=fmtp:18 annexb=no\n")
    assert "a=fmtp:18 annexb=no\r\n" in g729.answer_sdp.decode()
    pcmu = answer("v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0\na=fmtp:0 vendor=x\n")
    assert "a=fmtp" not in pcmu.answer_sdp.decode()


def test_prefer_offer_order_or_local_order() -> None:
    offer = "v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 8 9 0\n"
    assert answer(offer).streams[0].codec.name == "PCMA"
    local = AnswerPreferences(codecs=("G722", "PCMU"), prefer="local")
    assert answer(offer, local).streams[0].codec.name == "G722"
    by_offer = AnswerPreferences(codecs=("G722", "PCMU"))
    assert answer(offer, by_offer).streams[0].codec.name == "G722"


def test_codec_names_match_case_insensitively() -> None:
    negotiation = answer(
        "v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 96\na=rtpmap:96 pcma/8000\n",
        AnswerPreferences(codecs=("PCMA",)),
    )
    assert negotiation.streams[0].codec == Codec(96, "pcma", 8000)


def test_only_unsupported_codecs_means_488() -> None:
    with pytest.raises(NoAcceptableMedia, match="no offered codec"):
        answer("v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 3 96\n")


# --- declined m-lines ----------------------------------------------------------------------


def test_port_zero_in_offer_is_declined_and_port_for_not_called() -> None:
    asked: list[int] = []

    def port_for(index: int) -> int:
        asked.append(index)
        return 40000 + index

    negotiation = answer(
        "v=0\nc=IN IP4 192.0.2.1\nm=audio 0 RTP/AVP 0 8\na=label:1\nm=audio 4002 RTP/AVP 0\n"
        "a=label:2\n",
        port_for=port_for,
    )
    assert asked == [1]
    reply = parse_sdp(negotiation.answer_sdp)
    assert (reply.media[0].port, reply.media[0].formats, reply.media[0].attributes) == (
        0,
        ("0", "8"),
        (),
    )
    assert reply.media[1].port == 40001
    assert negotiation.declined == ((0, "port 0 in the offer"),)
    assert [s.index for s in negotiation.streams] == [1]


def test_video_is_declined_unless_recorded() -> None:
    offer = (
        "v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0\na=label:96\n"
        "m=video 4002 RTP/AVPF 96\na=rtpmap:96 H.264/90000\na=fmtp:96 packetization-mode=1\n"
        "a=label:97\na=sendonly\n"
    )
    declined = answer(offer)
    assert b"m=video 0 RTP/AVPF 96\r\n" in declined.answer_sdp
    assert declined.declined == ((1, "video is not recorded"),)

    recorded = answer(offer, AnswerPreferences(record_video=True))
    video = parse_sdp(recorded.answer_sdp).media[1]
    assert (video.port, video.direction, video.label) == (30002, "recvonly", "97")
    assert video.codecs == (Codec(96, "H.264", 90000, 1, "packetization-mode=1"),)
    assert recorded.streams[1].kind == "video"


@pytest.mark.parametrize(
    ("m_line", "reason"),
    [
        ("m=application 4000 UDP/BFCP *", "media type"),
        ("m=image 4000 udptl t38", "media type"),
        ("m=audio 4000 UDP/TLS/RTP/SAVPF 0", "transport"),
        ("m=audio 4000 TCP/RTP/AVP 0", "transport"),
    ],
)
def test_other_media_and_transports_are_declined(m_line: str, reason: str) -> None:
    negotiation = answer(f"v=0\nc=IN IP4 192.0.2.1\n{m_line}\nm=audio 4002 RTP/AVP 0\n")
    assert negotiation.declined[0][0] == 0 and reason in negotiation.declined[0][1]
    declined_line = m_line.split()
    declined_line[1] = "0"
    assert negotiation.answer_sdp.decode().count(" ".join(declined_line) + "\r\n") == 1


def test_nothing_acceptable_raises_no_acceptable_media() -> None:
    with pytest.raises(NoAcceptableMedia) as caught:
        answer("v=0\nc=IN IP4 192.0.2.1\nm=audio 0 RTP/AVP 0\nm=video 4000 RTP/AVP 96\n")
    assert isinstance(caught.value, SdpError)
    assert "m-line 0" in str(caught.value) and "m-line 1" in str(caught.value)
    with pytest.raises(NoAcceptableMedia):
        answer("v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\n")


def test_port_allocation_failure_propagates() -> None:
    class PortsExhausted(Exception):
        pass

    def port_for(index: int) -> int:
        raise PortsExhausted

    with pytest.raises(PortsExhausted):
        answer("v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0\n", port_for=port_for)


# --- transport details ---------------------------------------------------------------------


def test_rtcp_mux_is_echoed_and_means_no_rtcp_port() -> None:
    negotiation = answer("v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0\na=rtcp-mux\n")
    assert "a=rtcp-mux\r\n" in negotiation.answer_sdp.decode()
    stream = negotiation.streams[0]
    assert stream.rtcp_mux and stream.remote_rtcp_port is None


def test_rtcp_port_from_a_rtcp_or_port_plus_one() -> None:
    explicit = answer("v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0\na=rtcp:5111\n")
    assert explicit.streams[0].remote_rtcp_port == 5111
    implicit = answer("v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0\n")
    assert implicit.streams[0].remote_rtcp_port == 4001
    assert b"rtcp-mux" not in implicit.answer_sdp


def test_ipv6_local_and_remote_addresses() -> None:
    negotiation = answer(
        "v=0\nc=IN IP6 2001:db8::1\nm=audio 4000 RTP/AVP 0\n", local_address="2001:db8::100"
    )
    reply = parse_sdp(negotiation.answer_sdp)
    assert reply.origin is not None and reply.origin.addr_type == "IP6"
    assert reply.connection is not None
    assert (reply.connection.addr_type, reply.connection.address) == ("IP6", "2001:db8::100")
    assert negotiation.streams[0].remote_address == "2001:db8::1"


def test_remote_address_from_media_level_c_when_no_session_c() -> None:
    negotiation = answer(
        "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nt=0 0\nm=audio 4000 RTP/AVP 8\n"
        "c=IN IP4 198.51.100.7\nm=audio 4002 RTP/AVP 8\nc=IN IP4 198.51.100.8\n"
    )
    assert [s.remote_address for s in negotiation.streams] == ["198.51.100.7", "198.51.100.8"]
    assert [(s.remote_port, s.local_port) for s in negotiation.streams] == [
        (4000, 30000),
        (4002, 30002),
    ]


def test_no_connection_at_all_gives_no_remote_address() -> None:
    negotiation = answer("v=0\nm=audio 4000 RTP/AVP 8\n")
    assert negotiation.streams[0].remote_address is None


def test_label_is_echoed_exactly() -> None:
    negotiation = answer(
        "v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 8\na=label:Caller Stream é\n"
    )
    assert "a=label:Caller Stream é\r\n".encode() in negotiation.answer_sdp


def test_unusable_local_address_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="local_address"):
        answer("v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 8\n", local_address="a b\r\nx")


def test_reinvite_gets_the_same_ports_and_a_new_version() -> None:
    offer = "v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0\nm=audio 4002 RTP/AVP 0\n"
    first = answer(offer, session_version=1)
    second = answer(offer, session_version=2)
    assert [s.local_port for s in first.streams] == [s.local_port for s in second.streams]
    assert b"o=- 42 2 IN IP4" in second.answer_sdp


# --- SRTP (RFC 4568) -----------------------------------------------------------------------

KEY30 = bytes(range(30))


def srtp_offer(*crypto_lines: str, proto: str = "RTP/SAVP") -> str:
    crypto = "".join(f"a=crypto:{line}\n" for line in crypto_lines)
    return f"v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 {proto} 0\na=label:1\na=sendonly\n{crypto}"


def answer_crypto_lines(negotiation: Negotiation) -> list[str]:
    return [
        line.removeprefix("a=crypto:")
        for line in negotiation.answer_sdp.decode().split("\r\n")
        if line.startswith("a=crypto:")
    ]


def counter_bytes() -> Any:
    counter = itertools.count(1)

    def random_bytes(n: int) -> bytes:
        return bytes([next(counter) % 256]) * n

    return random_bytes


@pytest.mark.parametrize("suite", SUITES, ids=[s.name for s in SUITES])
def test_each_suite_gets_a_fresh_key_of_its_length(suite: SrtpSuite) -> None:
    remote = bytes(range(suite.key_salt_len))
    offer = parse_sdp(srtp_offer(f"5 {suite.name} inline:{b64(remote)}|2^31"))
    first, second = answer(offer), answer(offer)
    (line,) = answer_crypto_lines(first)
    tag, name, key_param = line.split(" ")
    assert (tag, name) == ("5", suite.name)
    local = base64.b64decode(key_param.removeprefix("inline:"))
    assert len(local) == suite.key_salt_len
    srtp = first.streams[0].srtp
    assert srtp is not None
    assert (srtp.suite, srtp.tag, srtp.remote_key_salt, srtp.local_key_salt) == (
        suite,
        5,
        remote,
        local,
    )
    assert local != remote
    assert second.streams[0].srtp is not None
    assert second.streams[0].srtp.local_key_salt != local
    assert parse_sdp(first.answer_sdp).media[0].proto == "RTP/SAVP"


def test_first_usable_crypto_line_is_chosen_in_offer_order() -> None:
    negotiation = answer(
        srtp_offer(
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{b64(bytes(20))}",  # wrong key length
            "2 AES_CM_128_HMAC_SHA1_80 inline:***",  # bad base64
            f"3 F8_128_HMAC_SHA1_80 inline:{b64(KEY30)}",  # unknown suite
            f"4 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY30)} KDR=5",  # unsupported KDR
            f"5 AES_CM_128_HMAC_SHA1_32 inline:{b64(KEY30)}|2^31|1:4",
            f"6 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY30)}",
        ),
        random_bytes=counter_bytes(),
    )
    assert answer_crypto_lines(negotiation) == [
        f"5 AES_CM_128_HMAC_SHA1_32 inline:{b64(bytes([1]) * 30)}"
    ]
    srtp = negotiation.streams[0].srtp
    assert srtp is not None
    assert srtp.remote_key_salt == KEY30 and srtp.remote_mki == (1, 4)
    assert not srtp.unencrypted_srtcp


def test_gcm_lines_we_cannot_receive_are_skipped_for_a_receivable_one() -> None:
    """pylibsrtp has neither MKI nor UNENCRYPTED_SRTCP for GCM: answering such a line would
    accept a stream that could never be decrypted."""
    key28 = bytes(range(28))
    negotiation = answer(
        srtp_offer(
            f"1 AEAD_AES_128_GCM inline:{b64(key28)}|2^31|1:4",
            f"2 AEAD_AES_128_GCM inline:{b64(key28)} UNENCRYPTED_SRTCP",
            f"3 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY30)}|2^31|1:4",
        ),
        random_bytes=counter_bytes(),
    )
    (line,) = answer_crypto_lines(negotiation)
    assert line.startswith("3 AES_CM_128_HMAC_SHA1_80 ")


def test_aes_cm_256_spelling_is_echoed_as_offered() -> None:
    key = bytes(range(46))
    negotiation = answer(srtp_offer(f"1 AES_CM_256_HMAC_SHA1_80 inline:{b64(key)}"))
    (line,) = answer_crypto_lines(negotiation)
    assert line.startswith("1 AES_CM_256_HMAC_SHA1_80 inline:")
    srtp = negotiation.streams[0].srtp
    assert srtp is not None and srtp.suite == find_suite("AES_256_CM_HMAC_SHA1_80")


def test_unencrypted_srtcp_is_echoed() -> None:
    negotiation = answer(
        srtp_offer(f"1 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY30)} UNENCRYPTED_SRTCP"),
    )
    (line,) = answer_crypto_lines(negotiation)
    assert line.endswith(" UNENCRYPTED_SRTCP")
    srtp = negotiation.streams[0].srtp
    assert srtp is not None and srtp.unencrypted_srtcp


def test_suites_outside_preferences_are_skipped() -> None:
    prefs = AnswerPreferences(srtp_suites=("AES_CM_128_HMAC_SHA1_32",))
    negotiation = answer(
        srtp_offer(
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY30)}",
            f"2 AES_CM_128_HMAC_SHA1_32 inline:{b64(KEY30)}",
        ),
        prefs,
    )
    assert [line.split()[0] for line in answer_crypto_lines(negotiation)] == ["2"]


def test_srtp_without_usable_crypto_is_declined() -> None:
    offer = (
        srtp_offer(f"1 AES_CM_128_HMAC_SHA1_80 inline:{b64(bytes(10))}")
        + "m=audio 4002 RTP/SAVP 0\n"
        + f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY30)}\n"
    )
    negotiation = answer(offer)
    assert negotiation.declined == ((0, "no usable a=crypto line"),)
    reply = parse_sdp(negotiation.answer_sdp)
    assert reply.media[0].port == 0 and reply.media[0].proto == "RTP/SAVP"
    assert reply.media[0].attributes == ()
    assert len(reply.media[1].crypto) == 1
    with pytest.raises(NoAcceptableMedia):
        answer(srtp_offer())


def test_savpf_with_rtcp_mux_keeps_its_profile() -> None:
    negotiation = answer(
        srtp_offer(f"1 AEAD_AES_128_GCM inline:{b64(bytes(range(28)))}", proto="RTP/SAVPF")
        + "a=rtcp-mux\n"
    )
    media = parse_sdp(negotiation.answer_sdp).media[0]
    assert media.proto == "RTP/SAVPF" and media.rtcp_mux
    assert media.crypto[0].suite_name == "AEAD_AES_128_GCM" and media.crypto[0].usable


def test_crypto_on_plain_rtp_is_ignored() -> None:
    negotiation = answer(
        srtp_offer(f"1 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY30)}", proto="RTP/AVP")
    )
    assert answer_crypto_lines(negotiation) == []
    assert negotiation.streams[0].srtp is None


def test_keys_are_not_in_repr() -> None:
    negotiation = answer(srtp_offer(f"1 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY30)}"))
    srtp = negotiation.streams[0].srtp
    assert srtp is not None
    assert repr(srtp.local_key_salt) not in repr(negotiation.streams)
    assert repr(KEY30) not in repr(negotiation.streams)


# --- never anything but SdpError, and answers always parse back -----------------------------


def check_negotiation_round_trip(offer: SessionDescription) -> None:
    try:
        negotiation = answer(offer)
    except SdpError:
        return
    reply = parse_sdp(negotiation.answer_sdp)
    assert len(reply.media) == len(offer.media)
    assert len(negotiation.streams) + len(negotiation.declined) == len(offer.media)
    for offered, answered in zip(offer.media, reply.media, strict=True):
        assert answered.kind == offered.kind and answered.proto == offered.proto
        if answered.port:
            assert answered.label == offered.label
            assert answered.direction in ("recvonly", "inactive")
            assert len(answered.crypto) == (1 if offered.is_secure else 0)
        else:
            assert answered.formats == offered.formats


@FUZZ
@given(sdp_soups())
def test_negotiate_on_any_parsed_offer_returns_a_parseable_answer(text: str) -> None:
    offer = parse_or_sdp_error(text)
    if offer is not None:
        check_negotiation_round_trip(offer)


@FUZZ
@given(sdp_offers())
def test_negotiate_on_plausible_offers_returns_a_parseable_answer(text: str) -> None:
    offer = parse_or_sdp_error(text)
    if offer is not None:
        check_negotiation_round_trip(offer)


@FUZZ
@given(mutated_interop_offers())
def test_negotiate_on_mutated_interop_offers(data: bytes) -> None:
    offer = parse_or_sdp_error(data)
    if offer is not None:
        check_negotiation_round_trip(offer)


@pytest.mark.parametrize("path", REGRESSION_FILES, ids=[p.name for p in REGRESSION_FILES])
def test_regression_corpus_negotiates_or_raises_sdp_error(path: Path) -> None:
    offer = parse_or_sdp_error(path.read_bytes())
    if offer is not None:
        check_negotiation_round_trip(offer)
