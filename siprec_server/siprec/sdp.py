"""Tolerant SDP (RFC 8866 / RFC 4566) parser for the offers SIPREC clients send us.

The recorder only ever *receives* offers, from SBCs and PBXs that each speak their own dialect
(see SIPREC.md): no session-level c=, lines out of order, upper-case codec names, static payload
types without a=rtpmap, `a=direction:both`, ICE attributes copied from the recorded call. So the
parser is lenient about everything that does not change what we must do with the media, keeps
what it does not model as raw data, and is strict only where guessing would be unsafe: an m-line
whose port cannot be read, or input beyond the size limits.

What makes input an SDP body at all: at least one v=, o= or m= line. A description with no m=
line parses (RFC 8866 allows it); the answer builder then finds nothing to accept.

Text is UTF-8; bytes that are not valid UTF-8 are read as ISO-8859-1 so that no byte is lost.
The only exception this module raises is `SdpError`.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from siprec_server.media.srtp_suites import SrtpSuite, find_suite

__all__ = [
    "MAX_FORMATS_PER_MEDIA",
    "MAX_LINES",
    "MAX_MEDIA",
    "MAX_SDP_BYTES",
    "STATIC_PAYLOAD_TYPES",
    "Codec",
    "Connection",
    "CryptoAttribute",
    "MediaDescription",
    "Origin",
    "SdpError",
    "SessionDescription",
    "parse_sdp",
]

MAX_SDP_BYTES = 64 * 1024
MAX_MEDIA = 64
MAX_FORMATS_PER_MEDIA = 128
MAX_LINES = 1000

DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})

# RFC 3551 tables 4 and 5: what a static payload type means when the offer has no a=rtpmap.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
    25: ("CelB", 90000, 1),
    26: ("JPEG", 90000, 1),
    28: ("nv", 90000, 1),
    31: ("H261", 90000, 1),
    32: ("MPV", 90000, 1),
    33: ("MP2T", 90000, 1),
    34: ("H263", 90000, 1),
}

# RFC 4568 section 6.3: the session parameters we understand. FEC and the window-size hint do
# not change how packets are decrypted, so a line carrying them stays usable.
_IGNORABLE_SESSION_PARAMS = frozenset({"FEC_ORDER", "FEC_KEY", "WSH", "UNENCRYPTED_SRTCP"})
# Our SRTP receivers always decrypt and authenticate SRTP; a line that switches either off
# cannot be honoured, so it is treated as unusable rather than silently mis-decrypted.
_UNSUPPORTED_FLAGS = frozenset({"UNENCRYPTED_SRTP", "UNAUTHENTICATED_SRTP"})

_LINE_BREAK = re.compile(r"\r\n|\n|\r")
_SDP_LINE = re.compile(r"([A-Za-z])[ \t]*=(.*)", re.DOTALL)
# ASCII digits only: `\d` and str.isdigit() also accept other scripts' digits.
_UINT = re.compile(r"[0-9]{1,10}")
_PORT = re.compile(r"([0-9]{1,5})(?:/([0-9]{1,5}))?")
_PTIME = re.compile(r"([0-9]{1,6})(?:\.[0-9]{0,6})?")
_LIFETIME_POWER = re.compile(r"2\^([0-9]{1,2})")
_LIFETIME_DECIMAL = re.compile(r"[0-9]{1,20}")
_BASE64_BODY = re.compile(r"[A-Za-z0-9+/]+")
_MKI = re.compile(r"([0-9]{1,40}):([0-9]{1,3})")
_KDR = re.compile(r"KDR=([0-9]{1,3})", re.IGNORECASE)


class SdpError(ValueError):
    """The body is not an SDP description we can work with (the message says why)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """The o= line: who made the description and which version of it this is."""

    username: str
    session_id: str
    """Kept as text: senders use numbers beyond 64 bits and, rarely, non-numeric ids."""
    session_version: str
    net_type: str
    addr_type: str
    address: str


@dataclass(frozen=True, slots=True)
class Connection:
    """A c= line: where media is sent from/to. Multicast TTL/count suffixes are dropped."""

    net_type: str
    addr_type: str
    """"IP4" or "IP6" (upper-cased); other values are kept as sent."""
    address: str


@dataclass(frozen=True, slots=True)
class Codec:
    """One RTP payload type as offered: a=rtpmap (or the RFC 3551 static table) plus a=fmtp."""

    pt: int
    name: str
    """Encoding name as offered ("OPUS" stays "OPUS"); "" for a dynamic type with no rtpmap."""
    rate: int
    """Clock rate in Hz; 0 when unknown."""
    channels: int = 1
    fmtp: str | None = None

    @property
    def rtpmap(self) -> str:
        """The a=rtpmap value after the payload type, e.g. "opus/48000/2"."""
        if self.channels != 1:
            return f"{self.name}/{self.rate}/{self.channels}"
        return f"{self.name}/{self.rate}"

    @property
    def is_telephone_event(self) -> bool:
        return self.name.lower() == "telephone-event"


@dataclass(frozen=True, slots=True)
class CryptoAttribute:
    """One a=crypto line (RFC 4568 SDES), parsed far enough to decide whether we can use it."""

    tag: int
    suite_name: str
    """The suite exactly as offered; the answer echoes this spelling."""
    suite: SrtpSuite | None
    """The known suite this name means, or None when we do not support it."""
    key_salt: bytes | None = field(repr=False)
    """Master key || salt from the first inline: parameter; None when missing, not base64,
    of the wrong length for the suite, or when its lifetime/MKI part cannot be read.
    Kept out of repr so that logging the offer does not log the key."""
    lifetime: int | None
    mki: tuple[int, int] | None
    """(MKI value, MKI length in bytes) when the key carries an MKI."""
    session_params: tuple[str, ...]

    @property
    def unencrypted_srtcp(self) -> bool:
        return any(p.upper() == "UNENCRYPTED_SRTCP" for p in self.session_params)

    @property
    def usable(self) -> bool:
        """True when our SRTP receiver can decrypt what the offerer will send under this line."""
        if self.suite is None or self.key_salt is None:
            return False
        if len(self.key_salt) != self.suite.key_salt_len:
            return False
        return all(_session_param_supported(p) for p in self.session_params)


def _session_param_supported(param: str) -> bool:
    upper = param.upper()
    kdr = _KDR.fullmatch(param)
    if kdr is not None:
        # Only "derive once" is implemented by our SRTP library.
        return int(kdr.group(1)) == 0
    name = upper.split("=", 1)[0]
    if name in _IGNORABLE_SESSION_PARAMS:
        return True
    if name in _UNSUPPORTED_FLAGS or name == "KDR":
        return False
    # RFC 4568 6.3.7: an unknown parameter may be ignored only when it is prefixed with "-".
    return param.startswith("-")


@dataclass(frozen=True, slots=True)
class MediaDescription:
    """One m= section of an offer."""

    index: int
    """Position among the m-lines, from 0; the answer keeps the same order."""
    kind: str
    """Media type, lower-cased: "audio", "video", "application", ..."""
    port: int
    port_count: int
    proto: str
    """Transport as offered: "RTP/AVP", "RTP/SAVP", "RTP/SAVPF", "UDP/TLS/RTP/SAVPF", ..."""
    formats: tuple[str, ...]
    codecs: tuple[Codec, ...]
    """One Codec per numeric format (0-127), in format order, without duplicates."""
    connection: Connection | None
    """Effective address: the media-level c= if present, else the session-level one."""
    direction: str
    """sendrecv / sendonly / recvonly / inactive; media level overrides session level."""
    label: str | None
    """a=label (RFC 4574), any string; None when absent."""
    crypto: tuple[CryptoAttribute, ...]
    """Readable a=crypto lines in offer order (lines without a numeric tag and a suite are
    left out; they stay in `attributes`)."""
    rtcp_port: int | None
    rtcp_mux: bool
    ptime: int | None
    attributes: tuple[tuple[str, str | None], ...]
    """Every media-level a= line as (name, value); value None for a flag like a=sendonly."""
    other_lines: tuple[str, ...] = ()
    """Non-a= lines of this section we do not model (b=, i=, k=, unreadable c=, garbage)."""

    @property
    def is_secure(self) -> bool:
        """True for the SRTP profiles (RTP/SAVP, RTP/SAVPF, UDP/TLS/RTP/SAVPF...)."""
        return "SAVP" in self.proto.upper()

    def codec(self, pt: int) -> Codec | None:
        """The offered codec with this payload type, if any."""
        for codec in self.codecs:
            if codec.pt == pt:
                return codec
        return None

    def attribute_values(self, name: str) -> tuple[str | None, ...]:
        """Values of every media-level attribute with this name (case-insensitive)."""
        wanted = name.lower()
        return tuple(value for key, value in self.attributes if key.lower() == wanted)


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A parsed SDP description."""

    origin: Origin | None
    session_name: str | None
    connection: Connection | None
    """Session-level c=, if any (many SBCs only put c= in each m= section)."""
    direction: str
    """Session-level direction attribute; "sendrecv" when absent."""
    media: tuple[MediaDescription, ...]
    attributes: tuple[tuple[str, str | None], ...]
    """Every session-level a= line as (name, value)."""
    other_lines: tuple[str, ...] = ()
    """Session-level lines we do not model (t=, b=, z=, k=, garbage), raw."""


class _Section:
    """Lines collected for the session part or one m= section while scanning."""

    __slots__ = ("attributes", "connection", "media_line", "other_lines")

    def __init__(self, media_line: str | None) -> None:
        self.media_line = media_line
        self.connection: Connection | None = None
        self.attributes: list[tuple[str, str | None]] = []
        self.other_lines: list[str] = []


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse an SDP description; raise SdpError if it is not one or is beyond our limits."""
    text = _decode(data)
    session = _Section(None)
    sections: list[_Section] = []
    origin: Origin | None = None
    session_name: str | None = None
    looks_like_sdp = False
    line_count = 0

    for raw_line in _LINE_BREAK.split(text):
        line = raw_line.strip(" \t")
        if not line:
            continue
        line_count += 1
        if line_count > MAX_LINES:
            raise SdpError(f"SDP has more than {MAX_LINES} lines")
        if "\x00" in line:
            raise SdpError(f"SDP line {line_count} contains a NUL character")
        current = sections[-1] if sections else session
        match = _SDP_LINE.fullmatch(line)
        if match is None:
            current.other_lines.append(line)
            continue
        letter = match.group(1).lower()
        value = match.group(2).strip(" \t")
        if letter == "m":
            looks_like_sdp = True
            if len(sections) >= MAX_MEDIA:
                raise SdpError(f"SDP has more than {MAX_MEDIA} m-lines")
            sections.append(_Section(value))
        elif letter == "a":
            name, colon, attr_value = value.partition(":")
            current.attributes.append(
                (name.strip(" \t"), attr_value.strip(" \t") if colon else None)
            )
        elif letter == "c":
            connection = _parse_connection(value)
            if connection is None:
                current.other_lines.append(line)
            elif current.connection is None:
                current.connection = connection
        # v=, o= and s= only mean something at session level; some senders put them late.
        elif letter == "v":
            looks_like_sdp = True
        elif letter == "o":
            looks_like_sdp = True
            parsed_origin = _parse_origin(value)
            if origin is None and parsed_origin is not None:
                origin = parsed_origin
            else:
                session.other_lines.append(line)
        elif letter == "s" and session_name is None:
            session_name = value
        else:
            current.other_lines.append(line)

    if not looks_like_sdp:
        raise SdpError("not an SDP description: no v=, o= or m= line")

    session_direction = _direction(session.attributes) or "sendrecv"
    media = tuple(
        _build_media(index, section, session.connection, session_direction)
        for index, section in enumerate(sections)
    )
    return SessionDescription(
        origin=origin,
        session_name=session_name,
        connection=session.connection,
        direction=session_direction,
        media=media,
        attributes=tuple(session.attributes),
        other_lines=tuple(session.other_lines),
    )


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        if len(data) > MAX_SDP_BYTES:
            raise SdpError(f"SDP is larger than {MAX_SDP_BYTES} bytes")
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SdpError("SDP text contains characters that cannot be encoded") from exc
    elif isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
    else:
        raise SdpError(f"SDP must be bytes or str, not {type(data).__name__}")
    if len(raw) > MAX_SDP_BYTES:
        raise SdpError(f"SDP is larger than {MAX_SDP_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.removeprefix("\ufeff")


def _parse_origin(value: str) -> Origin | None:
    tokens = value.split()
    if len(tokens) < 6:
        return None
    # A username with spaces is invalid but seen; the last five fields are unambiguous.
    username = " ".join(tokens[:-5])
    session_id, version, net_type, addr_type, address = tokens[-5:]
    return Origin(username, session_id, version, net_type, addr_type.upper(), address)


def _parse_connection(value: str) -> Connection | None:
    tokens = value.split()
    if len(tokens) < 3:
        return None
    address = tokens[2].split("/", 1)[0]
    if not address:
        return None
    return Connection(tokens[0], tokens[1].upper(), address)


def _direction(attributes: list[tuple[str, str | None]]) -> str | None:
    # a=direction:both (COMEDIA) has a value, so it never matches here.
    found: str | None = None
    for name, value in attributes:
        if value is None and name.lower() in DIRECTIONS:
            found = name.lower()
    return found


def _build_media(
    index: int,
    section: _Section,
    session_connection: Connection | None,
    session_direction: str,
) -> MediaDescription:
    media_line = section.media_line or ""
    tokens = media_line.split()
    if len(tokens) < 3:
        raise SdpError(f"m-line {index} needs media, port and transport: {media_line!r}")
    kind, port_text, proto = tokens[0].lower(), tokens[1], tokens[2]
    formats = tuple(tokens[3:])
    port_match = _PORT.fullmatch(port_text)
    if port_match is None:
        raise SdpError(f"m-line {index}: port {port_text!r} is not a number")
    port = int(port_match.group(1))
    port_count = int(port_match.group(2)) if port_match.group(2) else 1
    if port > 65535:
        raise SdpError(f"m-line {index}: port {port} is out of range")
    if port_count < 1:
        raise SdpError(f"m-line {index}: port count must be at least 1")
    if not formats:
        raise SdpError(f"m-line {index} offers no formats")
    if len(formats) > MAX_FORMATS_PER_MEDIA:
        raise SdpError(f"m-line {index} has more than {MAX_FORMATS_PER_MEDIA} formats")

    rtpmaps: dict[int, tuple[str, int, int]] = {}
    fmtps: dict[int, str] = {}
    label: str | None = None
    crypto: list[CryptoAttribute] = []
    rtcp_port: int | None = None
    rtcp_mux = False
    ptime: int | None = None
    for name, value in section.attributes:
        key = name.lower()
        if key == "rtpmap" and value is not None:
            parsed = _parse_rtpmap(value)
            if parsed is not None and parsed[0] not in rtpmaps:
                rtpmaps[parsed[0]] = parsed[1]
        elif key == "fmtp" and value is not None:
            pt_and_params = value.split(None, 1)
            pt = _payload_type(pt_and_params[0]) if pt_and_params else None
            if pt is not None and pt not in fmtps:
                fmtps[pt] = pt_and_params[1].strip() if len(pt_and_params) > 1 else ""
        elif key == "label" and label is None:
            label = value if value is not None else ""
        elif key == "crypto" and value is not None:
            attribute = _parse_crypto(value)
            if attribute is not None:
                crypto.append(attribute)
        elif key == "rtcp" and value is not None and rtcp_port is None:
            rtcp_port = _port_value(value.split()[0]) if value.split() else None
        elif key == "rtcp-mux":
            rtcp_mux = True
        elif key == "ptime" and value is not None and ptime is None:
            ptime_match = _PTIME.fullmatch(value)
            if ptime_match is not None and int(ptime_match.group(1)) > 0:
                ptime = int(ptime_match.group(1))

    codecs: list[Codec] = []
    seen: set[int] = set()
    for fmt in formats:
        pt = _payload_type(fmt)
        if pt is None or pt in seen:
            continue
        seen.add(pt)
        name, rate, channels = rtpmaps.get(pt) or STATIC_PAYLOAD_TYPES.get(pt) or ("", 0, 1)
        codecs.append(Codec(pt, name, rate, channels, fmtps.get(pt)))

    return MediaDescription(
        index=index,
        kind=kind,
        port=port,
        port_count=port_count,
        proto=proto,
        formats=formats,
        codecs=tuple(codecs),
        connection=section.connection or session_connection,
        direction=_direction(section.attributes) or session_direction,
        label=label,
        crypto=tuple(crypto),
        rtcp_port=rtcp_port,
        rtcp_mux=rtcp_mux,
        ptime=ptime,
        attributes=tuple(section.attributes),
        other_lines=tuple(section.other_lines),
    )


def _payload_type(text: str) -> int | None:
    if _UINT.fullmatch(text) is None:
        return None
    pt = int(text)
    return pt if pt <= 127 else None


def _port_value(text: str) -> int | None:
    if _UINT.fullmatch(text) is None:
        return None
    port = int(text)
    return port if 0 < port <= 65535 else None


def _parse_rtpmap(value: str) -> tuple[int, tuple[str, int, int]] | None:
    parts = value.split(None, 1)
    if len(parts) != 2:
        return None
    pt = _payload_type(parts[0])
    if pt is None:
        return None
    pieces = [piece.strip(" \t") for piece in parts[1].split("/")]
    name = pieces[0]
    if not name:
        return None
    rate = 0
    if len(pieces) > 1 and _UINT.fullmatch(pieces[1]):
        rate = int(pieces[1])
    elif pt in STATIC_PAYLOAD_TYPES:
        rate = STATIC_PAYLOAD_TYPES[pt][1]
    channels = 1
    if len(pieces) > 2 and _UINT.fullmatch(pieces[2]) and int(pieces[2]) > 0:
        channels = int(pieces[2])
    return pt, (name, rate, channels)


def _parse_crypto(value: str) -> CryptoAttribute | None:
    """a=crypto:<tag> <suite> <key-params> [<session-param> ...] (RFC 4568 section 9.1)."""
    tokens = value.split()
    if len(tokens) < 2 or _UINT.fullmatch(tokens[0]) is None or len(tokens[0]) > 9:
        return None
    suite_name = tokens[1]
    suite = find_suite(suite_name)
    key_salt: bytes | None = None
    lifetime: int | None = None
    mki: tuple[int, int] | None = None
    if len(tokens) >= 3:
        parsed = _parse_key_params(tokens[2])
        if parsed is not None:
            key_salt, lifetime, mki = parsed
            if suite is not None and len(key_salt) != suite.key_salt_len:
                key_salt = None
    return CryptoAttribute(
        tag=int(tokens[0]),
        suite_name=suite_name,
        suite=suite,
        key_salt=key_salt,
        lifetime=lifetime,
        mki=mki,
        session_params=tuple(tokens[3:]),
    )


def _parse_key_params(text: str) -> tuple[bytes, int | None, tuple[int, int] | None] | None:
    """The first `inline:<key||salt>[|lifetime][|MKI:length]`; None when unreadable."""
    first = text.split(";", 1)[0]
    method, colon, key_info = first.partition(":")
    if not colon or method.lower() != "inline":
        return None
    fields = key_info.split("|")
    if len(fields) > 3:
        return None
    key_salt = _decode_base64(fields[0])
    if key_salt is None:
        return None
    lifetime: int | None = None
    mki: tuple[int, int] | None = None
    for extra in fields[1:]:
        mki_match = _MKI.fullmatch(extra)
        if mki_match is not None:
            if mki is not None:
                return None
            mki_value, mki_length = int(mki_match.group(1)), int(mki_match.group(2))
            if not 1 <= mki_length <= 128 or mki_value >= 256**mki_length:
                return None
            mki = (mki_value, mki_length)
            continue
        if lifetime is not None or mki is not None:
            # The lifetime, when present, comes before the MKI.
            return None
        power = _LIFETIME_POWER.fullmatch(extra)
        if power is not None and int(power.group(1)) <= 64:
            lifetime = 2 ** int(power.group(1))
        elif _LIFETIME_DECIMAL.fullmatch(extra) is not None:
            lifetime = int(extra)
        else:
            return None
    return key_salt, lifetime, mki


def _decode_base64(text: str) -> bytes | None:
    body = text.rstrip("=")
    if not body or _BASE64_BODY.fullmatch(body) is None or len(body) % 4 == 1:
        return None
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
