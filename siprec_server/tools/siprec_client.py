"""Our own SIPREC client: it plays the SBC (the SRC of RFC 7866) towards the recorder.

It exists for end-to-end tests and as the load generator of the media benchmark: SIPp can
neither encrypt (SRTP) nor send media on more than the first m-line, and a recorder is only
tested by what an SBC really sends. A call is described by a `CallPlan` (streams, codecs, SRTP
suites, DTMF, hold, network impairments) and `run_calls` places many of them and returns what
was sent, per call and per stream, in a `RunReport`.

Layers, as in the server:

- sans-IO pieces with no clock and no socket: `PayloadEncoder` (G.711 by the encoders of
  media.codecs, PyAV for G.722 and Opus), `RtpStream` (the packets of one stream, tick by
  tick: sequence numbers, timestamps, marker, RFC 4733 telephone events), `Impairment` (seeded
  loss / reorder / duplication) and the INVITE body builders (SDP offer, RFC 7865 metadata,
  multipart/mixed);
- the asyncio edge: one SIP link per transport (shared by every call), a small client
  transaction per request (RFC 3261 17.1 retransmission on T1 doubling over UDP), and ONE pacer
  task that sends the due packets of every stream of every call on a common grid of packet
  times, each call on one of a few phases of it so that packets do not all leave in one burst.

The send path is header + SRTP protect + sendto: payloads are encoded before the call starts
(a one-second loop of tone by default, shared by every call with the same codec and tone), so a
process can carry hundreds of streams. The pacer measures its own lateness: a load generator
that falls behind measures itself, not the server, and the report says so.

Media goes to the host of the server address given by the caller, at the ports of the SDP
answer; the answer's c= address is only reported. This keeps a benchmark from spraying packets
anywhere a misconfigured answer points.

G.729 is not offered: PyAV has no G.729 encoder, so the recorder's G.729 path is receive-only
as far as this client is concerned. The only exception raised for bad plans or unreadable
answers is `SiprecClientError`; network failures end up in the reports, not as exceptions.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import ipaddress
import math
import os
import random
import resource
import secrets
import socket
import struct
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal
from xml.sax.saxutils import escape, quoteattr

import av
import numpy as np
import numpy.typing as npt

from siprec_server.media.codecs import encode_alaw, encode_ulaw
from siprec_server.media.srtp import SrtpSender, srtp_sender
from siprec_server.media.srtp_suites import find_suite
from siprec_server.sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    StreamFramer,
    build_response,
    parse_message,
)
from siprec_server.siprec.sdp import SdpError, parse_sdp

__all__ = [
    "CODECS",
    "T1",
    "DTMF_FREQUENCIES",
    "AnsweredMedia",
    "AudioSource",
    "CallPlan",
    "CallReport",
    "CodecSpec",
    "DtmfDigit",
    "DtmfSent",
    "Hold",
    "Impairment",
    "Impairments",
    "OfferedMedia",
    "Participant",
    "PayloadEncoder",
    "RtpStream",
    "RunReport",
    "ServerAddress",
    "SenderStats",
    "SipExchange",
    "SrcDialog",
    "SiprecClientError",
    "StreamPlan",
    "StreamReport",
    "TickOverride",
    "build_invite_body",
    "build_metadata",
    "build_offer_sdp",
    "codec_spec",
    "default_streams",
    "dtmf_overrides",
    "dtmf_tone",
    "encode_source",
    "parse_server",
    "read_answer",
    "run_calls",
    "telephone_event_payload",
    "tone_frame",
]

Pcm = npt.NDArray[np.int16]
AudioSource = float | Callable[[int, int], npt.NDArray[Any]]
"""A tone frequency in Hz, or a callable (frame index, sample rate) -> int16 PCM of one frame."""

T1: Final = 0.5
"""RFC 3261 timer T1: the first UDP retransmission interval."""
T2: Final = 4.0
"""RFC 3261 timer T2: the cap of non-INVITE retransmission intervals."""
TELEPHONE_EVENT_PT: Final = 101
TONE_AMPLITUDE: Final = 0.3
"""Tone level as a fraction of full scale (about -10.5 dBFS), as in tests/audio.py."""
DTMF_VOLUME: Final = 10
"""Telephone-event power level in -dBm0 (RFC 4733 2.3.4)."""
DTMF_END_REPEATS: Final = 3
"""The end packet of an event is sent this many times (RFC 4733 2.5.1.4)."""
_RTP_HEADER: Final = struct.Struct("!BBHII")
_MAX_EVENT_DURATION: Final = 0xFFFF


class SiprecClientError(ValueError):
    """A plan this client cannot carry out, or an SDP answer it cannot read."""


# --- codecs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """How one codec is offered and framed (RFC 3551, RFC 7587)."""

    name: str
    payload_type: int
    rtpmap: str
    """The a=rtpmap value after the payload type."""
    clock_rate: int
    """RTP timestamp rate: 8000 for G.722 although it samples at 16 kHz (RFC 3551 4.5.2)."""
    audio_rate: int
    """Sample rate of the PCM the encoder takes."""
    fmtp: str | None = None

    def rtp_units(self, ptime_ms: int) -> int:
        """RTP timestamp increment of one packet."""
        return self.clock_rate * ptime_ms // 1000

    def pcm_samples(self, ptime_ms: int) -> int:
        """PCM samples the encoder takes for one packet."""
        return self.audio_rate * ptime_ms // 1000


CODECS: Final[Mapping[str, CodecSpec]] = {
    "PCMU": CodecSpec("PCMU", 0, "PCMU/8000", 8000, 8000),
    "PCMA": CodecSpec("PCMA", 8, "PCMA/8000", 8000, 8000),
    "G722": CodecSpec("G722", 9, "G722/8000", 8000, 16000),
    # RFC 7587: always opus/48000/2 in SDP, whatever is actually sent.
    "opus": CodecSpec("opus", 111, "opus/48000/2", 48000, 48000, "useinbandfec=0;stereo=0"),
}
_PTIMES: Final[Mapping[str, frozenset[int]]] = {
    "PCMU": frozenset({10, 20, 30, 40, 60}),
    "PCMA": frozenset({10, 20, 30, 40, 60}),
    "G722": frozenset({10, 20, 30, 40, 60}),
    "opus": frozenset({10, 20, 40, 60}),
}


def codec_spec(name: str) -> CodecSpec:
    """The codec with this name (any case); SiprecClientError for G.729 or unknown names."""
    for key, spec in CODECS.items():
        if key.lower() == name.strip().lower():
            return spec
    if name.strip().upper().startswith("G729"):
        raise SiprecClientError("G.729 cannot be sent: PyAV has no G.729 encoder (receive-only)")
    raise SiprecClientError(f"unknown codec {name!r} (known: {', '.join(CODECS)})")


class PayloadEncoder:
    """Encodes PCM frames of one packet each into RTP payloads of one codec."""

    def __init__(self, codec: CodecSpec, ptime_ms: int = 20) -> None:
        self.codec = codec
        self.samples = codec.pcm_samples(ptime_ms)
        self._pts = 0
        self._context: av.AudioCodecContext | None = None
        if codec.name in ("G722", "opus"):
            context = av.CodecContext.create("g722" if codec.name == "G722" else "libopus", "w")
            assert isinstance(context, av.AudioCodecContext)
            context.sample_rate = codec.audio_rate
            context.layout = "mono"
            context.format = "s16"
            if codec.name == "opus":
                context.bit_rate = 32000
                context.options = {"application": "voip", "frame_duration": str(ptime_ms)}
            context.open()
            self._context = context

    def encode(self, pcm: npt.NDArray[Any]) -> bytes:
        """One payload for exactly one packet's worth of PCM (padded or cut to fit)."""
        frame = _fit(pcm, self.samples)
        if self.codec.name == "PCMU":
            return encode_ulaw(frame)
        if self.codec.name == "PCMA":
            return encode_alaw(frame)
        assert self._context is not None
        av_frame = av.AudioFrame.from_ndarray(frame.reshape(1, -1), format="s16", layout="mono")
        av_frame.sample_rate = self.codec.audio_rate
        av_frame.pts = self._pts
        self._pts += self.samples
        packets = self._context.encode(av_frame)
        if len(packets) != 1:
            raise SiprecClientError(
                f"{self.codec.name} encoder gave {len(packets)} packets for one frame"
            )
        return bytes(packets[0])


def _fit(pcm: npt.NDArray[Any], samples: int) -> Pcm:
    data = np.asarray(pcm).reshape(-1)
    if data.dtype != np.int16:
        data = np.clip(np.round(data.astype(np.float64)), -32768, 32767).astype(np.int16)
    if len(data) < samples:
        data = np.concatenate([data, np.zeros(samples - len(data), dtype=np.int16)])
    return data[:samples]


def tone_frame(
    freq_hz: float, rate: int, index: int, samples: int, amplitude: float = TONE_AMPLITUDE
) -> Pcm:
    """Frame `index` of a continuous sine that starts at phase 0."""
    t = (np.arange(samples) + index * samples) / rate
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


DTMF_FREQUENCIES: Final[Mapping[str, tuple[int, int]]] = {
    digit: (low, high)
    for row, low in zip(("123A", "456B", "789C", "*0#D"), (697, 770, 852, 941), strict=True)
    for digit, high in zip(row, (1209, 1336, 1477, 1633), strict=True)
}
"""ITU-T Q.23 row and column frequencies of each key."""
_EVENT_CODES: Final[Mapping[str, int]] = {d: i for i, d in enumerate("0123456789*#ABCD")}


def dtmf_tone(digit: str, rate: int, index: int, samples: int) -> Pcm:
    """Frame `index` of the in-band dual tone of a key, each tone at -13 dBFS or so."""
    low, high = DTMF_FREQUENCIES[digit]
    t = (np.arange(samples) + index * samples) / rate
    pcm = 0.22 * 32767 * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t))
    return np.round(pcm).astype(np.int16)


def _source_frame(source: AudioSource, rate: int, index: int, samples: int) -> Pcm:
    if isinstance(source, int | float):
        return tone_frame(float(source), rate, index, samples)
    return _fit(source(index, rate), samples)


def encode_source(
    codec: CodecSpec, source: AudioSource, frames: int, ptime_ms: int = 20, *, loop: bool = False
) -> tuple[bytes, ...]:
    """Payloads of `frames` consecutive packets of a source.

    With `loop`, the payloads are meant to be repeated: stateful codecs (G.722's ADPCM
    predictor, Opus) first encode the same stretch once to warm up, so the state at the start
    of the kept stretch matches the state at its end and the joint is clean.
    """
    encoder = PayloadEncoder(codec, ptime_ms)
    samples = encoder.samples
    if loop and codec.name in ("G722", "opus"):
        for index in range(frames):
            encoder.encode(_source_frame(source, codec.audio_rate, index, samples))
    return tuple(
        encoder.encode(_source_frame(source, codec.audio_rate, index, samples))
        for index in range(frames)
    )


# --- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Participant:
    """A party of the recorded call (RFC 7865 participant with a nameID)."""

    aor: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """One sendonly m-line and the party whose audio it carries."""

    label: str
    participant: Participant
    codec: str = "PCMU"
    source: AudioSource = 440.0
    srtp: str | None = None
    """An SDES suite name from srtp_suites.SUITES (any known spelling), None for plain RTP."""


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    """A key press sent as RFC 4733 telephone events."""

    digit: str
    at: float
    """Seconds after the first media packet of the call."""
    duration: float = 0.1
    stream: int = 0
    """Index of the stream (m-line) that carries it."""


@dataclass(frozen=True, slots=True)
class Hold:
    """The SRC puts the streams on hold: re-INVITE with a=inactive at `start`, back at `end`."""

    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Impairments:
    """What the network does to the packets, after encryption, reproducibly."""

    loss_percent: float = 0.0
    reorder_percent: float = 0.0
    """Share of packets sent after the next one (at most 50: then every pair is swapped)."""
    duplicate_percent: float = 0.0
    seed: int = 0


def default_streams(
    count: int = 2, codec: str = "PCMU", srtp: str | None = None
) -> tuple[StreamPlan, ...]:
    """`count` streams labelled "1".."N", one party each, tones 440, 660, 880 Hz..."""
    return tuple(
        StreamPlan(
            label=str(i + 1),
            participant=Participant(f"sip:+1555010{i:04d}@src.example.com", f"Party {i + 1}"),
            codec=codec,
            source=220.0 * (i + 2),
            srtp=srtp,
        )
        for i in range(count)
    )


@dataclass(frozen=True, slots=True)
class CallPlan:
    """Everything one recorded call does."""

    streams: tuple[StreamPlan, ...] = field(default_factory=default_streams)
    duration: float = 5.0
    """Seconds of media per stream; BYE follows the last packet."""
    ptime_ms: int = 20
    transport: Literal["udp", "tcp"] = "udp"
    dtmf: tuple[DtmfDigit, ...] = ()
    dtmf_inband: Literal["tone", "silence", "none"] = "tone"
    """What the audio packets carry while a key is pressed: the key's dual tone (a recording
    that blanks DTMF must show silence there), silence, or no audio packets at all."""
    hold: Hold | None = None
    impairments: Impairments | None = None
    loop_seconds: float | None = 1.0
    """Length of the encoded stretch that is repeated; None encodes the whole duration."""

    def frames(self) -> int:
        return max(1, round(self.duration * 1000 / self.ptime_ms))

    def validate(self) -> None:
        """SiprecClientError when the plan cannot be carried out as written."""
        if not self.streams:
            raise SiprecClientError("a call needs at least one stream")
        if self.transport not in ("udp", "tcp"):
            raise SiprecClientError(f"transport {self.transport!r}: udp or tcp")
        if not 0 < self.duration <= 24 * 3600:
            raise SiprecClientError("duration must be positive")
        if self.dtmf_inband not in ("tone", "silence", "none"):
            raise SiprecClientError(f"dtmf_inband {self.dtmf_inband!r}")
        labels = [s.label for s in self.streams]
        if len(set(labels)) != len(labels):
            raise SiprecClientError("stream labels must be unique")
        for stream in self.streams:
            spec = codec_spec(stream.codec)
            if self.ptime_ms not in _PTIMES[spec.name]:
                raise SiprecClientError(f"{spec.name} cannot be framed at {self.ptime_ms} ms")
            if stream.srtp is not None and find_suite(stream.srtp) is None:
                raise SiprecClientError(f"unknown SRTP suite {stream.srtp!r}")
            if any(c in stream.label for c in "\r\n"):
                raise SiprecClientError("a label cannot contain a line break")
        if self.hold is not None and not 0 <= self.hold.start < self.hold.end:
            raise SiprecClientError("hold must end after it starts")
        if self.impairments is not None:
            imp = self.impairments
            for value in (imp.loss_percent, imp.reorder_percent, imp.duplicate_percent):
                if not 0 <= value <= 100:
                    raise SiprecClientError("impairment percentages are 0..100")
            if imp.reorder_percent > 50:
                raise SiprecClientError("at most 50 % of packets can be sent after the next")
        for digit in self.dtmf:
            if digit.digit not in _EVENT_CODES:
                raise SiprecClientError(f"not a DTMF key: {digit.digit!r}")
            if not 0 <= digit.stream < len(self.streams):
                raise SiprecClientError(f"DTMF on stream {digit.stream}: no such stream")
        # The overrides builder checks overlaps and lengths.
        for index in range(len(self.streams)):
            dtmf_overrides(self, index, encoded=False)


# --- RTP ---------------------------------------------------------------------------------------


def telephone_event_payload(event: int, *, end: bool, volume: int, duration: int) -> bytes:
    """One RFC 4733 2.3 event block: event, E|R|volume, 16-bit duration."""
    return bytes((event, (0x80 if end else 0) | (volume & 0x3F))) + struct.pack("!H", duration)


@dataclass(frozen=True, slots=True)
class TickOverride:
    """What a stream sends at one tick instead of its regular audio packet."""

    audio: bytes | None
    """The audio payload, or None for no audio packet at this tick."""
    event: bytes | None = None
    """A telephone-event payload sent after the audio packet."""
    event_start: int = 0
    """Tick at which the event began: its RTP timestamp (RFC 4733 2.5.1.2)."""
    marker: bool = False
    """Marker bit of the event packet: set on the first packet of an event."""
    digit: str | None = None
    """The key, on the tick of the event's first packet (for the report)."""
    event_ticks: int = 0
    """Ticks the key is held (on the first packet, for the report)."""
    planned_at: float = 0.0
    """The DtmfDigit's `at` (on the first packet, for the report)."""


_REGULAR: Final = b"\x00regular"
"""Sentinel audio of a TickOverride: send the stream's regular payload."""


def dtmf_overrides(
    plan: CallPlan, stream_index: int, *, encoded: bool = True
) -> dict[int, TickOverride]:
    """The ticks of a stream that carry telephone events, and their audio.

    An event of n ticks sends n packets whose duration grows by one packet time each, the last
    with the E bit, then repeats that end packet so it goes out DTMF_END_REPEATS times in all,
    one per tick (RFC 4733 2.5.1.4); every packet has its own sequence number, so SRTP replay
    protection does not eat the repeats. Audio during the event is chosen by
    `plan.dtmf_inband`; the repeats carry regular audio again.
    """
    stream = plan.streams[stream_index]
    spec = codec_spec(stream.codec)
    units = spec.rtp_units(plan.ptime_ms)
    samples = spec.pcm_samples(plan.ptime_ms)
    silence: bytes | None = None
    out: dict[int, TickOverride] = {}
    frames = plan.frames()
    for digit in sorted((d for d in plan.dtmf if d.stream == stream_index), key=lambda d: d.at):
        start = round(digit.at * 1000 / plan.ptime_ms)
        ticks = max(1, round(digit.duration * 1000 / plan.ptime_ms))
        if ticks * units > _MAX_EVENT_DURATION:
            raise SiprecClientError(f"DTMF {digit.digit!r} too long for one RFC 4733 event")
        last = start + ticks - 1 + DTMF_END_REPEATS - 1
        if start < 0 or last >= frames:
            raise SiprecClientError(f"DTMF {digit.digit!r} at {digit.at} s is outside the call")
        if any(k in out for k in range(start, last + 1)):
            raise SiprecClientError(f"DTMF {digit.digit!r} at {digit.at} s overlaps another")
        code = _EVENT_CODES[digit.digit]
        tone = PayloadEncoder(spec, plan.ptime_ms) if encoded else None
        for i in range(ticks + DTMF_END_REPEATS - 1):
            end = i >= ticks - 1
            payload = telephone_event_payload(
                code, end=end, volume=DTMF_VOLUME, duration=min(i + 1, ticks) * units
            )
            audio: bytes | None
            if i >= ticks:
                audio = _REGULAR
            elif plan.dtmf_inband == "none":
                audio = None
            elif plan.dtmf_inband == "silence" or tone is None:
                if silence is None:
                    silence = (
                        PayloadEncoder(spec, plan.ptime_ms).encode(np.zeros(samples, np.int16))
                        if encoded else b""
                    )
                audio = silence
            else:
                audio = tone.encode(dtmf_tone(digit.digit, spec.audio_rate, i, samples))
            first = i == 0
            out[start + i] = TickOverride(
                audio, payload, start, marker=first, digit=digit.digit if first else None,
                event_ticks=ticks if first else 0, planned_at=digit.at if first else 0.0,
            )
    return out


class RtpStream:
    """The RTP packets of one sendonly stream, tick by tick (RFC 3550, RFC 3551, RFC 4733).

    Tick k carries timestamp first_timestamp + k * units, so the media clock keeps running
    through hold (when nothing is sent) and the recorder sees the gap as time. Sequence numbers
    count the packets actually produced. The first packet of the stream, and the first after
    a hold, has the marker bit set (a new talkspurt, RFC 3551 4.1).
    """

    __slots__ = (
        "audio_packets",
        "event_packets",
        "first_seq",
        "first_timestamp",
        "event_pt",
        "loop",
        "_mark",
        "overrides",
        "payload_type",
        "payloads",
        "seq",
        "sending",
        "ssrc",
        "units",
    )

    def __init__(
        self,
        *,
        payload_type: int,
        units: int,
        payloads: Sequence[bytes],
        ssrc: int,
        first_seq: int,
        first_timestamp: int,
        event_pt: int | None = None,
        overrides: Mapping[int, TickOverride] | None = None,
    ) -> None:
        if not payloads:
            raise SiprecClientError("a stream needs at least one payload")
        self.payload_type = payload_type
        self.units = units
        self.payloads = tuple(payloads)
        self.loop = len(self.payloads)
        self.ssrc = ssrc & 0xFFFFFFFF
        self.first_seq = first_seq & 0xFFFF
        self.first_timestamp = first_timestamp & 0xFFFFFFFF
        self.seq = self.first_seq
        self.event_pt = event_pt
        self.overrides = dict(overrides or {})
        if self.overrides and event_pt is None:
            raise SiprecClientError("telephone events need a telephone-event payload type")
        self.sending = True
        self._mark = True
        self.audio_packets = 0
        self.event_packets = 0

    def hold(self) -> None:
        self.sending = False

    def resume(self) -> None:
        if not self.sending:
            self.sending = True
            self._mark = True

    def _packet(self, pt: int, timestamp: int, payload: bytes, marker: bool) -> bytes:
        packet = _RTP_HEADER.pack(
            0x80, (0x80 if marker else 0) | pt, self.seq, timestamp & 0xFFFFFFFF, self.ssrc
        )
        self.seq = (self.seq + 1) & 0xFFFF
        return packet + payload

    def packets(self, tick: int) -> list[bytes]:
        """The RTP packets to send at `tick` (0 = the stream's first), none while on hold."""
        if not self.sending:
            return []
        timestamp = self.first_timestamp + tick * self.units
        override = self.overrides.get(tick) if self.overrides else None
        if override is None:
            marker, self._mark = self._mark, False
            self.audio_packets += 1
            return [self._packet(self.payload_type, timestamp, self.payloads[tick % self.loop],
                                 marker)]
        out: list[bytes] = []
        audio = override.audio
        if audio is not None:
            if audio is _REGULAR:
                audio = self.payloads[tick % self.loop]
            marker, self._mark = self._mark, False
            self.audio_packets += 1
            out.append(self._packet(self.payload_type, timestamp, audio, marker))
        if override.event is not None:
            assert self.event_pt is not None
            self.event_packets += 1
            start = self.first_timestamp + override.event_start * self.units
            out.append(self._packet(self.event_pt, start, override.event, override.marker))
        return out


class Impairment:
    """Seeded loss, reordering and duplication of one stream's packets.

    Three random draws per packet, whatever the outcome, so each kind of impairment hits the
    same packets whatever the other percentages are, and a seed replays a run exactly.
    """

    __slots__ = ("_dup", "_held", "_loss", "_reorder", "_rng", "dropped", "duplicated",
                 "reordered")

    def __init__(self, spec: Impairments, stream_key: str = "") -> None:
        self._rng = random.Random(f"{spec.seed}:{stream_key}")
        self._loss = spec.loss_percent / 100
        # The packet after a delayed one releases it and cannot be delayed itself, so only
        # 1 - r of the packets are candidates: delaying candidates with r / (1 - r) makes the
        # share of delayed packets r.
        share = min(spec.reorder_percent, 50.0) / 100
        self._reorder = share / (1 - share)
        self._dup = spec.duplicate_percent / 100
        self._held: bytes | None = None
        self.dropped = 0
        self.duplicated = 0
        self.reordered = 0

    def apply(self, packet: bytes) -> list[bytes]:
        """The datagrams to send now for this packet (zero, one or more)."""
        rng = self._rng
        lose, delay, duplicate = rng.random(), rng.random(), rng.random()
        if lose < self._loss:
            self.dropped += 1
            return []
        copies = [packet]
        if duplicate < self._dup:
            self.duplicated += 1
            copies.append(packet)
        if self._held is not None:
            held, self._held = self._held, None
            return copies + [held]
        if delay < self._reorder:
            self.reordered += 1
            self._held = packet
            return copies[1:]
        return copies

    def flush(self) -> list[bytes]:
        """A packet still held back for reordering, at the end of the stream. Nothing came
        after it, so it goes out in order after all and is not counted as reordered."""
        held, self._held = self._held, None
        if held is None:
            return []
        self.reordered -= 1
        return [held]


# --- the INVITE --------------------------------------------------------------------------------


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


def _xml_id(value: uuid.UUID) -> str:
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


# --- reports -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SipExchange:
    """One request we sent and how it was answered. Times are seconds since the INVITE."""

    method: str
    cseq: int
    sent_after: float
    status: int | None
    """Final status; None when nothing final came (timeout, connection lost)."""
    reason: str
    provisional_after: float | None
    final_after: float | None
    transmissions: int
    """1 + retransmissions over UDP."""


@dataclass(frozen=True, slots=True)
class DtmfSent:
    """A key press whose first telephone-event packet went out."""

    digit: str
    stream: int
    planned_at: float
    """Seconds after the call's first media tick, as planned."""
    sent_at: float
    """Wall clock (epoch seconds) of the first event packet."""
    rtp_timestamp: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class StreamReport:
    """What one stream sent. Counts are of RTP packets (audio + events) unless named datagrams."""

    label: str
    codec: str
    payload_type: int | None
    telephone_event_pt: int | None
    srtp_suite: str | None
    answered: bool
    """False when the recorder declined the m-line (port 0) or the call was not answered."""
    local_port: int
    remote: tuple[str, int] | None
    answer_address: str | None
    ssrc: int
    first_seq: int
    first_timestamp: int
    audio_packets: int
    event_packets: int
    dropped: int
    """Packets the impairment dropped (never sent)."""
    duplicated: int
    """Extra copies sent by the impairment."""
    reordered: int
    datagrams_sent: int
    """Datagrams handed to the kernel: packets - dropped + duplicated, minus send errors."""
    send_errors: int
    first_packet_at: float | None
    """Wall clock (epoch seconds) of the first datagram."""
    first_packet_after: float | None
    """Seconds from the INVITE to the first datagram."""

    @property
    def packets(self) -> int:
        return self.audio_packets + self.event_packets


@dataclass(frozen=True, slots=True)
class CallReport:
    index: int
    call_id: str
    session_id: str
    """The RFC 7865 recording session id of the metadata (base64 of a UUID)."""
    transport: str
    ok: bool
    """200 to the INVITE, media sent as planned, 200 to the BYE."""
    error: str | None
    invite: SipExchange | None
    reinvites: tuple[SipExchange, ...]
    bye: SipExchange | None
    ended_by_server: bool
    streams: tuple[StreamReport, ...]
    dtmf: tuple[DtmfSent, ...]
    started_at: float
    """Wall clock (epoch seconds) of the INVITE."""
    media_started_at: float | None
    """Wall clock of the call's first media tick (DTMF and hold times count from here)."""
    media_seconds: float
    """Seconds of media clock the streams covered (the plan's duration when all went well)."""
    max_sender_lateness_ms: float | None
    """Worst lateness of the pacer's ticks while this call was sending."""


@dataclass(frozen=True, slots=True)
class SenderStats:
    """How well the pacer kept to its 20 ms grid. Lateness is measured per tick with streams:
    `first` when the tick started sending, `last` when its last packet had been sent."""

    ticks: int
    """Steps of the pacer that had streams to serve."""
    max_streams: int
    phases: int
    """Steps per packet time: calls are spread over this many phases."""
    late_first_p50_ms: float
    late_first_p99_ms: float
    late_last_p50_ms: float
    late_last_p99_ms: float
    late_last_max_ms: float
    overruns: int
    """Ticks whose last packet left more than one packet time late: the sender fell behind."""
    busy_seconds: float
    """Wall time spent building and sending packets."""
    active_seconds: float = 0.0
    """Wall time covered by the steps that had streams."""

    @property
    def fell_behind(self) -> bool:
        return self.overruns > 0 or self.late_last_p99_ms > 10.0

    @property
    def duty(self) -> float:
        """Share of the active time the send loop was busy. Lateness with a low duty means
        the process was not scheduled in time (the CPU is shared), not that sending is slow."""
        return self.busy_seconds / self.active_seconds if self.active_seconds else 0.0


@dataclass(frozen=True, slots=True)
class RunReport:
    calls: tuple[CallReport, ...]
    sender: SenderStats
    elapsed: float
    """Seconds from the first call's start to the end of the last."""
    cpu_user: float
    """CPU seconds of this process during the run (all threads), encoding excluded."""
    cpu_system: float
    prepare_cpu: float = 0.0
    """CPU seconds spent encoding payloads before the run."""

    @property
    def ok(self) -> int:
        return sum(1 for c in self.calls if c.ok)

    @property
    def failed(self) -> int:
        return len(self.calls) - self.ok

    @property
    def call_seconds(self) -> float:
        return sum(c.media_seconds for c in self.calls)

    @property
    def datagrams_sent(self) -> int:
        return sum(s.datagrams_sent for c in self.calls for s in c.streams)

    @property
    def cpu_ms_per_call_second(self) -> float | None:
        seconds = self.call_seconds
        return 1000 * (self.cpu_user + self.cpu_system) / seconds if seconds else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = {
            "ok": self.ok,
            "failed": self.failed,
            "call_seconds": self.call_seconds,
            "datagrams_sent": self.datagrams_sent,
            "cpu_ms_per_call_second": self.cpu_ms_per_call_second,
            "sender_fell_behind": self.sender.fell_behind,
        }
        return data


# --- the asyncio edge: media -------------------------------------------------------------------


class _OutboundStream:
    """One stream's socket, SRTP context and impairment around its RtpStream."""

    __slots__ = ("_dest", "_sock", "datagrams", "done", "dtmf", "end_tick", "errors",
                 "finished", "first_at", "frames", "impairment", "ptime", "rtp", "srtp",
                 "start_tick", "stream_index")

    def __init__(
        self,
        rtp: RtpStream,
        sock: socket.socket,
        dest: tuple[str, int],
        srtp: SrtpSender | None,
        impairment: Impairment | None,
        *,
        frames: int,
        ptime: float,
        stream_index: int,
    ) -> None:
        self.rtp = rtp
        self._sock = sock
        self._dest = dest
        self.srtp = srtp
        self.impairment = impairment
        self.frames = frames
        self.ptime = ptime
        self.stream_index = stream_index
        self.start_tick = 0
        """The pacer step of the stream's first packet."""
        self.end_tick: int | None = None
        self.datagrams = 0
        self.errors = 0
        self.first_at: float | None = None
        self.dtmf: list[DtmfSent] = []
        self.finished = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def send_tick(self, k: int, step: int) -> bool:
        """Send what is due at the stream's packet time `k` (the pacer's `step`); False once
        the stream is over."""
        if k >= self.frames:
            self.finish(step)
            return False
        rtp = self.rtp
        packets = rtp.packets(k)
        if not packets:
            return True
        if rtp.overrides and (override := rtp.overrides.get(k)) and override.digit:
            self._note_dtmf(k, override)
        srtp = self.srtp
        impairment = self.impairment
        for packet in packets:
            if srtp is not None:
                packet = srtp.protect_rtp(packet)
            if impairment is None:
                self._send(packet)
            else:
                for datagram in impairment.apply(packet):
                    self._send(datagram)
        return True

    def _send(self, datagram: bytes) -> None:
        try:
            self._sock.sendto(datagram, self._dest)
        except OSError:
            # A full socket buffer or an ICMP error: counted, never fatal.
            self.errors += 1
            return
        self.datagrams += 1
        if self.first_at is None:
            self.first_at = time.time()

    def _note_dtmf(self, k: int, override: TickOverride) -> None:
        assert override.digit is not None
        self.dtmf.append(
            DtmfSent(
                digit=override.digit,
                stream=self.stream_index,
                planned_at=override.planned_at,
                sent_at=time.time(),
                rtp_timestamp=(self.rtp.first_timestamp + k * self.rtp.units) & 0xFFFFFFFF,
                duration_ms=round(override.event_ticks * self.ptime * 1000),
            )
        )

    def finish(self, tick: int) -> None:
        """The stream is over (played out, or its call stopped): flush and tell the call."""
        if self.finished:
            return
        self.finished = True
        self.end_tick = tick
        if self.impairment is not None:
            for datagram in self.impairment.flush():
                self._send(datagram)
        if not self.done.done():
            self.done.set_result(None)


_EARLY: Final = 0.001
"""A tick may start this much early: event loop timers have millisecond steps."""


class _Pacer:
    """The one task that sends every stream's packets on a common grid.

    The packet time is cut into `phases` steps; each call's streams are put on the least busy
    phase, so packets leave spread over the packet time as from a real SBC, not as one burst
    of every stream. Each step sends, for the streams of its phase, the packet(s) due; when the
    loop wakes late the next steps follow without sleeping, so no packet is skipped, and the
    lateness is recorded.
    """

    def __init__(self, ptime_ms: int, phases: int = 4) -> None:
        self.ptime = ptime_ms / 1000
        self.phases = phases
        self.step = self.ptime / phases
        self._t0 = time.monotonic()
        self._next = 0
        """The next step to run."""
        self._by_phase: list[list[_OutboundStream]] = [[] for _ in range(phases)]
        self._active = 0
        self._wake = asyncio.Event()
        self._closed = False
        self.late_first: list[float] = []
        self.late_last: list[float] = []
        self.step_of_sample: list[int] = []
        self.max_streams = 0
        self.busy = 0.0
        self._task = asyncio.create_task(self._run())

    def time_of(self, step: int) -> float:
        return self._t0 + step * self.step

    def add(self, streams: Sequence[_OutboundStream]) -> int:
        """Start a call's streams at the next step of the least busy phase; returns that step."""
        if not self._active:
            # Idle until now: rejoin the grid at the next step from now.
            elapsed = time.monotonic() - self._t0
            self._next = max(self._next, math.ceil(elapsed / self.step))
        phase = min(range(self.phases), key=lambda p: len(self._by_phase[p]))
        start = self._next + (phase - self._next) % self.phases
        for stream in streams:
            stream.start_tick = start
            self._by_phase[phase].append(stream)
        self._active += len(streams)
        self.max_streams = max(self.max_streams, self._active)
        self._wake.set()
        return start

    def remove(self, streams: Sequence[_OutboundStream]) -> None:
        for stream in streams:
            for members in self._by_phase:
                if stream in members:
                    members.remove(stream)
                    self._active -= 1
            stream.finish(self._next)

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        # time.monotonic, not loop.time(): uvloop's loop time has 1 ms steps and stands still
        # during a callback, which would hide the cost of the sends being measured.
        phases = self.phases
        while not self._closed:
            if not self._active:
                self._wake.clear()
                await self._wake.wait()
                continue
            due = self._t0 + self._next * self.step
            while (delay := due - time.monotonic()) > _EARLY:
                await asyncio.sleep(delay)
            start = time.monotonic()
            step = self._next
            self._next += 1
            members = self._by_phase[step % phases]
            over = False
            for stream in members:
                # Members of this phase started on a step of it: whole packet times apart.
                if not stream.send_tick((step - stream.start_tick) // phases, step):
                    over = True
            if over:
                kept = [s for s in members if not s.finished]
                self._active -= len(members) - len(kept)
                self._by_phase[step % phases] = kept
            end = time.monotonic()
            self.busy += end - start
            if members:
                self.late_first.append(start - due)
                self.late_last.append(end - due)
                self.step_of_sample.append(step)

    def lateness_between(self, first_step: int, last_step: int) -> float | None:
        lo = bisect.bisect_left(self.step_of_sample, first_step)
        hi = bisect.bisect_right(self.step_of_sample, last_step)
        if lo >= hi:
            return None
        return max(self.late_last[lo:hi])

    def stats(self) -> SenderStats:
        def pct(values: list[float], q: float) -> float:
            return float(np.percentile(values, q)) * 1000 if values else 0.0

        return SenderStats(
            ticks=len(self.late_last),
            max_streams=self.max_streams,
            phases=self.phases,
            late_first_p50_ms=pct(self.late_first, 50),
            late_first_p99_ms=pct(self.late_first, 99),
            late_last_p50_ms=pct(self.late_last, 50),
            late_last_p99_ms=pct(self.late_last, 99),
            late_last_max_ms=max(self.late_last, default=0.0) * 1000,
            overruns=sum(1 for v in self.late_last if v > self.ptime),
            busy_seconds=self.busy,
            active_seconds=len(self.late_last) * self.step,
        )


@dataclass(frozen=True, slots=True)
class _PreparedMedia:
    """A call's encoded payloads and DTMF ticks, per stream, made before the run starts."""

    payloads: tuple[tuple[bytes, ...], ...]
    overrides: tuple[Mapping[int, TickOverride], ...]


class _PayloadCache:
    """Encoded tone loops and DTMF ticks shared by every call that has the same ones, so a run
    of many alike calls encodes each only once."""

    def __init__(self) -> None:
        self._payloads: dict[tuple[str, float, int, int, bool], tuple[bytes, ...]] = {}
        self._overrides: dict[tuple[object, ...], Mapping[int, TickOverride]] = {}

    def prepare(self, plan: CallPlan) -> _PreparedMedia:
        return _PreparedMedia(
            tuple(self._stream_payloads(plan, s) for s in plan.streams),
            tuple(self._stream_overrides(plan, i) for i in range(len(plan.streams))),
        )

    def _stream_payloads(self, plan: CallPlan, stream: StreamPlan) -> tuple[bytes, ...]:
        spec = codec_spec(stream.codec)
        frames = plan.frames()
        loop = plan.loop_seconds is not None
        if plan.loop_seconds is not None:
            frames = min(frames, max(1, round(plan.loop_seconds * 1000 / plan.ptime_ms)))
        if not isinstance(stream.source, int | float):
            # A callable may give each call its own audio: never shared.
            return encode_source(spec, stream.source, frames, plan.ptime_ms, loop=loop)
        key = (spec.name, float(stream.source), frames, plan.ptime_ms, loop)
        cached = self._payloads.get(key)
        if cached is None:
            cached = encode_source(spec, stream.source, frames, plan.ptime_ms, loop=loop)
            self._payloads[key] = cached
        return cached

    def _stream_overrides(self, plan: CallPlan, index: int) -> Mapping[int, TickOverride]:
        digits = tuple(d for d in plan.dtmf if d.stream == index)
        if not digits:
            return {}
        key = (codec_spec(plan.streams[index].codec).name, digits, plan.dtmf_inband,
               plan.ptime_ms, plan.frames())
        cached = self._overrides.get(key)
        if cached is None:
            cached = self._overrides[key] = dtmf_overrides(plan, index)
        return cached


# --- the asyncio edge: SIP ---------------------------------------------------------------------


def _branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


class _SipLink:
    """One SIP transport towards the server (a UDP socket or a TCP connection), shared by
    every call of a run; messages are routed to calls by Call-ID."""

    def __init__(self, transport: str, server: tuple[str, int], local_host: str) -> None:
        self.transport = transport
        self.server = server
        self.local_host = local_host
        self.local_port = 0
        self._calls: dict[str, _SipDialog] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None
        self.closed_reason: str | None = None
        self.parse_errors = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        if self.transport == "udp":
            link = self

            class _Protocol(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
                    link._received(data, datagram=True)

                def error_received(self, exc: Exception) -> None:
                    pass  # ICMP errors: the transactions time out and say so

            udp, _ = await loop.create_datagram_endpoint(
                _Protocol, local_addr=(self.local_host, 0)
            )
            self._udp = udp
            self.local_port = udp.get_extra_info("sockname")[1]
        else:
            reader, writer = await asyncio.open_connection(
                self.server[0], self.server[1], local_addr=(self.local_host, 0)
            )
            self._writer = writer
            self.local_port = writer.get_extra_info("sockname")[1]
            self._reader = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        framer = StreamFramer()
        try:
            while data := await reader.read(65536):
                for message in framer.feed(data):
                    self._received(message, datagram=False)
            self.closed_reason = "connection closed by the server"
        except (SipParseError, OSError) as exc:
            self.closed_reason = f"connection failed: {exc}"
        for dialog in list(self._calls.values()):
            dialog.connection_lost(self.closed_reason or "connection lost")

    def _received(self, data: bytes, *, datagram: bool) -> None:
        try:
            message = parse_message(data, datagram=datagram)
        except SipParseError:
            self.parse_errors += 1
            return
        dialog = self._calls.get(message.call_id)
        if dialog is not None:
            dialog.received(message)
        elif isinstance(message, SipRequest) and message.method != "ACK":
            self.send(build_response(message, 481).to_bytes())

    def attach(self, dialog: _SipDialog) -> None:
        self._calls[dialog.call_id] = dialog

    def detach(self, dialog: _SipDialog) -> None:
        self._calls.pop(dialog.call_id, None)

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"

    def send(self, data: bytes) -> None:
        if self._udp is not None:
            self._udp.sendto(data, self.server)
        elif self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class _Transaction:
    __slots__ = ("cseq", "final", "method", "provisional_at", "transmissions")

    def __init__(self, method: str, cseq: int) -> None:
        self.method = method
        self.cseq = cseq
        self.final: asyncio.Future[SipResponse | None] = (
            asyncio.get_running_loop().create_future()
        )
        """The final response; None when the connection was lost."""
        self.provisional_at: float | None = None
        self.transmissions = 0


class SrcDialog:
    """The SRC's side of one dialog as data (sans-IO): our identity and the recorder's, the
    CSeq counter, and the requests and ACKs built from them."""

    def __init__(
        self,
        *,
        transport: str,
        local: tuple[str, int],
        server: tuple[str, int],
        call_id: str | None = None,
        from_tag: str | None = None,
    ) -> None:
        self.transport = transport
        self.local = local
        self.call_id = call_id or f"{secrets.token_hex(12)}@{_uri_host(local[0])}"
        self.from_tag = from_tag or secrets.token_hex(6)
        self.cseq = 0
        self.remote_target = _host_uri(server, transport)
        self.to_header = f"<{self.remote_target}>"
        params = ";transport=tcp" if transport == "tcp" else ""
        self.contact = f"<sip:src@{_host_port(*local)}{params}>;+sip.src"
        self.from_header = f"<sip:src@{_uri_host(local[0])}>;tag={self.from_tag}"

    def request(
        self,
        method: str,
        *,
        cseq: int | None = None,
        branch: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
        uri: str | None = None,
        to_header: str | None = None,
    ) -> SipRequest:
        """A request in this dialog; a new CSeq unless one is given (ACK, CANCEL)."""
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        via = f"SIP/2.0/{self.transport.upper()} {_host_port(*self.local)}"
        headers = Headers(
            [
                ("Via", f"{via};branch={branch or _branch()};rport"),
                ("Max-Forwards", "70"),
                ("From", self.from_header),
                ("To", to_header or self.to_header),
                ("Call-ID", self.call_id),
                ("CSeq", f"{cseq} {method}"),
            ]
        )
        if method in ("INVITE", "UPDATE"):
            headers.add("Contact", self.contact)
        for name, value in extra:
            headers.add(name, value)
        if content_type:
            headers.add("Content-Type", content_type)
        return SipRequest(headers, body, method, uri or self.remote_target)

    def invite(self, sdp: bytes, metadata: bytes, boundary: str | None = None) -> SipRequest:
        """The initial SIPREC INVITE (RFC 7866 6.1): Require: siprec, +sip.src in Contact,
        multipart/mixed body with the SDP offer and the metadata."""
        content_type, body = build_invite_body(
            sdp, metadata, boundary or "siprec-" + secrets.token_hex(8)
        )
        return self.request(
            "INVITE", body=body, content_type=content_type,
            extra=[("Require", "siprec"),
                   ("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE"),
                   ("Accept", "application/sdp, application/rs-metadata"),
                   ("User-Agent", "siprec-server-loadgen")],
        )

    def ack(self, invite: SipRequest, response: SipResponse) -> SipRequest:
        """The ACK of a final response to `invite`. A 2xx confirms the dialog: its To tag and
        Contact are kept and the ACK is a new transaction (RFC 3261 13.2.2.4); for other
        statuses the ACK belongs to the INVITE's transaction (17.1.1.3)."""
        cseq = invite.cseq[0]
        if 200 <= response.status < 300:
            self.to_header = response.headers.get("To") or self.to_header
            contact = response.headers.get("Contact") or ""
            if "<" in contact and ">" in contact:
                self.remote_target = contact[contact.find("<") + 1 : contact.find(">")]
            return self.request("ACK", cseq=cseq)
        return self.request(
            "ACK", cseq=cseq, branch=invite.top_via.branch, uri=invite.uri,
            to_header=response.headers.get("To") or self.to_header,
        )


class _SipDialog:
    """A SrcDialog on a SIP link: client transactions, and answers to the recorder's requests."""

    def __init__(self, link: _SipLink, timeout: float, started: float) -> None:
        self.link = link
        self.state = SrcDialog(
            transport=link.transport, local=(link.local_host, link.local_port),
            server=link.server,
        )
        self.call_id = self.state.call_id
        self.timeout = timeout
        self.started = started
        self._pending: dict[tuple[int, str], _Transaction] = {}
        self._acks: dict[int, bytes] = {}
        self.ended_by_server = False
        self.lost: str | None = None
        self.current_sdp: bytes = b""

    async def transact(self, request: SipRequest) -> tuple[SipResponse | None, SipExchange]:
        """Send a request and wait for its final response, or `timeout`.

        Over UDP the request is retransmitted on T1 doubling (RFC 3261 17.1.1.2 / 17.1.2.2):
        an INVITE until anything comes back, other requests with the interval capped at T2.
        """
        cseq, method = request.cseq
        txn = _Transaction(method, cseq)
        self._pending[(cseq, method)] = txn
        data = request.to_bytes()
        sent = time.monotonic()
        deadline = sent + self.timeout
        interval = T1
        next_send = sent + interval
        self.link.send(data)
        txn.transmissions = 1
        try:
            while not txn.final.done() and self.lost is None:
                now = time.monotonic()
                if now >= deadline:
                    break
                retransmit = not self.link.reliable and not (
                    method == "INVITE" and txn.provisional_at is not None
                )
                if retransmit and now >= next_send:
                    self.link.send(data)
                    txn.transmissions += 1
                    interval = interval * 2 if method == "INVITE" else min(interval * 2, T2)
                    next_send = now + interval
                wake = min(deadline, next_send) if retransmit else deadline
                await asyncio.wait([txn.final], timeout=max(0.0, wake - now))
        finally:
            self._pending.pop((cseq, method), None)
        response = txn.final.result() if txn.final.done() else None
        final_at = time.monotonic() if response is not None else None
        reason = self.lost or "timeout"
        exchange = SipExchange(
            method=method,
            cseq=cseq,
            sent_after=sent - self.started,
            status=response.status if response else None,
            reason=response.reason if response else reason,
            provisional_after=None if txn.provisional_at is None
            else txn.provisional_at - self.started,
            final_after=None if final_at is None else final_at - self.started,
            transmissions=txn.transmissions,
        )
        return response, exchange

    def ack(self, invite: SipRequest, response: SipResponse) -> None:
        ack = self.state.ack(invite, response).to_bytes()
        if 200 <= response.status < 300:
            self._acks[invite.cseq[0]] = ack
        self.link.send(ack)

    def received(self, message: SipRequest | SipResponse) -> None:
        if isinstance(message, SipResponse):
            self._response(message)
        else:
            self._request(message)

    def _response(self, response: SipResponse) -> None:
        try:
            key = response.cseq
        except SipParseError:
            return
        txn = self._pending.get(key)
        if txn is None:
            # A retransmitted 2xx to an INVITE we ACKed already: ACK again (RFC 3261 13.2.2.4).
            if key[1] == "INVITE" and 200 <= response.status < 300 and key[0] in self._acks:
                self.link.send(self._acks[key[0]])
            return
        if response.status < 200:
            if txn.provisional_at is None:
                txn.provisional_at = time.monotonic()
        elif not txn.final.done():
            txn.final.set_result(response)

    def _request(self, request: SipRequest) -> None:
        if request.method == "ACK":
            return
        headers: list[tuple[str, str]] = []
        body = b""
        status = 200
        if request.method == "BYE":
            self.ended_by_server = True
        elif request.method == "INVITE":
            # A refresh or an offer from the recorder: answer with what we send.
            headers = [("Contact", self.state.contact), ("Content-Type", "application/sdp")]
            body = self.current_sdp
        elif request.method not in ("OPTIONS", "UPDATE", "INFO"):
            status = 501
        response = build_response(request, status, to_tag=self.state.from_tag, headers=headers,
                                  body=body)
        self.link.send(response.to_bytes())

    def connection_lost(self, reason: str) -> None:
        self.lost = reason
        for txn in self._pending.values():
            if not txn.final.done():
                txn.final.set_result(None)


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _host_port(host: str, port: int) -> str:
    return f"{_uri_host(host)}:{port}"


def _host_uri(server: tuple[str, int], transport: str) -> str:
    params = ";transport=tcp" if transport == "tcp" else ""
    return f"sip:srs@{_host_port(*server)}{params}"


# --- running calls -----------------------------------------------------------------------------


@dataclass
class _RunContext:
    servers: Mapping[str, tuple[str, int]]
    """The recorder's address per SIP transport; media goes to the same host."""
    local_host: str
    pacer: _Pacer
    links: dict[str, _SipLink]
    sip_timeout: float
    link_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def link(self, transport: str) -> _SipLink:
        async with self.link_lock:
            link = self.links.get(transport)
            if link is None or link.closed_reason is not None:
                server = self.servers.get(transport)
                if server is None:
                    raise SiprecClientError(f"no server address for {transport}")
                link = _SipLink(transport, server, self.local_host)
                await link.open()
                self.links[transport] = link
            return link


def _local_host_for(server: tuple[str, int]) -> str:
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(server)
        host: str = probe.getsockname()[0]
    return host


def parse_server(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT."""
    host, _, port_text = text.strip().rpartition(":")
    if not host or not port_text.isascii() or not port_text.isdigit():
        raise SiprecClientError(f"server address {text!r}: HOST:PORT")
    return host.strip("[]"), int(port_text)


def _resolve(server: tuple[str, int] | str) -> tuple[str, int]:
    host, port = parse_server(server) if isinstance(server, str) else server
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # A name is resolved once, so every packet goes to the same address.
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        if not infos:
            raise SiprecClientError(f"cannot resolve {host!r}") from None
        host = str(infos[0][4][0])
    if not 0 < port < 65536:
        raise SiprecClientError(f"bad port {port}")
    return host, port


class _Call:
    """One call's life: sockets, INVITE, media via the pacer, hold, BYE; builds the report."""

    def __init__(
        self, index: int, plan: CallPlan, media: _PreparedMedia, ctx: _RunContext
    ) -> None:
        self.index = index
        self.plan = plan
        self.media = media
        self.ctx = ctx
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.dialog: _SipDialog | None = None
        self.invite: SipExchange | None = None
        self.reinvites: list[SipExchange] = []
        self.bye: SipExchange | None = None
        self.error: str | None = None
        self.sockets: list[socket.socket] = []
        self.outbound: list[_OutboundStream | None] = []
        self.answers: tuple[AnsweredMedia, ...] = ()
        self.offered: list[OfferedMedia] = []
        self.keys: list[bytes | None] = []
        self.media_start_tick: int | None = None
        self.sdp_session = random.randrange(1, 2**31)
        self.session_id = _xml_id(uuid.uuid4())
        self.sdp_version = 0
        self.established = False
        self.bye_sent = False

    async def run(self) -> CallReport:
        try:
            await self._run()
        except asyncio.CancelledError:
            self.error = self.error or "stopped by the run's hard timeout"
            self._hang_up_now()
        except SiprecClientError as exc:
            self.error = str(exc)
            await self._bye_if_established()
        except OSError as exc:
            self.error = f"network error: {exc}"
            await self._bye_if_established()
        finally:
            self.ctx.pacer.remove([s for s in self.outbound if s is not None])
            if self.dialog is not None:
                self.dialog.link.detach(self.dialog)
            for sock in self.sockets:
                sock.close()
        return self._report()

    async def _run(self) -> None:
        plan = self.plan
        family = socket.AF_INET6 if ":" in self.ctx.local_host else socket.AF_INET
        for stream in plan.streams:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sockets.append(sock)
            sock.bind((self.ctx.local_host, 0))
            sock.setblocking(False)
            spec = codec_spec(stream.codec)
            suite = find_suite(stream.srtp) if stream.srtp else None
            key = os.urandom(suite.key_salt_len) if suite else None
            self.keys.append(key)
            self.offered.append(
                OfferedMedia(
                    label=stream.label, port=sock.getsockname()[1], codec=spec,
                    ptime_ms=plan.ptime_ms, srtp_suite=stream.srtp, key_salt=key,
                )
            )
        link = await self.ctx.link(plan.transport)
        dialog = self.dialog = _SipDialog(link, self.ctx.sip_timeout, self.started)
        link.attach(dialog)
        sdp = self._sdp("sendonly")
        ids = [_xml_id(uuid.uuid4()) for _ in plan.streams]
        parties: dict[Participant, str] = {}
        for stream in plan.streams:
            parties.setdefault(stream.participant, _xml_id(uuid.uuid4()))
        metadata = build_metadata(
            plan.streams, session_id=self.session_id, stream_ids=ids,
            participant_ids=parties, now=datetime.now(UTC),
        )
        request = dialog.state.invite(sdp, metadata)
        response, self.invite = await dialog.transact(request)
        if response is None:
            self.error = f"INVITE not answered: {self.invite.reason}"
            return
        if response.status < 200 or response.status >= 300:
            dialog.ack(request, response)
            self.error = f"INVITE answered {response.status} {response.reason}"
            return
        dialog.ack(request, response)
        self.established = True
        if (response.content_type or "").split(";")[0].strip().lower() != "application/sdp":
            raise SiprecClientError(f"200 without an SDP answer ({response.content_type})")
        self.answers = read_answer(response.body, len(plan.streams))
        self._build_outbound()
        streams = [s for s in self.outbound if s is not None]
        if streams:
            self.media_start_tick = self.ctx.pacer.add(streams)
            hold = asyncio.create_task(self._hold()) if plan.hold else None
            try:
                await asyncio.gather(*(s.done for s in streams))
            finally:
                if hold is not None:
                    hold.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await hold
        else:
            self.error = "the recorder declined every stream"
        await self._bye_if_established()

    def _sdp(self, direction: str) -> bytes:
        self.sdp_version += 1
        sdp = build_offer_sdp(
            self.offered, address=self.ctx.local_host, session_id=self.sdp_session,
            session_version=self.sdp_version, direction=direction,
        )
        if self.dialog is not None:
            self.dialog.current_sdp = sdp
        return sdp

    def _build_outbound(self) -> None:
        plan = self.plan
        payloads = self.media.payloads
        overrides = self.media.overrides
        assert self.dialog is not None
        server_host = self.dialog.link.server[0]
        for i, (stream, answer) in enumerate(zip(plan.streams, self.answers, strict=True)):
            if answer.port == 0 or answer.payload_type is None:
                self.outbound.append(None)
                continue
            spec = codec_spec(stream.codec)
            key = self.keys[i]
            suite = find_suite(stream.srtp) if stream.srtp else None
            srtp = srtp_sender(suite, key) if suite is not None and key is not None else None
            impairment = (
                Impairment(plan.impairments, f"{self.index}:{i}") if plan.impairments else None
            )
            events = overrides[i]
            event_pt = answer.telephone_event_pt
            if events and event_pt is None:
                # The recorder did not take telephone-event: DTMF goes in-band only.
                events = {k: TickOverride(o.audio) for k, o in events.items()
                          if o.audio is not _REGULAR}
            rtp = RtpStream(
                payload_type=answer.payload_type,
                units=spec.rtp_units(plan.ptime_ms),
                payloads=payloads[i],
                ssrc=secrets.randbits(32),
                first_seq=secrets.randbits(16),
                first_timestamp=secrets.randbits(32),
                event_pt=event_pt if events else None,
                overrides=events,
            )
            self.outbound.append(
                _OutboundStream(
                    rtp, self.sockets[i], (server_host, answer.port), srtp, impairment,
                    frames=plan.frames(), ptime=plan.ptime_ms / 1000, stream_index=i,
                )
            )

    async def _hold(self) -> None:
        plan = self.plan
        assert plan.hold is not None and self.media_start_tick is not None
        start = self.ctx.pacer.time_of(self.media_start_tick)
        streams = [s for s in self.outbound if s is not None]
        await asyncio.sleep(max(0.0, start + plan.hold.start - time.monotonic()))
        for stream in streams:
            stream.rtp.hold()
        await self._reinvite("inactive")
        await asyncio.sleep(max(0.0, start + plan.hold.end - time.monotonic()))
        await self._reinvite("sendonly")
        for stream in streams:
            stream.rtp.resume()

    async def _reinvite(self, direction: str) -> None:
        assert self.dialog is not None
        request = self.dialog.state.request(
            "INVITE", body=self._sdp(direction), content_type="application/sdp"
        )
        response, exchange = await self.dialog.transact(request)
        self.reinvites.append(exchange)
        if response is not None:
            self.dialog.ack(request, response)

    async def _bye_if_established(self) -> None:
        dialog = self.dialog
        if dialog is None or not self.established or self.bye_sent or dialog.ended_by_server:
            return
        self.bye_sent = True
        response, self.bye = await dialog.transact(dialog.state.request("BYE"))
        if response is None:
            self.error = self.error or f"BYE not answered: {self.bye.reason}"
        elif response.status != 200:
            self.error = self.error or f"BYE answered {response.status} {response.reason}"

    def _hang_up_now(self) -> None:
        dialog = self.dialog
        if dialog is None or not self.established or self.bye_sent or dialog.ended_by_server:
            return
        # Cancelled: no time to wait for the answer, but the recorder should not keep
        # recording a call nobody will end.
        self.bye_sent = True
        dialog.link.send(dialog.state.request("BYE").to_bytes())

    def _report(self) -> CallReport:
        pacer = self.ctx.pacer
        reports = []
        last_tick = self.media_start_tick
        for i, stream in enumerate(self.plan.streams):
            out = self.outbound[i] if i < len(self.outbound) else None
            answer = self.answers[i] if i < len(self.answers) else None
            reports.append(self._stream_report(stream, i, out, answer))
            if out is not None and out.end_tick is not None:
                last_tick = max(last_tick or 0, out.end_tick)
        media_seconds = 0.0
        lateness = None
        if self.media_start_tick is not None and last_tick is not None:
            media_seconds = (last_tick - self.media_start_tick) * pacer.step
            late = pacer.lateness_between(self.media_start_tick, last_tick)
            lateness = None if late is None else late * 1000
        dtmf = sorted(
            (d for out in self.outbound if out is not None for d in out.dtmf),
            key=lambda d: d.sent_at,
        )
        ok = (
            self.error is None
            and self.invite is not None and self.invite.status == 200
            and self.bye is not None and self.bye.status == 200
            and all(r.status == 200 for r in self.reinvites)
        )
        return CallReport(
            index=self.index,
            call_id=self.dialog.call_id if self.dialog else "",
            session_id=self.session_id,
            transport=self.plan.transport,
            ok=ok,
            error=self.error,
            invite=self.invite,
            reinvites=tuple(self.reinvites),
            bye=self.bye,
            ended_by_server=bool(self.dialog and self.dialog.ended_by_server),
            streams=tuple(reports),
            dtmf=tuple(dtmf),
            started_at=self.started_wall,
            media_started_at=None if self.media_start_tick is None
            else self.started_wall + pacer.time_of(self.media_start_tick) - self.started,
            media_seconds=media_seconds,
            max_sender_lateness_ms=lateness,
        )

    def _stream_report(
        self, plan: StreamPlan, index: int, out: _OutboundStream | None,
        answer: AnsweredMedia | None,
    ) -> StreamReport:
        offered = self.offered[index] if index < len(self.offered) else None
        rtp = out.rtp if out else None
        imp = out.impairment if out else None
        return StreamReport(
            label=plan.label,
            codec=codec_spec(plan.codec).rtpmap,
            payload_type=answer.payload_type if answer else None,
            telephone_event_pt=rtp.event_pt if rtp else None,
            srtp_suite=out.srtp.suite.name if out and out.srtp else None,
            answered=out is not None,
            local_port=offered.port if offered else 0,
            remote=(self.dialog.link.server[0], answer.port)
            if answer and answer.port and self.dialog else None,
            answer_address=answer.address if answer else None,
            ssrc=rtp.ssrc if rtp else 0,
            first_seq=rtp.first_seq if rtp else 0,
            first_timestamp=rtp.first_timestamp if rtp else 0,
            audio_packets=rtp.audio_packets if rtp else 0,
            event_packets=rtp.event_packets if rtp else 0,
            dropped=imp.dropped if imp else 0,
            duplicated=imp.duplicated if imp else 0,
            reordered=imp.reordered if imp else 0,
            datagrams_sent=out.datagrams if out else 0,
            send_errors=out.errors if out else 0,
            first_packet_at=out.first_at if out else None,
            first_packet_after=None if out is None or out.first_at is None
            else out.first_at - self.started_wall,
        )


ServerAddress = tuple[str, int] | str
"""(host, port) or "HOST:PORT"."""


async def run_calls(
    server: ServerAddress | Mapping[str, ServerAddress],
    plans: Sequence[CallPlan],
    concurrency: int = 10,
    rate: float = 10.0,
    *,
    local_host: str | None = None,
    sip_timeout: float = 64 * T1,
    hard_timeout: float | None = None,
    phases: int = 4,
) -> RunReport:
    """Place every planned call against `server` and report what was sent.

    `server` is one address for every transport, or {"udp": ..., "tcp": ...} when the
    recorder listens on different ports. Calls start at `rate` per second, at most
    `concurrency` at a time. Every SIP message and every RTP packet goes to the server's
    host (RTP at the answered ports). `sip_timeout` bounds
    each transaction (RFC 3261 Timer B/F by default); `hard_timeout` bounds the whole run:
    calls still running then are cancelled (a BYE is sent without waiting) and reported as such.
    `phases` spreads the calls' packets over that many slots of the packet time (1 = every
    stream at once).
    """
    if concurrency < 1 or rate <= 0 or not 1 <= phases <= 20:
        raise SiprecClientError("concurrency must be >= 1, rate > 0, phases 1..20")
    for plan in plans:
        plan.validate()
    ptimes = {p.ptime_ms for p in plans}
    if len(ptimes) > 1:
        raise SiprecClientError("all calls of a run share one packet time")
    if isinstance(server, Mapping):
        servers = {transport: _resolve(address) for transport, address in server.items()}
    else:
        address = _resolve(server)
        servers = {"udp": address, "tcp": address}
    if not servers:
        raise SiprecClientError("no server address")
    # Every payload is encoded before the first call: encoding during the run would stall the
    # pacer and show up as the sender's own lateness.
    prepare0 = time.process_time()
    cache = _PayloadCache()
    prepared = [cache.prepare(plan) for plan in plans]
    prepare_cpu = time.process_time() - prepare0
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    pacer = _Pacer(ptimes.pop() if ptimes else 20, phases)
    ctx = _RunContext(
        servers=servers,
        local_host=local_host or _local_host_for(next(iter(servers.values()))),
        pacer=pacer,
        links={},
        sip_timeout=sip_timeout,
    )
    slots = asyncio.Semaphore(concurrency)
    tasks: list[asyncio.Task[CallReport]] = []

    async def one(index: int, plan: CallPlan) -> CallReport:
        try:
            return await _Call(index, plan, prepared[index], ctx).run()
        finally:
            slots.release()

    async def launch() -> None:
        for index, plan in enumerate(plans):
            await slots.acquire()
            delay = t0 + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index, plan)))

    launcher = asyncio.create_task(launch())
    deadline = None if hard_timeout is None else t0 + hard_timeout
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(launcher, None if deadline is None else deadline - time.monotonic())
    if tasks:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        _done, pending = await asyncio.wait(tasks, timeout=remaining)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)
    reports = [t.result() for t in tasks if t.done() and not t.cancelled()]
    await pacer.close()
    for link in ctx.links.values():
        await link.close()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return RunReport(
        calls=tuple(sorted(reports, key=lambda r: r.index)),
        sender=pacer.stats(),
        elapsed=time.monotonic() - t0,
        cpu_user=cpu1.ru_utime - cpu0.ru_utime,
        cpu_system=cpu1.ru_stime - cpu0.ru_stime,
        prepare_cpu=prepare_cpu,
    )
