"""The media of one recorded call: each stream's packets in, one time-aligned Ogg Opus byte
stream out, a channel per stream.

Built from plain data (`StreamSpec`), it knows nothing of SIP, sockets or the database. Time is
passed in (`now`, the caller's monotonic clock); the recording's time 0 is the first packet of
any stream, so the channels stay aligned and silence fills whatever a party did not send.
Pause/resume silences the recording from the moment it is asked for (so from the next packet
on), and every pause is kept as an interval of the recording's time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from siprec_server.media.codecs import RtpCodec
from siprec_server.media.dtmf import DtmfEvent
from siprec_server.media.dtmf_control import DtmfControl, DtmfSequenceDetector
from siprec_server.media.jitter import StreamStats, StreamTimeline
from siprec_server.media.ogg_opus import OggOpusEncoder
from siprec_server.media.srtp import (
    SrtpAuthError,
    SrtpError,
    SrtpReceiver,
    SrtpReplayError,
    srtp_receiver,
)
from siprec_server.media.srtp_suites import SrtpSuite

PLAYOUT_DELAY = 0.12
"""Seconds a packet may arrive after its place on the timeline and still be recorded."""
FLUSH_INTERVAL = 1.0
"""Seconds of audio between flushes of the encrypted file: a crash loses at most this."""


@dataclass(frozen=True, slots=True)
class SrtpSpec:
    suite: SrtpSuite
    key_salt: bytes = field(repr=False)
    """The offerer's master key || salt."""
    unencrypted_srtcp: bool = False
    mki: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One recorded m-line, as negotiated."""

    index: int
    """m-line index in the SDP."""
    channel: int
    """Channel of the recording it is written to."""
    codecs: Mapping[int, RtpCodec]
    """Payload type → codec: the chosen codec, telephone-event and comfort noise if offered."""
    telephone_event_pt: int | None = None
    srtp: SrtpSpec | None = None
    rtcp_mux: bool = False


@dataclass(slots=True)
class StreamCounters:
    """What the receive path saw besides the timeline's own statistics."""

    srtp_auth_failures: int = 0
    srtp_replays: int = 0
    srtp_other_failures: int = 0
    rtcp_packets: int = 0


@dataclass(frozen=True, slots=True)
class PauseInterval:
    start: float
    end: float | None
    source: str


@dataclass(frozen=True, slots=True)
class StreamReport:
    index: int
    channel: int
    stats: StreamStats
    counters: StreamCounters


@dataclass(frozen=True, slots=True)
class MediaReport:
    duration: float
    """Seconds of audio in the recording."""
    streams: tuple[StreamReport, ...]
    pauses: tuple[PauseInterval, ...]
    dtmf_events: int


class _Stream:
    __slots__ = ("spec", "timeline", "srtp", "counters")

    def __init__(self, spec: StreamSpec, rate: int) -> None:
        self.spec = spec
        self.timeline = StreamTimeline(
            spec.codecs,
            spec.telephone_event_pt,
            output_rate=rate,
            playout_delay=PLAYOUT_DELAY,
        )
        self.srtp: SrtpReceiver | None = _receiver(spec.srtp)
        self.counters = StreamCounters()


def _receiver(spec: SrtpSpec | None) -> SrtpReceiver | None:
    if spec is None:
        return None
    return srtp_receiver(
        spec.suite, spec.key_salt, unencrypted_srtcp=spec.unencrypted_srtcp, mki=spec.mki
    )


def recording_rate(specs: Sequence[StreamSpec]) -> int:
    """8 kHz for narrowband calls; 16 kHz when any party sends wideband audio."""
    wideband = {"G722", "OPUS"}
    for spec in specs:
        for codec in spec.codecs.values():
            if codec.name.upper() in wideband:
                return 16000
    return 8000


class CallMedia:
    def __init__(
        self,
        streams: Sequence[StreamSpec],
        channels: int,
        sink: Callable[[bytes], None],
        flush_sink: Callable[[], None],
        *,
        rate: int | None = None,
        dtmf_control: DtmfControl | None = None,
    ) -> None:
        self.rate = rate or recording_rate(streams)
        self.channels = channels
        self._streams: dict[int, _Stream] = {s.index: _Stream(s, self.rate) for s in streams}
        self._encoder = OggOpusEncoder(channels, self.rate, sink)
        self._flush_sink = flush_sink
        self._origin: float | None = None
        self._pulled = 0.0
        self._last_flush = 0.0
        self._pauses: list[PauseInterval] = []
        self._paused_by: dict[str, float] = {}
        self._dtmf: list[DtmfEvent] = []
        self._dtmf_count = 0
        self._dtmf_detector = DtmfSequenceDetector(dtmf_control) if dtmf_control else None
        self.last_packet: float | None = None
        """The caller's clock at the last datagram of any stream (for inactivity timeouts)."""
        self.closed = False

    # ---------------------------------------------------------------- packets

    def receive_rtp(self, index: int, data: bytes, now: float) -> None:
        stream = self._streams.get(index)
        if stream is None:
            return
        self.last_packet = now
        if stream.spec.rtcp_mux and len(data) > 1 and 192 <= data[1] <= 223:
            self._rtcp(stream, data)
            return
        if stream.srtp is not None:
            try:
                data = stream.srtp.unprotect_rtp(data)
            except SrtpError as exc:
                _count_srtp_failure(stream.counters, exc)
                return
        if self._origin is None:
            self._origin = now
        stream.timeline.push(data, now - self._origin)

    def receive_rtcp(self, index: int, data: bytes) -> None:
        stream = self._streams.get(index)
        if stream is not None:
            self._rtcp(stream, data)

    def _rtcp(self, stream: _Stream, data: bytes) -> None:
        # Reports are counted (and authenticated when SRTCP), not recorded.
        if stream.srtp is not None:
            try:
                stream.srtp.unprotect_rtcp(data)
            except SrtpError as exc:
                _count_srtp_failure(stream.counters, exc)
                return
        stream.counters.rtcp_packets += 1

    # ---------------------------------------------------------------- control

    def recording_time(self, now: float) -> float | None:
        """Seconds since the recording's first packet, None before it."""
        return None if self._origin is None else max(0.0, now - self._origin)

    def pause(self, now: float, source: str) -> bool:
        """Silence the recording from now on. False if `source` already paused it."""
        return self._pause_at(self.recording_time(now) or 0.0, source)

    def resume(self, now: float, source: str) -> bool:
        return self._resume_at(self.recording_time(now) or 0.0, source)

    def _pause_at(self, at: float, source: str) -> bool:
        if source in self._paused_by:
            return False
        self._paused_by[source] = at
        return True

    def _resume_at(self, at: float, source: str) -> bool:
        start = self._paused_by.pop(source, None)
        if start is None:
            return False
        self._pauses.append(PauseInterval(start, max(start, at), source))
        return True

    @property
    def paused(self) -> bool:
        return bool(self._paused_by)

    def update_streams(self, streams: Sequence[StreamSpec]) -> list[int]:
        """A re-INVITE changed the media: new keys or codecs for known m-lines keep their
        timeline position; m-lines no longer offered stop. Returns m-line indexes that could not
        be given a channel (added after the recording started, so not recorded)."""
        unrecorded: list[int] = []
        for spec in streams:
            current = self._streams.get(spec.index)
            if current is None:
                unrecorded.append(spec.index)
                continue
            if spec.srtp != current.spec.srtp:
                current.srtp = _receiver(spec.srtp)
            if dict(spec.codecs) != dict(current.spec.codecs):
                old = current.timeline
                current.timeline = StreamTimeline(
                    spec.codecs, spec.telephone_event_pt, output_rate=self.rate,
                    playout_delay=PLAYOUT_DELAY,
                )
                # The new timeline starts where the old one was pulled to.
                current.timeline.pull(self._pulled)
                current.timeline.stats = old.stats
            current.spec = spec
        return unrecorded

    # ---------------------------------------------------------------- encoding

    def tick(self, now: float) -> None:
        """Encode everything whose playout time has come."""
        if self._origin is None or self.closed:
            return
        self._advance(now - self._origin - PLAYOUT_DELAY)

    def _advance(self, until: float) -> None:
        if until <= self._pulled:
            return
        start = self._pulled
        n = round(until * self.rate) - round(start * self.rate)
        if n <= 0:
            return
        pcm = np.zeros((n, self.channels), dtype=np.int16)
        for stream in self._streams.values():
            block = stream.timeline.pull(until)
            channel = stream.spec.channel
            if 0 <= channel < self.channels and len(block) == n:
                if self.channels == 1:
                    pcm[:, 0] = block
                else:
                    pcm[:, channel] = block
            events = stream.timeline.drain_events()
            if events:
                self._dtmf.extend(events)
                self._apply_dtmf_control(events)
        self._silence_pauses(pcm, start, until)
        self._pulled = until
        self._encoder.encode(pcm)
        if until - self._last_flush >= FLUSH_INTERVAL:
            self.flush()

    def _apply_dtmf_control(self, events: list[DtmfEvent]) -> None:
        # Before the block is encoded, so the pause covers everything after the sequence.
        if self._dtmf_detector is None:
            return
        for event in events:
            found = self._dtmf_detector.feed(event)
            if found is None:
                continue
            action, at = found
            if action == "pause":
                self._pause_at(at, "dtmf")
            else:
                self._resume_at(at, "dtmf")

    def flush(self) -> None:
        self._encoder.flush()
        self._flush_sink()
        self._last_flush = self._pulled

    def _silence_pauses(self, pcm: np.ndarray, start: float, until: float) -> None:
        spans = [(p.start, p.end if p.end is not None else until) for p in self._pauses]
        spans.extend((begin, until) for begin in self._paused_by.values())
        base = round(start * self.rate)
        for begin, end in spans:
            if end <= start or begin >= until:
                continue
            lo = max(0, round(begin * self.rate) - base)
            hi = min(len(pcm), round(end * self.rate) - base)
            pcm[lo:hi] = 0

    def take_dtmf_events(self) -> list[DtmfEvent]:
        """Key presses since the last call (digits stay in memory only, for control logic)."""
        events, self._dtmf = self._dtmf, []
        self._dtmf_count += len(events)
        return events

    def close(self, now: float) -> MediaReport:
        """Drain every stream up to now, finish the Ogg stream. Idempotent."""
        if not self.closed:
            if self._origin is not None:
                self._advance(now - self._origin)
                for source in list(self._paused_by):
                    self.resume(now, source)
            self.take_dtmf_events()
            self._encoder.close()
            self._flush_sink()
            self.closed = True
        return MediaReport(
            duration=self._pulled,
            streams=self.stream_reports(),
            pauses=tuple(self._pauses),
            dtmf_events=self._dtmf_count,
        )

    def stream_reports(self) -> tuple[StreamReport, ...]:
        """Each stream's statistics so far (live; the same objects close() reports)."""
        return tuple(
            StreamReport(s.spec.index, s.spec.channel, s.timeline.stats, s.counters)
            for s in self._streams.values()
        )


def _count_srtp_failure(counters: StreamCounters, exc: SrtpError) -> None:
    if isinstance(exc, SrtpAuthError):
        counters.srtp_auth_failures += 1
    elif isinstance(exc, SrtpReplayError):
        counters.srtp_replays += 1
    else:
        counters.srtp_other_failures += 1
