"""A call as plain data: the streams and their parties, codecs and SRTP suites, DTMF key
presses, hold, network impairments. `CallPlan.validate` says what cannot be carried out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from siprec_server.media.srtp_suites import find_suite
from siprec_server.tools.siprec_client.errors import SiprecClientError
from siprec_server.tools.siprec_client.payloads import PTIMES, AudioSource, codec_spec
from siprec_server.tools.siprec_client.rtp import EVENT_CODES, dtmf_overrides


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
            if self.ptime_ms not in PTIMES[spec.name]:
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
            if digit.digit not in EVENT_CODES:
                raise SiprecClientError(f"not a DTMF key: {digit.digit!r}")
            if not 0 <= digit.stream < len(self.streams):
                raise SiprecClientError(f"DTMF on stream {digit.stream}: no such stream")
        # The overrides builder checks overlaps and lengths.
        for index in range(len(self.streams)):
            dtmf_overrides(self, index, encoded=False)
