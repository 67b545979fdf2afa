"""RTP packet parsing (RFC 3550) and RTP/RTCP demultiplexing on one port (RFC 5761).

The receive path sees one datagram per packet, already SRTP-decrypted. `parse_rtp` turns it into
an `RtpPacket` value; `parse_rtp_header` is the allocation-light form the jitter buffer uses on
its per-packet path (a plain tuple instead of an object). Both reject malformed input with
`RtpFormatError` and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from siprec_server.media.errors import MediaError

__all__ = [
    "RtpFormatError",
    "RtpPacket",
    "is_rtcp",
    "parse_rtp",
    "parse_rtp_header",
]

_FIXED_HEADER = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")


class RtpFormatError(MediaError, ValueError):
    """The datagram is not a well-formed RTP version 2 packet."""


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One received RTP packet."""

    payload_type: int
    """7-bit payload type (RFC 3550 5.1)."""
    sequence_number: int
    """16-bit sequence number, not extended."""
    timestamp: int
    """32-bit RTP timestamp in the payload type's clock units, not extended."""
    ssrc: int
    """Synchronisation source of the sender."""
    marker: bool
    """Marker bit; for audio it flags the first packet of a talkspurt (RFC 3551 4.1)."""
    payload: bytes | memoryview
    """The payload with padding removed (a view into the datagram when given a buffer)."""
    csrcs: tuple[int, ...] = ()
    """Contributing sources (mixers)."""
    extension_profile: int | None = None
    """The 16-bit profile field of the header extension, None without an extension."""
    extension: bytes = b""
    """Header extension data (RFC 3550 5.3.1, RFC 8285 elements are not split)."""


def is_rtcp(packet: bytes | bytearray | memoryview) -> bool:
    """Whether a datagram on a muxed RTP/RTCP port is RTCP (RFC 5761 4: second byte 192-223)."""
    if len(packet) < 2:
        return False
    return (packet[0] & 0xC0) == 0x80 and 192 <= packet[1] <= 223


def parse_rtp_header(
    data: bytes | bytearray | memoryview,
) -> tuple[bool, int, int, int, int, int, int]:
    """Parse the header of an RTP packet without building an object.

    Returns (marker, payload_type, sequence_number, timestamp, ssrc, payload_start,
    payload_end): the payload is data[payload_start:payload_end] (padding removed).
    Raises RtpFormatError for anything that is not RTP version 2 with consistent lengths.
    """
    length = len(data)
    if length < 12:
        raise RtpFormatError(f"RTP packet too short: {length} bytes")
    b0, b1, seq, ts, ssrc = _FIXED_HEADER.unpack_from(data)
    if b0 & 0xC0 != 0x80:
        raise RtpFormatError(f"RTP version {b0 >> 6}, expected 2")
    start = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if length < start + 4:
            raise RtpFormatError("RTP header extension truncated")
        start += 4 + 4 * _EXTENSION_HEADER.unpack_from(data, start)[1]
    end = length
    if b0 & 0x20:
        pad = data[length - 1]
        if pad == 0:
            raise RtpFormatError("RTP padding count is zero")
        end -= pad
    if start > end:
        raise RtpFormatError("RTP header and padding longer than the packet")
    return bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc, start, end


def parse_rtp(packet: bytes | bytearray | memoryview) -> RtpPacket:
    """Parse one RTP datagram; the payload is a memoryview into `packet` (no copy)."""
    marker, pt, seq, ts, ssrc, start, end = parse_rtp_header(packet)
    view = memoryview(packet)
    cc = view[0] & 0x0F
    csrcs = struct.unpack_from(f"!{cc}I", view, 12) if cc else ()
    profile: int | None = None
    extension = b""
    if view[0] & 0x10:
        ext_at = 12 + 4 * cc
        profile, words = _EXTENSION_HEADER.unpack_from(view, ext_at)
        extension = bytes(view[ext_at + 4 : ext_at + 4 + 4 * words])
    return RtpPacket(
        payload_type=pt,
        sequence_number=seq,
        timestamp=ts,
        ssrc=ssrc,
        marker=marker,
        payload=view[start:end],
        csrcs=tuple(csrcs),
        extension_profile=profile,
        extension=extension,
    )
