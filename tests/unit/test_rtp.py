"""RTP header parsing (RFC 3550 5.1) and RTP/RTCP demultiplexing (RFC 5761 4)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siprec_server.media.rtp import RtpFormatError, RtpPacket, is_rtcp, parse_rtp, parse_rtp_header


def rtp_bytes(
    *,
    pt: int = 0,
    seq: int = 1,
    ts: int = 160,
    ssrc: int = 0x11223344,
    marker: bool = False,
    payload: bytes = b"\xff" * 160,
    csrcs: tuple[int, ...] = (),
    extension: tuple[int, bytes] | None = None,
    padding: int = 0,
    version: int = 2,
) -> bytes:
    b0 = (version << 6) | len(csrcs)
    if extension is not None:
        b0 |= 0x10
    if padding:
        b0 |= 0x20
    out = struct.pack("!BBHII", b0, pt | (0x80 if marker else 0), seq, ts, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if extension is not None:
        profile, data = extension
        out += struct.pack("!HH", profile, len(data) // 4) + data
    out += payload
    if padding:
        out += bytes(padding - 1) + bytes([padding])
    return out


def test_fixed_header_fields_are_parsed() -> None:
    packet = parse_rtp(rtp_bytes(pt=8, seq=65535, ts=0xFFFFFFF0, ssrc=7, marker=True))
    assert (packet.payload_type, packet.sequence_number, packet.timestamp, packet.ssrc) == (
        8,
        65535,
        0xFFFFFFF0,
        7,
    )
    assert packet.marker is True
    assert bytes(packet.payload) == b"\xff" * 160
    assert packet.csrcs == ()
    assert packet.extension_profile is None


def test_csrcs_extension_and_padding_are_skipped_to_reach_the_payload() -> None:
    data = rtp_bytes(
        csrcs=(1, 2, 3),
        extension=(0xBEDE, b"\x10\xaa\x00\x00"),
        padding=4,
        payload=b"audio",
    )
    packet = parse_rtp(data)
    assert packet.csrcs == (1, 2, 3)
    assert packet.extension_profile == 0xBEDE
    assert packet.extension == b"\x10\xaa\x00\x00"
    assert bytes(packet.payload) == b"audio"
    marker, pt, seq, ts, ssrc, start, end = parse_rtp_header(data)
    assert data[start:end] == b"audio"


def test_payload_is_a_view_not_a_copy() -> None:
    data = bytearray(rtp_bytes(payload=b"abc"))
    packet = parse_rtp(data)
    data[-1] = ord("z")
    assert bytes(packet.payload) == b"abz"


def test_empty_payload_is_valid() -> None:
    assert bytes(parse_rtp(rtp_bytes(payload=b"")).payload) == b""


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x00\x00",
        rtp_bytes()[:11],
        rtp_bytes(version=1),
        rtp_bytes(version=0),
        rtp_bytes(payload=b"", csrcs=(1, 2))[:16],  # CSRC list cut short
        rtp_bytes(payload=b"", extension=(0xBEDE, b"\x00" * 8))[:18],  # extension cut short
        rtp_bytes(payload=b"", padding=1)[:12],  # padding bit set, no room for the count
    ],
)
def test_malformed_packets_raise_rtp_format_error(data: bytes) -> None:
    with pytest.raises(RtpFormatError):
        parse_rtp(data)


def test_padding_longer_than_the_payload_is_rejected() -> None:
    data = bytearray(rtp_bytes(payload=b"ab", padding=2))
    data[-1] = 40  # claims 40 bytes of padding in a 16-byte packet
    with pytest.raises(RtpFormatError):
        parse_rtp(bytes(data))


def test_zero_padding_count_is_rejected() -> None:
    data = bytearray(rtp_bytes(payload=b"ab", padding=2))
    data[-1] = 0
    with pytest.raises(RtpFormatError):
        parse_rtp(bytes(data))


def test_rtp_format_error_is_a_value_error() -> None:
    assert issubclass(RtpFormatError, ValueError)


@pytest.mark.parametrize("packet_type", [200, 201, 202, 203, 204, 205, 206, 207])
def test_rtcp_packet_types_are_demultiplexed_as_rtcp(packet_type: int) -> None:
    rtcp = bytes([0x80, packet_type]) + struct.pack("!HI", 1, 0x1234)
    assert is_rtcp(rtcp)


@pytest.mark.parametrize("pt,marker", [(0, False), (8, True), (96, False), (96, True), (127, True)])
def test_audio_payload_types_are_not_rtcp(pt: int, marker: bool) -> None:
    assert not is_rtcp(rtp_bytes(pt=pt, marker=marker))


def test_short_datagram_is_not_rtcp() -> None:
    assert not is_rtcp(b"\x80")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_parse_or_raise_only_rtp_format_error(data: bytes) -> None:
    try:
        packet = parse_rtp(data)
    except RtpFormatError:
        return
    assert isinstance(packet, RtpPacket)
    assert len(packet.payload) <= len(data) - 12
