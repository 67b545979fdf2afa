"""The bodies of the SIPREC INVITE and the reading of the answer: the SDP offer (one sendonly
m-line per stream, a=label, a=crypto with our own SDES key), the RFC 7865 metadata, the
multipart/mixed body (RFC 7866 9.1), and the recorder's SDP answer checked against the offer."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final
from xml.sax.saxutils import escape, quoteattr

from siprec_server.siprec.sdp import SdpError, parse_sdp
from siprec_server.tools.siprec_client.errors import SiprecClientError
from siprec_server.tools.siprec_client.payloads import CodecSpec
from siprec_server.tools.siprec_client.plan import Participant, StreamPlan

TELEPHONE_EVENT_PT: Final = 101


@dataclass(frozen=True, slots=True)
class OfferedMedia:
    """One m-line of our offer."""

    label: str
    port: int
    codec: CodecSpec
    ptime_ms: int = 20
    telephone_event_pt: int | None = TELEPHONE_EVENT_PT
    srtp_suite: str | None = None
    key_salt: bytes | None = field(default=None, repr=False)
    crypto_tag: int = 1


def build_offer_sdp(
    media: Sequence[OfferedMedia],
    *,
    address: str,
    session_id: int,
    session_version: int,
    direction: str = "sendonly",
) -> bytes:
    """An SDP offer: one m-line per stream, codec + telephone-event at its clock, a=label,
    and a=crypto with our own key on RTP/SAVP lines (RFC 4568)."""
    family = "IP6" if ":" in address else "IP4"
    lines = [
        "v=0",
        f"o=siprec-client {session_id} {session_version} IN {family} {address}",
        "s=SIPREC",
        f"c=IN {family} {address}",
        "t=0 0",
    ]
    for m in media:
        proto = "RTP/SAVP" if m.srtp_suite else "RTP/AVP"
        formats = [str(m.codec.payload_type)]
        if m.telephone_event_pt is not None:
            formats.append(str(m.telephone_event_pt))
        lines.append(f"m=audio {m.port} {proto} {' '.join(formats)}")
        lines.append(f"a=rtpmap:{m.codec.payload_type} {m.codec.rtpmap}")
        if m.codec.fmtp:
            lines.append(f"a=fmtp:{m.codec.payload_type} {m.codec.fmtp}")
        if m.telephone_event_pt is not None:
            lines.append(f"a=rtpmap:{m.telephone_event_pt} telephone-event/{m.codec.clock_rate}")
            lines.append(f"a=fmtp:{m.telephone_event_pt} 0-15")
        lines.append(f"a=ptime:{m.ptime_ms}")
        lines.append(f"a={direction}")
        lines.append(f"a=label:{m.label}")
        if m.srtp_suite:
            if m.key_salt is None:
                raise SiprecClientError("an SRTP m-line needs a key")
            key = base64.b64encode(m.key_salt).decode("ascii")
            lines.append(f"a=crypto:{m.crypto_tag} {m.srtp_suite} inline:{key}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def xml_id(value: uuid.UUID) -> str:
    # RFC 7865 ids are xs:base64Binary; a UUID's 16 bytes is what SBCs send.
    return base64.b64encode(value.bytes).decode("ascii")


def build_metadata(
    streams: Sequence[StreamPlan],
    *,
    session_id: str,
    stream_ids: Sequence[str],
    participant_ids: Mapping[Participant, str],
    now: datetime,
    sip_session_id: str | None = None,
) -> bytes:
    """RFC 7865 complete metadata: the session, one participant per party with a nameID,
    the streams by label, and who sends (and receives) which stream."""
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    sid = quoteattr(session_id)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<recording xmlns="urn:ietf:params:xml:ns:recording:1">',
        "  <datamode>complete</datamode>",
        f"  <session session_id={sid}>",
    ]
    if sip_session_id:
        out.append(f"    <sipSessionID>{escape(sip_session_id)}</sipSessionID>")
    out += [f"    <start-time>{stamp}</start-time>", "  </session>"]
    for party, pid in participant_ids.items():
        out.append(f"  <participant participant_id={quoteattr(pid)}>")
        out.append(f"    <nameID aor={quoteattr(party.aor)}>")
        if party.name:
            out.append(f'      <name xml:lang="en">{escape(party.name)}</name>')
        out += ["    </nameID>", "  </participant>"]
    for stream, stream_id in zip(streams, stream_ids, strict=True):
        out += [
            f"  <stream stream_id={quoteattr(stream_id)} session_id={sid}>",
            f"    <label>{escape(stream.label)}</label>",
            "  </stream>",
        ]
    out += [
        f"  <sessionrecordingassoc session_id={sid}>",
        f"    <associate-time>{stamp}</associate-time>",
        "  </sessionrecordingassoc>",
    ]
    for pid in participant_ids.values():
        out += [
            f"  <participantsessionassoc participant_id={quoteattr(pid)} session_id={sid}>",
            f"    <associate-time>{stamp}</associate-time>",
            "  </participantsessionassoc>",
        ]
    for party, pid in participant_ids.items():
        out.append(f"  <participantstreamassoc participant_id={quoteattr(pid)}>")
        for stream, stream_id in zip(streams, stream_ids, strict=True):
            role = "send" if stream.participant == party else "recv"
            out.append(f"    <{role}>{escape(stream_id)}</{role}>")
        out.append("  </participantstreamassoc>")
    out.append("</recording>")
    return ("\r\n".join(out) + "\r\n").encode("utf-8")


def build_invite_body(sdp: bytes, metadata: bytes, boundary: str) -> tuple[str, bytes]:
    """(Content-Type, body) of a multipart/mixed SIPREC body: SDP first, then the metadata
    with Content-Disposition: recording-session (RFC 7866 9.1)."""
    b = boundary.encode("ascii")
    body = (
        b"--" + b + b"\r\nContent-Type: application/sdp\r\n\r\n" + sdp
        + b"\r\n--" + b + b"\r\nContent-Type: application/rs-metadata+xml\r\n"
        b"Content-Disposition: recording-session\r\n\r\n" + metadata
        + b"\r\n--" + b + b"--\r\n"
    )
    return f"multipart/mixed;boundary={boundary}", body


@dataclass(frozen=True, slots=True)
class AnsweredMedia:
    """What the recorder answered for one of our m-lines."""

    index: int
    label: str | None
    port: int
    """0 when the recorder declined the stream."""
    address: str | None
    payload_type: int | None
    """The one audio codec chosen."""
    codec: str | None
    telephone_event_pt: int | None
    direction: str
    srtp_suite: str | None
    """The suite of the answer's a=crypto; the key in it is the recorder's own (we only keep
    whether it was usable: our packets are protected with the key we offered)."""
    srtp_key_ok: bool


def read_answer(body: bytes, offered: int) -> tuple[AnsweredMedia, ...]:
    """The recorder's SDP answer, checked for one m-line per offered m-line."""
    try:
        answer = parse_sdp(body)
    except SdpError as exc:
        raise SiprecClientError(f"unreadable SDP answer: {exc}") from None
    if len(answer.media) != offered:
        raise SiprecClientError(
            f"the answer has {len(answer.media)} m-lines for {offered} offered"
        )
    out = []
    for media in answer.media:
        audio = [c for c in media.codecs if not c.is_telephone_event]
        events = [c for c in media.codecs if c.is_telephone_event]
        crypto = media.crypto[0] if media.crypto else None
        out.append(
            AnsweredMedia(
                index=media.index,
                label=media.label,
                port=media.port,
                address=media.connection.address if media.connection else None,
                payload_type=audio[0].pt if audio else None,
                codec=audio[0].rtpmap if audio else None,
                telephone_event_pt=events[0].pt if events else None,
                direction=media.direction,
                srtp_suite=crypto.suite_name if crypto else None,
                srtp_key_ok=bool(crypto and crypto.usable),
            )
        )
    return tuple(out)
