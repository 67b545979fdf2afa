"""The asyncio edge of the media: each stream's socket, SRTP context and impairment around its
RtpStream, and ONE pacer task that sends the due packets of every stream of every call.

The send path is header + SRTP protect + sendto, with payloads encoded before the run, so a
process can carry hundreds of streams. The pacer cuts the packet time into a few phases and
puts each call on the least busy one, so packets do not all leave in one burst. It measures its
own lateness: a load generator that falls behind measures itself, not the server, and the
report says so.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import socket
import time
from collections.abc import Sequence
from typing import Final

import numpy as np

from siprec_server.media.srtp import SrtpSender
from siprec_server.tools.siprec_client.reports import DtmfSent, SenderStats
from siprec_server.tools.siprec_client.rtp import Impairment, RtpStream, TickOverride


class OutboundStream:
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


class Pacer:
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
        self._by_phase: list[list[OutboundStream]] = [[] for _ in range(phases)]
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

    def add(self, streams: Sequence[OutboundStream]) -> int:
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

    def remove(self, streams: Sequence[OutboundStream]) -> None:
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
