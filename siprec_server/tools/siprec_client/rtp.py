"""The RTP packets of one stream, sans-IO: headers, timestamps on a running media clock,
RFC 4733 telephone events with their in-band audio, and seeded network impairments.

Nothing here has a clock or a socket: a stream is asked for the packets of tick k, and the
impairment for the datagrams to send for a packet. SRTP protection happens in between, at the
edge (pacer.py), so impairments act on what the network really carries.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np

from siprec_server.tools.siprec_client.errors import SiprecClientError
from siprec_server.tools.siprec_client.payloads import PayloadEncoder, codec_spec, dtmf_tone

if TYPE_CHECKING:
    from siprec_server.tools.siprec_client.plan import CallPlan, Impairments


DTMF_VOLUME: Final = 10
"""Telephone-event power level in -dBm0 (RFC 4733 2.3.4)."""
DTMF_END_REPEATS: Final = 3
"""The end packet of an event is sent this many times (RFC 4733 2.5.1.4)."""
_RTP_HEADER: Final = struct.Struct("!BBHII")
_MAX_EVENT_DURATION: Final = 0xFFFF


EVENT_CODES: Final[Mapping[str, int]] = {d: i for i, d in enumerate("0123456789*#ABCD")}


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


REGULAR_AUDIO: Final = b"\x00regular"
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
        code = EVENT_CODES[digit.digit]
        tone = PayloadEncoder(spec, plan.ptime_ms) if encoded else None
        for i in range(ticks + DTMF_END_REPEATS - 1):
            end = i >= ticks - 1
            payload = telephone_event_payload(
                code, end=end, volume=DTMF_VOLUME, duration=min(i + 1, ticks) * units
            )
            audio: bytes | None
            if i >= ticks:
                audio = REGULAR_AUDIO
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
            if audio is REGULAR_AUDIO:
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
