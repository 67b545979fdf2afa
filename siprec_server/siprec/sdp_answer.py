"""The recorder's SDP answer to a SIPREC offer, and the plain data its media pipeline is built from.

Rules (RFC 7866, RFC 3264, RFC 4568; see SIPREC.md and INTERFACES.md):

- one m-line per offered m-line, in the same order, with the same media type and transport;
- an audio m-line we record gets a port from the caller, exactly one codec (the first offered
  one we decode, or our own first choice with prefer="local"), telephone-event only at that
  codec's clock rate, the offered a=label, and a=recvonly (a=inactive when the offer is inactive
  or recvonly, because then nothing will be sent to us);
- an SRTP m-line (RTP/SAVP, RTP/SAVPF) gets exactly one a=crypto: the first offered line we can
  use, with its tag and suite spelling and a fresh key of our own; none usable declines it;
- everything else (port 0 in the offer, video unless asked for, unknown transports, DTLS) is
  declined with port 0 and no attributes;
- a=record / a=recordpref belong to the recorded call's signalling and are never sent.

`negotiate` keeps no state: re-INVITEs call it again with the same `port_for`.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from siprec_server.media.srtp import receivable
from siprec_server.media.srtp_suites import SUITES, SrtpSuite, find_suite
from siprec_server.siprec.sdp import (
    Codec,
    CryptoAttribute,
    MediaDescription,
    SdpError,
    SessionDescription,
)

__all__ = [
    "AnswerPreferences",
    "NegotiatedStream",
    "Negotiation",
    "NoAcceptableMedia",
    "SrtpParams",
    "acceptable_m_lines",
    "decline_all",
    "negotiate",
]

# Transports whose SRTP keys travel in a=crypto, plus plain RTP. DTLS-SRTP (UDP/TLS/RTP/SAVPF)
# needs a handshake we do not implement, so it is declined rather than answered with SDES.
_RTP_PROTOS = frozenset({"RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF"})

# The clock rate our decoders expect for each codec name we know (RFC 3551, RFC 7587: G.722
# is advertised at 8000 although it samples at 16 kHz). Names not listed match any rate.
_EXPECTED_RATES = {"PCMU": 8000, "PCMA": 8000, "G722": 8000, "G729": 8000, "OPUS": 48000}

# Codecs whose fmtp describes what we would receive, so it is echoed (RFC 7587 for opus,
# annexb for G.729). Other audio codecs' fmtp is left out of the answer.
_ECHO_FMTP = frozenset({"OPUS", "G729"})


class NoAcceptableMedia(SdpError):
    """Not a single offered m-line can be recorded; the caller answers 488."""


@dataclass(frozen=True, slots=True)
class AnswerPreferences:
    """What this recorder accepts, from configuration."""

    codecs: tuple[str, ...] = ("PCMU", "PCMA", "G722", "G729", "opus")
    """Audio codecs our decoders handle, in our order of preference."""
    prefer: Literal["offer", "local"] = "offer"
    """"offer": the first offered codec we support; "local": our first supported codec offered."""
    srtp_suites: tuple[str, ...] = tuple(s.name for s in SUITES)
    """SDES suites accepted, any known spelling."""
    record_video: bool = False
    """Accept video m-lines (first offered named codec) instead of declining them."""


@dataclass(frozen=True, slots=True)
class SrtpParams:
    """The SDES keys of one stream."""

    suite: SrtpSuite
    tag: int
    remote_key_salt: bytes = field(repr=False)
    """The offerer's master key || salt: what incoming SRTP/SRTCP is decrypted with."""
    local_key_salt: bytes = field(repr=False)
    """Ours, sent in the answer (we send no media, but RTCP reports would use it)."""
    unencrypted_srtcp: bool
    remote_mki: tuple[int, int] | None
    """(MKI value, MKI length in bytes) carried in the offerer's packets, if any."""


@dataclass(frozen=True, slots=True)
class NegotiatedStream:
    """One accepted m-line: everything the media pipeline needs to receive it."""

    index: int
    """m-line position in offer and answer."""
    label: str | None
    """a=label, linking the stream to the metadata's <stream>."""
    kind: str
    proto: str
    local_port: int
    remote_address: str | None
    """Where the offerer's media comes from (effective c=), None if the offer had no c=."""
    remote_port: int
    remote_rtcp_port: int | None
    """a=rtcp, else RTP port + 1; None with rtcp-mux."""
    rtcp_mux: bool
    direction: str
    """The offered direction (sendonly, sendrecv, recvonly, inactive)."""
    codec: Codec
    telephone_event: Codec | None
    srtp: SrtpParams | None


@dataclass(frozen=True, slots=True)
class Negotiation:
    """The answer and what was accepted and declined."""

    answer_sdp: bytes
    streams: tuple[NegotiatedStream, ...]
    declined: tuple[tuple[int, str], ...]
    """(m-line index, reason) for every m-line answered with port 0."""


@dataclass(frozen=True, slots=True)
class _Choice:
    codec: Codec
    telephone_event: Codec | None
    crypto: CryptoAttribute | None


def negotiate(
    offer: SessionDescription,
    prefs: AnswerPreferences,
    *,
    local_address: str,
    port_for: Callable[[int], int],
    session_id: int,
    session_version: int,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> Negotiation:
    """Build the answer to `offer`.

    `port_for(m_index)` is called once per accepted m-line, in order, and must return the
    local RTP port for it; its exceptions propagate. Raises NoAcceptableMedia when nothing can
    be accepted, ValueError for a `local_address` that cannot go into SDP.
    """
    addr_type = _address_type(local_address)
    lines = [
        "v=0",
        f"o=- {session_id} {session_version} IN {addr_type} {local_address}",
        "s=-",
        f"c=IN {addr_type} {local_address}",
        "t=0 0",
    ]
    streams: list[NegotiatedStream] = []
    declined: list[tuple[int, str]] = []

    for media in offer.media:
        choice = _choose(media, prefs)
        if isinstance(choice, str):
            declined.append((media.index, choice))
            lines.append(f"m={media.kind} 0 {media.proto} {' '.join(media.formats)}")
            continue
        local_port = port_for(media.index)
        srtp = None
        if choice.crypto is not None:
            srtp = _srtp_params(choice.crypto, random_bytes)
        lines.extend(_accepted_lines(media, choice, local_port, srtp))
        streams.append(_stream(media, choice, local_port, srtp))

    if not streams:
        reasons = "; ".join(f"m-line {index}: {reason}" for index, reason in declined)
        raise NoAcceptableMedia(f"no acceptable media ({reasons or 'no m-lines offered'})")
    answer = ("\r\n".join(lines) + "\r\n").encode("utf-8")
    return Negotiation(answer, tuple(streams), tuple(declined))


def decline_all(
    offer: SessionDescription,
    *,
    local_address: str,
    session_id: int,
    session_version: int,
    reason: str,
) -> Negotiation:
    """An answer that declines every offered m-line (port 0, RFC 3264 section 6), keeping
    their order, media types and labels: an established session through which no media
    flows (a call the recording rules say not to record, or one whose caller opted out)."""
    addr_type = _address_type(local_address)
    lines = [
        "v=0",
        f"o=- {session_id} {session_version} IN {addr_type} {local_address}",
        "s=-",
        f"c=IN {addr_type} {local_address}",
        "t=0 0",
    ]
    for media in offer.media:
        lines.append(f"m={media.kind} 0 {media.proto} {' '.join(media.formats)}")
        if media.label is not None:
            lines.append(f"a=label:{media.label}")
        lines.append("a=inactive")
    answer = ("\r\n".join(lines) + "\r\n").encode("utf-8")
    return Negotiation(answer, (), tuple((m.index, reason) for m in offer.media))


def acceptable_m_lines(offer: SessionDescription, prefs: AnswerPreferences) -> list[int]:
    """The m-line indexes `negotiate` would accept (each needs a local port): ports can be
    allocated before negotiating, so that negotiation itself stays pure."""
    return [media.index for media in offer.media if not isinstance(_choose(media, prefs), str)]


def _address_type(local_address: str) -> str:
    if not local_address or any(ch.isspace() for ch in local_address):
        raise ValueError(f"local_address {local_address!r} cannot be put in SDP")
    try:
        return "IP6" if ipaddress.ip_address(local_address).version == 6 else "IP4"
    except ValueError:
        # A host name (RFC 8866 allows an FQDN in c=); IPv6 literals always contain ':'.
        return "IP6" if ":" in local_address else "IP4"


def _choose(media: MediaDescription, prefs: AnswerPreferences) -> _Choice | str:
    """What to accept on this m-line, or why it is declined."""
    if media.port == 0:
        return "port 0 in the offer"
    if media.kind == "video" and not prefs.record_video:
        return "video is not recorded"
    if media.kind not in ("audio", "video"):
        return f"media type {media.kind!r} is not recorded"
    if media.proto.upper() not in _RTP_PROTOS:
        return f"transport {media.proto!r} is not supported"
    if media.kind == "audio":
        codec = _choose_audio_codec(media, prefs)
        if codec is None:
            return "no offered codec is supported"
        telephone_event = next(
            (c for c in media.codecs if c.is_telephone_event and c.rate == codec.rate), None
        )
    else:
        codec = next((c for c in media.codecs if c.name and not c.is_telephone_event), None)
        if codec is None:
            return "no offered video format has a name"
        telephone_event = None
    crypto = None
    if media.is_secure:
        crypto = _choose_crypto(media, prefs)
        if crypto is None:
            return "no usable a=crypto line"
    return _Choice(codec, telephone_event, crypto)


def _supported(codec: Codec, wanted: str) -> bool:
    name = codec.name.upper()
    if name != wanted.upper():
        return False
    expected_rate = _EXPECTED_RATES.get(name)
    return expected_rate is None or codec.rate == expected_rate


def _choose_audio_codec(media: MediaDescription, prefs: AnswerPreferences) -> Codec | None:
    if prefs.prefer == "local":
        for wanted in prefs.codecs:
            for codec in media.codecs:
                if _supported(codec, wanted):
                    return codec
        return None
    for codec in media.codecs:
        if any(_supported(codec, wanted) for wanted in prefs.codecs):
            return codec
    return None


def _choose_crypto(media: MediaDescription, prefs: AnswerPreferences) -> CryptoAttribute | None:
    allowed = {suite for suite in map(find_suite, prefs.srtp_suites) if suite is not None}
    for crypto in media.crypto:
        if (
            crypto.usable
            and crypto.suite in allowed
            and receivable(crypto.suite, mki=crypto.mki is not None,
                           unencrypted_srtcp=crypto.unencrypted_srtcp)
        ):
            return crypto
    return None


def _srtp_params(crypto: CryptoAttribute, random_bytes: Callable[[int], bytes]) -> SrtpParams:
    # usable guarantees both; narrowed here for the type checker.
    assert crypto.suite is not None and crypto.key_salt is not None
    local_key_salt = random_bytes(crypto.suite.key_salt_len)
    if len(local_key_salt) != crypto.suite.key_salt_len:
        raise ValueError("random_bytes returned a key of the wrong length")
    return SrtpParams(
        suite=crypto.suite,
        tag=crypto.tag,
        remote_key_salt=crypto.key_salt,
        local_key_salt=local_key_salt,
        unencrypted_srtcp=crypto.unencrypted_srtcp,
        remote_mki=crypto.mki,
    )


def _answer_direction(offered: str) -> str:
    # RFC 3264 6.1: we only receive, so sendonly/sendrecv become recvonly; an offerer that
    # will not send (inactive, recvonly) leaves nothing to receive.
    return "recvonly" if offered in ("sendonly", "sendrecv") else "inactive"


def _accepted_lines(
    media: MediaDescription, choice: _Choice, local_port: int, srtp: SrtpParams | None
) -> list[str]:
    codec, telephone_event = choice.codec, choice.telephone_event
    formats = [str(codec.pt)]
    if telephone_event is not None:
        formats.append(str(telephone_event.pt))
    lines = [f"m={media.kind} {local_port} {media.proto} {' '.join(formats)}"]
    lines.append(f"a=rtpmap:{codec.pt} {codec.rtpmap}")
    if codec.fmtp is not None and (media.kind == "video" or codec.name.upper() in _ECHO_FMTP):
        lines.append(f"a=fmtp:{codec.pt} {codec.fmtp}")
    if telephone_event is not None:
        lines.append(f"a=rtpmap:{telephone_event.pt} {telephone_event.rtpmap}")
        if telephone_event.fmtp is not None:
            lines.append(f"a=fmtp:{telephone_event.pt} {telephone_event.fmtp}")
    if media.label is not None:
        lines.append(f"a=label:{media.label}")
    if srtp is not None and choice.crypto is not None:
        key = base64.b64encode(srtp.local_key_salt).decode("ascii")
        crypto_line = f"a=crypto:{srtp.tag} {choice.crypto.suite_name} inline:{key}"
        if srtp.unencrypted_srtcp:
            crypto_line += " UNENCRYPTED_SRTCP"
        lines.append(crypto_line)
    if media.rtcp_mux:
        lines.append("a=rtcp-mux")
    lines.append(f"a={_answer_direction(media.direction)}")
    return lines


def _stream(
    media: MediaDescription, choice: _Choice, local_port: int, srtp: SrtpParams | None
) -> NegotiatedStream:
    if media.rtcp_mux:
        rtcp_port = None
    elif media.rtcp_port is not None:
        rtcp_port = media.rtcp_port
    else:
        rtcp_port = media.port + 1 if media.port < 65535 else None
    return NegotiatedStream(
        index=media.index,
        label=media.label,
        kind=media.kind,
        proto=media.proto,
        local_port=local_port,
        remote_address=media.connection.address if media.connection else None,
        remote_port=media.port,
        remote_rtcp_port=rtcp_port,
        rtcp_mux=media.rtcp_mux,
        direction=media.direction,
        codec=choice.codec,
        telephone_event=choice.telephone_event,
        srtp=srtp,
    )
