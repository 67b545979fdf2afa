"""The receive path of one recorded RTP stream: packets in, PCM on the recording's timeline out.

`StreamTimeline` is sans-IO: the caller passes the session clock (seconds since the call's first
packet) with every packet and every pull. It reorders packets, maps each one to the recording
timeline and, at pull time, decodes the ready ones in batches, leaves silence wherever nothing
arrived, blanks DTMF key presses and resamples to the recording rate.

## Timing contract

- A source's first packet anchors it: its RTP timestamp is placed at its arrival time. Later
  packets are placed by their RTP timestamp relative to that anchor, so jitter does not move
  audio, and DTX, hold or a stopped stream leave silence of the right length.
- `pull(until)` returns exactly the samples of [end of the previous pull, until) at
  `output_rate`: every pull together always total round(until * output_rate). What it returns
  is final; a packet whose audio was already pulled is counted `late` and dropped. The caller
  therefore pulls `now - playout_delay`, which lets packets arrive up to `playout_delay` after
  their place on the timeline; at the end of the call it pulls the end time to drain.
- The anchor is moved (counted in `reanchors`) when the sender's timestamps stop matching the
  arrival clock: a marker packet or a backwards timestamp more than `playout_delay` off, a
  packet more than a second early, ten on-pace packets more than a second late, or sender clock
  drift that moved the earliest arrivals of two successive 50-packet windows by more than half
  the playout delay. A new SSRC gets its own anchor at its first packet (counted in `ssrc_changes`).

The per-packet path (`push`) parses the header, tracks sequence numbers and appends a tuple;
all numpy work happens in `pull`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Final

import numpy as np
import numpy.typing as npt

from .codecs import (
    AudioDecoder,
    CodecError,
    Payload,
    Pcm,
    Resampler,
    RtpCodec,
    decoder_for,
    resample,
)
from .dtmf import (
    DtmfEvent,
    DtmfFormatError,
    EventEnded,
    EventStarted,
    TelephoneEventTracker,
    digit_for,
    parse_telephone_event,
)
from .errors import MediaError
from .rtp import RtpFormatError, RtpPacket, parse_rtp_header

__all__ = ["StreamStats", "StreamTimeline", "TimelineError"]

_SEQ_WINDOW: Final = 512
"""Sequence numbers behind the newest one that are still checked for duplicates."""
_SEQ_WINDOW_MASK: Final = (1 << _SEQ_WINDOW) - 1
_MAX_DROPOUT: Final = 3000
"""RFC 3550 A.1: a forward sequence jump larger than this needs a second packet to confirm."""
_MAX_MISORDER: Final = 100
"""RFC 3550 A.1: a packet further behind than this is stale, or a restart to confirm."""
_DRIFT_WINDOW: Final = 50
"""In-order audio packets over which the earliest arrival offset is measured."""
_FAST_WINDOW: Final = 10
"""On-pace packets all more than a second late that re-anchor without waiting for a window."""
_JUMP: Final = 1.0
"""Seconds between a packet's place and its arrival that can only be a timestamp jump."""
_MAX_SOURCES: Final = 8
"""SSRCs remembered per stream (a flapping or hostile sender cannot grow this)."""
_DTMF_GUARD_BEFORE: Final = 0.02
_DTMF_GUARD_AFTER: Final = 0.04
"""Audio blanked around a key press, seconds: detectors report a tone late, tails ring on."""
_DTMF_FADE: Final = 0.005
"""Seconds over which audio fades out into a blank and back in after it: a hard cut is a click
whose energy spreads across the spectrum (far enough to look like a key tone to a detector)."""
_DTMF_UPDATE_GAP: Final = 0.06
"""An event whose end packet never came may have lasted one update interval (50 ms, RFC 4733
2.5.1.2) beyond its last known duration; its blank covers that too."""
_DTMF_OPEN_TIMEOUT: Final = 1.0
"""Seconds of timeline past an open event's last known end before it is taken as ended."""
_AUDIO, _EVENT, _SILENT = 0, 1, 2


class TimelineError(MediaError, ValueError):
    """A pull was asked for a time that is not a finite number."""


@dataclass(slots=True)
class StreamStats:
    """Counters of one stream's receive path; plain integers, updated in place."""

    received: int = 0
    """Packets accepted (not duplicates, not malformed), audio and telephone events alike."""
    decoded: int = 0
    """Audio payloads decoded into the recording."""
    lost: int = 0
    """Packets expected from the sequence numbers minus packets received (RFC 3550 A.3)."""
    late: int = 0
    """Packets that came after their audio had already been pulled, dropped."""
    duplicates: int = 0
    """Packets whose sequence number was already received, dropped."""
    reanchors: int = 0
    """Times the timestamp-to-timeline mapping was moved (jumps, drift)."""
    ssrc_changes: int = 0
    """New SSRCs after the first."""
    bad_packets: int = 0
    """Datagrams that are not RTP (or are RTCP), broken telephone events, unconfirmed jumps."""
    dtmf_events: int = 0
    """Key presses reported through drain_events()."""
    unknown_payload_types: int = 0
    """Packets of a payload type the SDP did not map to a decodable codec, dropped."""
    corrupt_payloads: int = 0
    """Audio payloads the decoder rejected, recorded as silence."""
    overflow: int = 0
    """Packets too far ahead of the timeline (beyond max_buffer) or beyond the packet cap."""


class _Source:
    """Sequence and timing state of one SSRC within the stream."""

    __slots__ = (
        "ssrc",
        "max_seq",
        "seen",
        "bad_seq",
        "ref_ts",
        "ref_pos",
        "last_ts",
        "win_count",
        "win_min",
        "win_max",
        "prev_min",
        "events",
        "open_blank",
    )

    def __init__(self, ssrc: int, seq: int, ts: int, pos: int) -> None:
        self.ssrc = ssrc
        self.max_seq = seq
        self.seen = 1
        self.bad_seq = -1
        self.ref_ts = ts
        self.ref_pos = pos
        self.last_ts = ts
        self.win_count = 0
        self.win_min = math.inf
        self.win_max = -math.inf
        self.prev_min: float | None = None
        self.events = TelephoneEventTracker()
        self.open_blank: list[int] | None = None

    def reset_window(self) -> None:
        self.win_count = 0
        self.win_min = math.inf
        self.win_max = -math.inf


class StreamTimeline:
    """Reorder buffer, decoder and DTMF blanker for one recorded RTP stream (one m-line).

    `codecs` maps payload types to the SDP's codecs; entries named telephone-event count as
    `telephone_event_pt`, entries without a decoder are ignored (their packets are counted in
    `unknown_payload_types`). The stream's internal rate is that of its first decodable codec.
    """

    def __init__(
        self,
        codecs: Mapping[int, RtpCodec],
        telephone_event_pt: int | None = None,
        output_rate: int = 8000,
        playout_delay: float = 0.12,
        max_buffer: float = 2.0,
        telephone_event_rate: int | None = None,
    ) -> None:
        self.stats = StreamStats()
        self.output_rate = output_rate
        self.playout_delay = min(max(playout_delay, 0.02), 2.0)
        max_buffer = min(max(max_buffer, self.playout_delay + 0.5), 60.0)

        decoders: dict[int, AudioDecoder] = {}
        event_pt = telephone_event_pt
        for pt, codec in codecs.items():
            if codec.name.lower() == "telephone-event":
                if event_pt is None:
                    event_pt = pt
                    telephone_event_rate = telephone_event_rate or codec.clock_rate
                continue
            try:
                decoders[pt] = decoder_for(
                    codec.name, codec.clock_rate, codec.channels, codec.fmtp, output_rate
                )
            except CodecError:
                continue
        primary = next((d for d in decoders.values() if d.name != "CN"), None)
        self.rate = primary.audio_rate if primary is not None else output_rate
        """Internal timeline rate: the primary codec's audio rate."""
        rate = self.rate
        # Per payload type: (kind, decoder, num, den) with timeline samples = RTP ticks*num/den.
        self._payload_types: dict[int, tuple[int, AudioDecoder | None, int, int]] = {}
        for pt, decoder in decoders.items():
            g = math.gcd(rate, decoder.clock_rate)
            kind = _SILENT if decoder.name == "CN" else _AUDIO
            self._payload_types[pt] = (kind, decoder, rate // g, decoder.clock_rate // g)
        if event_pt is not None:
            clock = telephone_event_rate or (primary.clock_rate if primary else rate)
            g = math.gcd(rate, clock)
            self._payload_types[event_pt] = (_EVENT, None, rate // g, clock // g)
            self._event_clock = clock

        self._resampler = Resampler(rate, output_rate)
        self._jump = int(_JUMP * rate)
        self._delay_samples = int(self.playout_delay * rate)
        self._max_ahead = int(max_buffer * rate)
        self._max_packets = max(256, int(max_buffer * 500))
        self._guard_before = int(_DTMF_GUARD_BEFORE * rate)
        self._guard_after = int(_DTMF_GUARD_AFTER * rate)
        fade = max(1, int(_DTMF_FADE * rate))
        self._fade_out = (0.5 + 0.5 * np.cos(np.pi * np.arange(1, fade + 1) / (fade + 1)))
        self._fade_in = self._fade_out[::-1].copy()
        self._update_gap = int(_DTMF_UPDATE_GAP * rate)
        self._open_timeout = int(_DTMF_OPEN_TIMEOUT * rate)

        self._sources: dict[int, _Source] = {}
        self._current: _Source | None = None
        self._pending: list[tuple[int, int, Payload]] = []
        self._carry: list[tuple[int, Pcm]] = []
        self._rendered = 0
        self._pulled = 0
        # DTMF blanks: [start, end or -1 while open, known end so far, ssrc, event timestamp]
        self._blanks: list[list[int]] = []
        self._events: list[DtmfEvent] = []

    # --- per packet ------------------------------------------------------------------------

    def push(self, packet: RtpPacket | Payload, arrival: float) -> None:
        """Take one RTP packet that arrived at `arrival` (session seconds). Never raises."""
        if isinstance(packet, RtpPacket):
            self.push_fields(packet.marker, packet.payload_type, packet.sequence_number,
                             packet.timestamp, packet.ssrc, packet.payload, arrival)
            return
        try:
            marker, pt, seq, ts, ssrc, start, end = parse_rtp_header(packet)
        except RtpFormatError:
            self.stats.bad_packets += 1
            return
        self.push_fields(marker, pt, seq, ts, ssrc, packet[start:end], arrival)

    def push_fields(self, marker: bool, pt: int, seq: int, ts: int, ssrc: int,
                    payload: Payload, arrival: float) -> None:
        """`push` of a packet whose header the caller already parsed (the per-packet path
        parses each header once)."""
        stats = self.stats
        if marker and 64 <= pt <= 95:
            # RTCP on a muxed port (RFC 5761 4): not ours to decode.
            stats.bad_packets += 1
            return
        if type(payload) is not bytes:
            # Never keep a view into a receive buffer the caller may reuse.
            payload = bytes(payload)
        if not -1e9 < arrival < 1e9:  # also rejects NaN
            stats.bad_packets += 1
            return

        src = self._current
        fresh = False
        if src is None or src.ssrc != ssrc:
            # Another sender: a new one gets its own anchor, a known one (two senders
            # interleaving) keeps its own.
            known = self._sources.get(ssrc)
            if known is None:
                src = self._new_source(ssrc, seq, ts, pt, payload, arrival)
                fresh = True
            else:
                src = known
            self._current = src
        if fresh:
            newest = True
        else:
            delta = (seq - src.max_seq) & 0xFFFF
            if 0 < delta <= _MAX_DROPOUT:
                stats.lost += delta - 1
                src.seen = ((src.seen << delta) | 1) & _SEQ_WINDOW_MASK
                src.max_seq = seq
                newest = True
            elif delta == 0:
                stats.duplicates += 1
                return
            else:
                back = 0x10000 - delta
                if back <= _MAX_MISORDER:
                    bit = 1 << back
                    if src.seen & bit:
                        stats.duplicates += 1
                        return
                    src.seen |= bit
                    stats.lost -= 1
                    newest = False
                elif seq == src.bad_seq:
                    # Second packet of a sequence restart (RFC 3550 A.1): follow it.
                    src.max_seq = seq
                    src.seen = 1
                    src.bad_seq = -1
                    newest = True
                else:
                    src.bad_seq = (seq + 1) & 0xFFFF
                    stats.bad_packets += 1
                    return
        stats.received += 1

        entry = self._payload_types.get(pt)
        if entry is None:
            stats.unknown_payload_types += 1
            return
        kind, decoder, num, den = entry
        if kind == _EVENT:
            self._telephone_event(src, ts, payload, num, den)
            return
        if kind == _SILENT:
            return

        dts = ((ts - src.ref_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
        pos = src.ref_pos + (dts * num if den == 1 else dts * num // den)
        if newest:
            late_by = arrival * self.rate - pos
            backwards = ((ts - src.last_ts) & 0xFFFFFFFF) >= 0x80000000
            src.last_ts = ts
            if late_by < -self._jump or (
                (marker or backwards) and abs(late_by) > self._delay_samples
            ):
                pos = self._reanchor(src, ts, arrival)
            else:
                if late_by > self._jump and src.win_min <= self._jump:
                    # The first of possibly many far-late packets: measure them on their own.
                    src.reset_window()
                if late_by < src.win_min:
                    src.win_min = late_by
                if late_by > src.win_max:
                    src.win_max = late_by
                src.win_count += 1
                if src.win_count >= _FAST_WINDOW and (
                    src.win_count >= _DRIFT_WINDOW or src.win_min > self._jump
                ):
                    pos += self._check_drift(src)
                if dts > 0x40000000 or dts < -0x40000000:
                    # Keep timestamp differences far from 32-bit wrap on very long calls.
                    src.ref_ts = ts
                    src.ref_pos = pos

        rendered = self._rendered
        if pos < rendered:
            assert decoder is not None
            if pos + decoder.expected_samples(len(payload)) * num // den <= rendered:
                stats.late += 1
                return
        elif pos - rendered > self._max_ahead or len(self._pending) >= self._max_packets:
            stats.overflow += 1
            return
        self._pending.append((pos, pt, payload))

    def _new_source(
        self,
        ssrc: int,
        seq: int,
        ts: int,
        pt: int,
        payload: Payload,
        arrival: float,
    ) -> _Source:
        """A source seen for the first time, anchored at this packet's arrival."""
        entry = self._payload_types.get(pt)
        pos = round(arrival * self.rate)
        if entry is not None and entry[0] == _EVENT:
            # A key press opening the stream began `duration` ticks before this packet.
            with contextlib.suppress(DtmfFormatError):
                pos -= parse_telephone_event(payload).duration * entry[2] // entry[3]
        src = _Source(ssrc, seq, ts, pos)
        if self._sources:
            self.stats.ssrc_changes += 1
            if len(self._sources) >= _MAX_SOURCES:
                del self._sources[next(iter(self._sources))]
        self._sources[ssrc] = src
        return src

    def _reanchor(self, src: _Source, ts: int, arrival: float) -> int:
        """Place timestamp `ts` at `arrival` from now on; returns its new position."""
        pos = round(arrival * self.rate)
        src.ref_ts = ts
        src.ref_pos = pos
        src.reset_window()
        src.prev_min = None
        self.stats.reanchors += 1
        return pos

    def _check_drift(self, src: _Source) -> int:
        """End a measuring window; returns the shift (samples) applied to the anchor."""
        earliest, spread = src.win_min, src.win_max - src.win_min
        count = src.win_count
        src.reset_window()
        half = self._delay_samples // 2
        if count < _DRIFT_WINDOW:
            # Packets all more than a second late. On pace with each other they mean the
            # sender's timestamps jumped; a spread-out burst is the backlog of a network stall,
            # whose audio is lost anyway and must not move the anchor.
            if spread > half:
                return 0
            shift = int(earliest)
        else:
            # Drift is slow and shows in two windows in a row; one window alone may hold the
            # tail of a stall burst.
            previous, src.prev_min = src.prev_min, earliest
            if previous is None:
                return 0
            if earliest > half and previous > half:
                shift = int(min(earliest, previous))
            elif earliest < -half and previous < -half:
                shift = int(max(earliest, previous))
            else:
                return 0
        src.ref_pos += shift
        src.prev_min = None
        self.stats.reanchors += 1
        return shift

    def _telephone_event(
        self,
        src: _Source,
        ts: int,
        payload: Payload,
        num: int,
        den: int,
    ) -> None:
        try:
            event = parse_telephone_event(payload)
        except DtmfFormatError:
            self.stats.bad_packets += 1
            return
        if digit_for(event.event) is None:
            return
        dts = ((ts - src.ref_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
        start = src.ref_pos + dts * num // den
        for transition in src.events.observe(ts, event):
            if isinstance(transition, EventStarted):
                known_end = start + transition.duration * num // den
                blank = [start - self._guard_before, -1, known_end, src.ssrc, ts]
                self._blanks.append(blank)
                src.open_blank = blank
            else:
                self._event_ended(src, transition, num, den)
        current = src.open_blank
        if current is not None and current[4] == ts:
            current[2] = max(current[2], start + event.duration * num // den)

    def _event_ended(self, src: _Source, ended: EventEnded, num: int, den: int) -> None:
        blank = src.open_blank
        if blank is None or blank[4] != ended.timestamp:
            return
        src.open_blank = None
        start = blank[0] + self._guard_before
        blank[1] = start + ended.duration * num // den + self._guard_after
        if not ended.confirmed:
            blank[1] += self._update_gap
        digit = digit_for(ended.event)
        assert digit is not None
        self._events.append(
            DtmfEvent(
                digit=digit,
                start=start / self.rate,
                duration=ended.duration / self._event_clock,
                volume=ended.volume,
            )
        )
        self.stats.dtmf_events += 1

    # --- per pull --------------------------------------------------------------------------

    def pull(self, until: float) -> Pcm:
        """Audio of [end of the previous pull, until) at output_rate, int16 mono.

        Returns an empty array when `until` is not past the previous pull.
        """
        if not math.isfinite(until):
            raise TimelineError(f"cannot pull until {until}")
        target = round(until * self.output_rate)
        n_out = target - self._pulled
        if n_out <= 0:
            return np.zeros(0, dtype=np.int16)
        need = self._resampler.inputs_needed(target)
        chunk = self._render(need) if need > self._rendered else np.zeros(0, dtype=np.int16)
        self._pulled = target
        return self._resampler.process(chunk, n_out)

    def drain_events(self, close_open: bool = False) -> list[DtmfEvent]:
        """Key presses finished since the last call, each reported once.

        With `close_open` (at the end of the call), events still in progress are ended with
        their last known duration and reported too.
        """
        if close_open:
            for src in self._sources.values():
                self._close_open_event(src)
        events, self._events = self._events, []
        return events

    def _close_open_event(self, src: _Source) -> None:
        ended = src.events.close()
        if ended is not None:
            entry = next(e for e in self._payload_types.values() if e[0] == _EVENT)
            self._event_ended(src, ended, entry[2], entry[3])

    def _render(self, end: int) -> Pcm:
        """Produce timeline samples [rendered, end) at the internal rate."""
        start = self._rendered
        n = end - start
        out = np.zeros(n, dtype=np.int16)
        carry: list[tuple[int, Pcm]] = []
        for pos, pcm in self._carry:
            self._place(out, start, n, pos, pcm, carry)
        pending = self._pending
        if pending:
            ready = [p for p in pending if p[0] < end]
            if ready:
                self._pending = (
                    [p for p in pending if p[0] >= end] if len(ready) < len(pending) else []
                )
                ready.sort(key=itemgetter(0))
                for (pos, _, _), pcm in zip(ready, self._decode(ready), strict=True):
                    if not self._place(out, start, n, pos, pcm, carry):
                        self.stats.late += 1
        self._carry = carry
        if self._blanks:
            self._blank(out, start, end)
        self._rendered = end
        return out

    def _decode(self, ready: list[tuple[int, int, Payload]]) -> list[Pcm]:
        """Decode ready packets, batched per payload type, in timeline order."""
        first_pt = ready[0][1]
        if all(p[1] == first_pt for p in ready):
            groups = {first_pt: list(range(len(ready)))}
        else:
            groups = {}
            for i, p in enumerate(ready):
                groups.setdefault(p[1], []).append(i)
        result: list[Pcm] = [np.zeros(0, dtype=np.int16)] * len(ready)
        for pt, indices in groups.items():
            _, decoder, _, _ = self._payload_types[pt]
            assert decoder is not None
            corrupt_before = decoder.corrupt
            pcms = decoder.decode([ready[i][2] for i in indices])
            corrupt = decoder.corrupt - corrupt_before
            self.stats.corrupt_payloads += corrupt
            self.stats.decoded += len(indices) - corrupt
            convert = decoder.audio_rate != self.rate
            for i, pcm in zip(indices, pcms, strict=True):
                result[i] = resample(pcm, decoder.audio_rate, self.rate) if convert else pcm
        return result

    @staticmethod
    def _place(
        out: Pcm, start: int, n: int, pos: int, pcm: Pcm, carry: list[tuple[int, Pcm]]
    ) -> bool:
        """Write pcm at timeline position pos into out; keep what lies beyond it in carry."""
        a = pos - start
        b = a + len(pcm)
        if b <= 0:
            return len(pcm) == 0
        s = a if a > 0 else 0
        if a < n:
            e = b if b < n else n
            out[s:e] = pcm[s - a : e - a]
        if b > n:
            tail_from = n - a if n > a else 0
            carry.append((pos + tail_from, pcm[tail_from:]))
        return True

    def _blank(self, out: Pcm, start: int, end: int) -> None:
        """Silence key presses in [start, end), fading the audio out just before each blank
        and in just after it; end events that never sent an end packet."""
        keep: list[list[int]] = []
        fade = len(self._fade_out)
        for blank in self._blanks:
            b0, b1 = blank[0], blank[1]
            if b1 < 0 and end - blank[2] > self._open_timeout:
                src = self._sources.get(blank[3])
                if src is not None and src.open_blank is blank:
                    self._close_open_event(src)
                if blank[1] < 0:  # the source is gone: close it here
                    blank[1] = blank[2] + self._guard_after
                b1 = blank[1]
            stop = end if b1 < 0 else min(b1, end)
            lo = max(b0, start)
            if stop > lo:
                out[lo - start : stop - start] = 0
            _ramp(out, start, end, b0 - fade, self._fade_out)
            if b1 >= 0:
                _ramp(out, start, end, b1, self._fade_in)
            if b1 < 0 or b1 + fade > end:
                keep.append(blank)
        self._blanks = keep


def _ramp(out: Pcm, start: int, end: int, at: int, gains: npt.NDArray[np.float64]) -> None:
    """Scale the timeline samples [at, at + len(gains)) that lie in out = [start, end)."""
    lo, hi = max(at, start), min(at + len(gains), end)
    if hi > lo:
        part = out[lo - start : hi - start]
        out[lo - start : hi - start] = np.rint(part * gains[lo - at : hi - at]).astype(np.int16)
