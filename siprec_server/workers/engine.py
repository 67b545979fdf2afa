"""Where calls' media runs, seen from the main process.

`MediaEngine` is what the media service (siprec_server/media_service.py) drives: start a call
from a `CallPlan` and the RTP/RTCP sockets the main process bound for it, update it, pause and
resume it, stop it and get its `CallOutcome`. What happens meanwhile comes back through
`EngineEvents`: pause/resume transitions (audited by the service), an inactive call, a full
disk, a call lost with its worker.

Two engines: `InProcessEngine` runs the calls on the main event loop (`media.workers = 0`: tests,
a small machine); `WorkerPool` (siprec_server/workers/pool.py) hands them to one media worker
process per core.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol
from uuid import UUID

from siprec_server.logs import get_logger
from siprec_server.media.call import StreamReport, StreamSpec
from siprec_server.media.events import MediaEvent
from siprec_server.workers.call_runner import CallOutcome, CallPlan, CallRunner, NoSpace

log = get_logger("media.engine")

TICK_INTERVAL = 0.1
"""Seconds between encodes of every call (the jitter buffer's playout delay is 0.12 s)."""
SO_TIMESTAMPNS = 35
"""Linux: the kernel stamps each datagram with its arrival time (SCM_TIMESTAMPNS, the same
number). A media worker reads the stamps, so packets read in a batch (or queued while the call
was on its way to the worker) keep the times they arrived at: the jitter buffer places audio by
arrival, and a backlog read at once would look like a burst."""


class EngineEvents(Protocol):
    """What an engine tells the media service."""

    def media_events(self, recording_id: UUID, events: list[MediaEvent]) -> None: ...

    def inactive(self, recording_id: UUID, seconds: float) -> None: ...

    def no_space(self, recording_id: UUID) -> None: ...

    def lost(self, recording_id: UUID, why: str) -> None: ...


@dataclass(frozen=True, slots=True)
class CallSockets:
    """The bound sockets of one recorded m-line."""

    m_index: int
    rtp: socket.socket
    rtcp: socket.socket


class MediaEngine(Protocol):
    async def start(self) -> None: ...

    async def start_call(self, plan: CallPlan, sockets: Sequence[CallSockets]) -> None: ...

    async def update_call(self, recording_id: UUID, specs: Sequence[StreamSpec],
                          hold: bool | None) -> list[int]: ...

    def pause(self, recording_id: UUID, source: str) -> bool | None: ...

    def resume(self, recording_id: UUID, source: str) -> bool | None: ...

    async def stop_call(self, recording_id: UUID) -> CallOutcome | None: ...

    def packet_totals(self) -> Counter[str]: ...

    def has_call(self, recording_id: UUID) -> bool: ...

    async def close(self) -> None: ...


def packet_counts(stream: StreamReport) -> dict[str, int]:
    stats, counters = stream.stats, stream.counters
    return {
        "packets_received": stats.received,
        "packets_lost": stats.lost,
        "late": stats.late,
        "srtp_auth_failures": counters.srtp_auth_failures,
        "srtp_replays": counters.srtp_replays,
        "srtp_other_failures": counters.srtp_other_failures,
        "foreign_source": counters.foreign_source,
        "foreign_ssrc": counters.foreign_ssrc,
    }


def tick_call(runner: CallRunner, now: float, events: EngineEvents) -> None:
    """One tick of one call, wherever it runs: encode, report transitions, inactivity, a full
    disk. A fault stays in this call."""
    recording_id = runner.plan.recording_id
    try:
        transitions = runner.tick(now)
    except NoSpace:
        if not runner.cut:
            runner.cut = True
            events.no_space(recording_id)
        transitions = runner.take_events()
    except Exception as exc:  # noqa: BLE001 - one call's fault stays in that call
        if not runner.cut:
            log.error("media_tick_failed", recording_id=str(recording_id), error=repr(exc))
        transitions = runner.take_events()
    if transitions:
        events.media_events(recording_id, transitions)
    silent = runner.inactive_for(now)
    if silent is not None:
        events.inactive(recording_id, silent)


class _DatagramProtocol(asyncio.DatagramProtocol):
    """One socket (RTP or RTCP) of one m-line; the per-packet path is two calls."""

    __slots__ = ("_receive", "_index")

    def __init__(self, receive: Callable[[int, bytes, float, Any], None], index: int) -> None:
        self._receive = receive
        self._index = index

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._receive(self._index, data, time.monotonic(), addr)


@dataclass
class _LocalCall:
    runner: CallRunner
    transports: list[asyncio.BaseTransport]


class InProcessEngine:
    """Calls on the main event loop: a datagram endpoint per socket, one tick task for all."""

    def __init__(self, events: EngineEvents) -> None:
        self._events = events
        self._calls: dict[UUID, _LocalCall] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._finished: Counter[str] = Counter()

    async def start(self) -> None:
        """Nothing to start: calls run on this loop."""

    async def start_call(self, plan: CallPlan, sockets: Sequence[CallSockets]) -> None:
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_forever())
        runner = CallRunner(plan)
        loop = asyncio.get_running_loop()
        transports: list[asyncio.BaseTransport] = []
        try:
            for bound in sockets:
                rtp, _ = await loop.create_datagram_endpoint(
                    partial(_DatagramProtocol, runner.receive_rtp, bound.m_index),
                    sock=bound.rtp)
                rtcp, _ = await loop.create_datagram_endpoint(
                    partial(_DatagramProtocol, runner.receive_rtcp, bound.m_index),
                    sock=bound.rtcp)
                transports += [rtp, rtcp]
        except BaseException:
            for transport in transports:
                transport.close()
            runner.abandon()
            raise
        self._calls[plan.recording_id] = _LocalCall(runner, transports)

    async def update_call(self, recording_id: UUID, specs: Sequence[StreamSpec],
                          hold: bool | None) -> list[int]:
        call = self._calls.get(recording_id)
        if call is None:
            return []
        unrecorded = call.runner.update(specs, hold, time.monotonic())
        events = call.runner.take_events()
        if events:
            self._events.media_events(recording_id, events)
        return unrecorded

    def pause(self, recording_id: UUID, source: str) -> bool | None:
        call = self._calls.get(recording_id)
        return None if call is None else call.runner.pause(time.monotonic(), source)

    def resume(self, recording_id: UUID, source: str) -> bool | None:
        call = self._calls.get(recording_id)
        return None if call is None else call.runner.resume(time.monotonic(), source)

    async def stop_call(self, recording_id: UUID) -> CallOutcome | None:
        call = self._calls.pop(recording_id, None)
        if call is None:
            return None
        for transport in call.transports:
            transport.close()
        outcome = call.runner.close(time.monotonic())
        events = call.runner.take_events()
        if events:
            self._events.media_events(recording_id, events)
        if outcome.report is not None:
            for stream in outcome.report.streams:
                self._finished.update(packet_counts(stream))
        return outcome

    def has_call(self, recording_id: UUID) -> bool:
        return recording_id in self._calls

    def packet_totals(self) -> Counter[str]:
        totals = Counter(self._finished)
        for call in self._calls.values():
            for stream in call.runner.stream_reports():
                totals.update(packet_counts(stream))
        return totals

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            now = time.monotonic()
            for call in list(self._calls.values()):
                tick_call(call.runner, now, self._events)

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for call in list(self._calls.values()):
            for transport in call.transports:
                transport.close()
            call.runner.abandon()
        self._calls.clear()
