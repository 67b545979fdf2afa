"""The media of one recorded call: each stream's packets in, one time-aligned Ogg Opus byte
stream out, a channel per stream.

Built from plain data (`StreamSpec`), it knows nothing of SIP, sockets or the database. Time is
passed in (`now`, the caller's monotonic clock), and so is each datagram's source address.

Time 0 of the recording is the start of the session's media (`started`, just after the answer),
for every call, not the first packet: a compliance recording's timeline is the session's, so a
party whose first packet comes late leaves leading silence, pause offsets are offsets into the
session, and a session whose streams never delivered a packet still yields a recording as long
as the session (silence), flagged `no_media` in the report instead of a 0-second file that
looks like a good one. Silence fills whatever a party did not send.

What gets in: each stream accepts datagrams only from the sources its `SourceFilter` allows
(policy from the configuration, addresses from the SDP offer), decrypts SRTP, and records one
SSRC at a time (`SsrcLock`). Packets refused on the way are counted per stream
(`StreamCounters`) and never reset the inactivity clock (`last_packet`).

Pause/resume silences the recording from the moment it is asked for (so from the next packet
on), and every pause is kept as an interval of the recording's time. Key sequences pause and
resume only from streams whose spec allows it (`dtmf_control`), each stream with its own
sequence detector. Every pause and resume is reported as an event (`take_events`), so the
caller can audit it; the core does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from siprec_server.media.codecs import RtpCodec
from siprec_server.media.dtmf import DtmfEvent
from siprec_server.media.dtmf_control import DtmfControl, DtmfSequenceDetector
from siprec_server.media.events import MediaEvent, RecordingPaused, RecordingResumed
from siprec_server.media.jitter import StreamStats, StreamTimeline
from siprec_server.media.ogg_opus import OggOpusEncoder
from siprec_server.media.peaks import PeakMeter, Peaks
from siprec_server.media.rtp import RtpFormatError, parse_rtp_header
from siprec_server.media.source import (
    Address,
    RtpSourcePolicy,
    SourceFilter,
    SourceVerdict,
    SsrcLock,
)
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
    remote_address: str | None = None
    """The offer's c= address for this m-line as an IP literal (`source.offer_address`); None
    when the offer named none usable."""
    remote_port: int | None = None
    """The offered RTP port."""
    remote_rtcp_port: int | None = None
    """The offered RTCP port (a=rtcp, else RTP + 1); None with rtcp-mux."""
    dtmf_control: bool = True
    """Whether key sequences on this stream may pause and resume the recording."""

    def same_media(self, other: StreamSpec) -> bool:
        """Whether `other` describes the same sender and coding (a new offer that changes
        none of these does not let a new SSRC in)."""
        return (
            self.remote_address == other.remote_address
            and self.remote_port == other.remote_port
            and self.remote_rtcp_port == other.remote_rtcp_port
            and self.srtp == other.srtp
            and self.rtcp_mux == other.rtcp_mux
            and dict(self.codecs) == dict(other.codecs)
            and self.telephone_event_pt == other.telephone_event_pt
        )


@dataclass(slots=True)
class StreamCounters:
    """What the receive path saw besides the timeline's own statistics."""

    srtp_auth_failures: int = 0
    srtp_replays: int = 0
    srtp_other_failures: int = 0
    rtcp_packets: int = 0
    foreign_source: int = 0
    """RTP and RTCP datagrams from an address the stream does not accept, dropped."""
    foreign_ssrc: int = 0
    """Packets (authenticated, from the right source) of an SSRC other than the locked one,
    dropped."""


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
    """Seconds of audio in the recording (from the start of the session's media)."""
    streams: tuple[StreamReport, ...]
    pauses: tuple[PauseInterval, ...]
    dtmf_events: int
    no_media: bool = False
    """No stream delivered a single accepted packet: the recording is silence throughout."""
    peaks: Peaks | None = None
    """Each channel's level per 50 ms and the key presses' times (siprec_server.media.peaks)."""


class _Stream:
    __slots__ = ("spec", "timeline", "srtp", "counters", "sources", "ssrc", "detector")

    def __init__(self, spec: StreamSpec, rate: int, policy: RtpSourcePolicy,
                 control: DtmfControl | None) -> None:
        self.spec = spec
        self.timeline = StreamTimeline(
            spec.codecs,
            spec.telephone_event_pt,
            output_rate=rate,
            playout_delay=PLAYOUT_DELAY,
        )
        self.srtp: SrtpReceiver | None = _receiver(spec.srtp)
        self.counters = StreamCounters()
        self.sources = _source_filter(spec, policy)
        self.ssrc = SsrcLock()
        self.detector: DtmfSequenceDetector | None = None
        self.set_control(control)

    def set_control(self, control: DtmfControl | None) -> None:
        if control is None or not self.spec.dtmf_control:
            self.detector = None
        elif self.detector is None:
            self.detector = DtmfSequenceDetector(control)


def _source_filter(spec: StreamSpec, policy: RtpSourcePolicy) -> SourceFilter:
    rtcp_port = spec.remote_port if spec.rtcp_mux else spec.remote_rtcp_port
    return SourceFilter(policy, spec.remote_address, spec.remote_port, rtcp_port)


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
        started: float,
        rate: int | None = None,
        dtmf_control: DtmfControl | None = None,
        source_policy: RtpSourcePolicy = "any",
    ) -> None:
        """`started` is the caller's clock when the session's media began: time 0 of the
        recording. `source_policy` says which source addresses each stream accepts
        (siprec_server.media.source)."""
        self.rate = rate or recording_rate(streams)
        self.channels = channels
        self._policy: RtpSourcePolicy = source_policy
        self._control = dtmf_control
        self._streams: dict[int, _Stream] = {
            s.index: _Stream(s, self.rate, source_policy, dtmf_control) for s in streams
        }
        self._encoder = OggOpusEncoder(channels, self.rate, sink)
        self._peaks = PeakMeter(channels, self.rate)
        self._flush_sink = flush_sink
        self._origin = started
        self._pulled = 0.0
        self._last_flush = 0.0
        self._pauses: list[PauseInterval] = []
        self._paused_by: dict[str, float] = {}
        self._events: list[MediaEvent] = []
        self._dtmf: list[DtmfEvent] = []
        self._dtmf_count = 0
        self.last_packet: float | None = None
        """The caller's clock at the last accepted packet of any stream (source allowed,
        authenticated, of the locked SSRC): the inactivity clock. Refused packets never
        touch it, so a stranger cannot keep a dead session alive."""
        self.closed = False

    # ---------------------------------------------------------------- packets

    def receive_rtp(self, index: int, data: bytes, now: float,
                    source: Address | None = None) -> None:
        """One datagram on the RTP port of m-line `index` from `source` (None: unknown,
        accepted only under the "any" policy)."""
        stream = self._streams.get(index)
        if stream is None:
            return
        rtcp = stream.spec.rtcp_mux and len(data) > 1 and 192 <= data[1] <= 223
        verdict = stream.sources.check(source, rtcp=rtcp)
        if verdict is SourceVerdict.FOREIGN:
            stream.counters.foreign_source += 1
            return
        if rtcp:
            self._rtcp(stream, data, now, source, verdict)
            return
        if stream.srtp is not None:
            try:
                data = stream.srtp.unprotect_rtp(data)
            except SrtpError as exc:
                _count_srtp_failure(stream.counters, exc)
                return
        try:
            marker, pt, seq, ts, ssrc, start, end = parse_rtp_header(data)
        except RtpFormatError:
            stream.timeline.stats.bad_packets += 1
            return
        if not stream.ssrc.admit(ssrc, now):
            stream.counters.foreign_ssrc += 1
            return
        if verdict is SourceVerdict.UNLATCHED:
            stream.sources.latch(source)
        self.last_packet = now
        stream.timeline.push_fields(marker, pt, seq, ts, ssrc, data[start:end], now - self._origin)

    def receive_rtcp(self, index: int, data: bytes, now: float,
                     source: Address | None = None) -> None:
        """One datagram on the RTCP port of m-line `index`."""
        stream = self._streams.get(index)
        if stream is None:
            return
        verdict = stream.sources.check(source, rtcp=True)
        if verdict is SourceVerdict.FOREIGN:
            stream.counters.foreign_source += 1
            return
        self._rtcp(stream, data, now, source, verdict)

    def _rtcp(self, stream: _Stream, data: bytes, now: float, source: Address | None,
              verdict: SourceVerdict) -> None:
        # Reports are counted (and authenticated when SRTCP), not recorded.
        if stream.srtp is not None:
            try:
                stream.srtp.unprotect_rtcp(data)
            except SrtpError as exc:
                _count_srtp_failure(stream.counters, exc)
                return
        elif len(data) < 8 or data[0] & 0xC0 != 0x80:
            stream.timeline.stats.bad_packets += 1
            return
        if verdict is SourceVerdict.UNLATCHED:
            stream.sources.latch(source, rtcp=True)
        stream.counters.rtcp_packets += 1
        self.last_packet = now

    # ---------------------------------------------------------------- control

    def recording_time(self, now: float) -> float:
        """Seconds since the start of the session's media."""
        return max(0.0, now - self._origin)

    def pause(self, now: float, source: str) -> bool:
        """Silence the recording from now on. False if `source` already paused it."""
        return self._pause_at(self.recording_time(now), source)

    def resume(self, now: float, source: str) -> bool:
        return self._resume_at(self.recording_time(now), source)

    def _pause_at(self, at: float, source: str, stream: int | None = None) -> bool:
        if source in self._paused_by:
            return False
        self._paused_by[source] = at
        self._events.append(RecordingPaused(source, at, stream))
        return True

    def _resume_at(self, at: float, source: str, stream: int | None = None, *,
                   report: bool = True) -> bool:
        start = self._paused_by.pop(source, None)
        if start is None:
            return False
        end = max(start, at)
        self._pauses.append(PauseInterval(start, end, source))
        if report:
            self._events.append(RecordingResumed(source, end, stream))
        return True

    @property
    def paused(self) -> bool:
        return bool(self._paused_by)

    def take_events(self) -> list[MediaEvent]:
        """Pause and resume transitions since the last call, in order."""
        events, self._events = self._events, []
        return events

    def update_streams(self, streams: Sequence[StreamSpec]) -> list[int]:
        """A re-INVITE or UPDATE changed the session: new keys or codecs for known m-lines keep
        their timeline position; a new sender address moves the source check (and re-latches);
        a stream whose media changed accepts a new SSRC at once; who may key pause sequences
        follows the metadata. Returns m-line indexes that could not be given a channel (added
        after the recording started, so not recorded)."""
        unrecorded: list[int] = []
        for spec in streams:
            current = self._streams.get(spec.index)
            if current is None:
                unrecorded.append(spec.index)
                continue
            old = current.spec
            if spec.remote_address is None and old.remote_address is not None:
                # c=0.0.0.0 (hold, RFC 2543 style) or a host name: the sender is still the
                # one the earlier offer named.
                spec = replace(spec, remote_address=old.remote_address)
            if not spec.same_media(old):
                current.ssrc.reset()
            if (spec.remote_address, spec.remote_port, spec.remote_rtcp_port, spec.rtcp_mux) != (
                    old.remote_address, old.remote_port, old.remote_rtcp_port, old.rtcp_mux):
                current.sources = _source_filter(spec, self._policy)
            if spec.srtp != old.srtp:
                current.srtp = _receiver(spec.srtp)
            if dict(spec.codecs) != dict(old.codecs):
                timeline = current.timeline
                current.timeline = StreamTimeline(
                    spec.codecs, spec.telephone_event_pt, output_rate=self.rate,
                    playout_delay=PLAYOUT_DELAY,
                )
                # The new timeline starts where the old one was pulled to.
                current.timeline.pull(self._pulled)
                current.timeline.stats = timeline.stats
            current.spec = spec
            current.set_control(self._control)
        return unrecorded

    # ---------------------------------------------------------------- encoding

    def tick(self, now: float) -> None:
        """Encode everything whose playout time has come."""
        if self.closed:
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
                for event in events:
                    self._peaks.key_press(event.start, channel)
                self._apply_dtmf_control(stream, events)
        self._silence_pauses(pcm, start, until)
        self._pulled = until
        self._encoder.encode(pcm)
        self._peaks.feed(pcm)
        if until - self._last_flush >= FLUSH_INTERVAL:
            self.flush()

    def _apply_dtmf_control(self, stream: _Stream, events: list[DtmfEvent]) -> None:
        # Before the block is encoded, so the pause covers everything after the sequence.
        # Key presses on streams without control are still blanked, they just do not act.
        detector = stream.detector
        if detector is None:
            return
        for event in events:
            found = detector.feed(event)
            if found is None:
                continue
            action, at = found
            if action == "pause":
                self._pause_at(at, "dtmf", stream.spec.index)
            else:
                self._resume_at(at, "dtmf", stream.spec.index)

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

    @property
    def no_media(self) -> bool:
        """No stream has delivered an accepted packet yet."""
        return not any(s.timeline.stats.received for s in self._streams.values())

    def close(self, now: float) -> MediaReport:
        """Drain every stream up to now, finish the Ogg stream. Idempotent. Pauses still open
        end here without a resume event (the recording ended, nobody resumed it)."""
        if not self.closed:
            self._advance(now - self._origin)
            at = self.recording_time(now)
            for source in list(self._paused_by):
                self._resume_at(at, source, report=False)
            self.take_dtmf_events()
            self._encoder.close()
            self._flush_sink()
            self.closed = True
        return MediaReport(
            duration=self._pulled,
            streams=self.stream_reports(),
            pauses=tuple(self._pauses),
            dtmf_events=self._dtmf_count,
            no_media=self.no_media,
            peaks=self._peaks.finish(),
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
