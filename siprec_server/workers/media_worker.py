"""A media worker process: records the calls the main process hands it, on one core.

    python -m siprec_server.workers.media_worker FD [--log-format F] [--log-level L]

FD is the worker's end of the control channel (siprec_server/workers/ipc.py). The main process
keeps SIP, the database, the API and the master key; a worker gets, per call, a `CallPlan` (the
negotiated streams, the recording's data key, where its file goes) and the call's already bound
RTP/RTCP sockets, and gives back a `CallOutcome` when the call ends.

No event loop: one thread waits on epoll for the control channel and every RTP/RTCP socket, and
drains each ready socket with recvfrom until it is empty (one call per datagram instead of a
callback through the loop's machinery). Waits are at least `cycle` apart, so that at a high
packet rate one wakeup serves many sockets; every TICK_INTERVAL the calls are encoded and their
events, and twice a second the packet counters, go back to the main process. When the main
process goes away (its end of the channel closes), the worker leaves its files as they are
(every complete chunk readable; recovery seals them) and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from siprec_server.logs import configure_logging, get_logger
from siprec_server.media.call import StreamSpec
from siprec_server.media.events import MediaEvent
from siprec_server.workers import ipc
from siprec_server.workers.call_runner import CallOutcome, CallPlan, CallRunner
from siprec_server.workers.engine import TICK_INTERVAL, packet_counts, tick_call

log = get_logger("media.worker")

DEFAULT_CYCLE = 0.004
"""Seconds between two waits for packets at the least (batching; the playout delay is 120 ms)."""
STATS_INTERVAL = 0.5
DRAIN_LIMIT = 64
"""Datagrams read from one socket per wakeup, so that a flood on one port cannot starve the
others (epoll is level-triggered: the rest are read at the next wakeup)."""
_RECV_SIZE = 2048
_ANCILLARY = socket.CMSG_SPACE(16)
_TIMESPEC = struct.Struct("@qq")


@dataclass(slots=True)
class _Port:
    runner: CallRunner
    m_index: int
    rtcp: bool
    sock: socket.socket


class Worker:
    """The worker's state; `run()` is its whole life."""

    def __init__(self, control: socket.socket, cycle: float = DEFAULT_CYCLE) -> None:
        self._control = control
        self._control.setblocking(False)
        self._cycle = cycle
        self._epoll = select.epoll()
        self._epoll.register(control.fileno(), select.EPOLLIN)
        self._calls: dict[UUID, CallRunner] = {}
        self._ports: dict[int, _Port] = {}
        self._outbox: list[Any] = []
        self._finished: Counter[str] = Counter()
        self._running = True

    # ---------------------------------------------------------------- the loop

    def run(self) -> None:
        now = time.monotonic()
        next_tick = now + TICK_INTERVAL
        next_stats = now + STATS_INTERVAL
        last_wait = 0.0
        while self._running:
            now = time.monotonic()
            pause = last_wait + self._cycle - now
            if pause > 0:
                time.sleep(pause)
            last_wait = time.monotonic()
            timeout = max(0.0, next_tick - last_wait)
            for fd, _mask in self._epoll.poll(timeout):
                if fd == self._control.fileno():
                    self._read_control()
                else:
                    self._drain(fd)
            now = time.monotonic()
            if now >= next_tick:
                self._tick(now)
                next_tick += TICK_INTERVAL
                if next_tick < now:  # fell behind (a stall): do not tick in a burst
                    next_tick = now + TICK_INTERVAL
            if now >= next_stats:
                self._post(("stats", dict(self._totals()), len(self._calls)))
                next_stats = now + STATS_INTERVAL
            self._flush_outbox()
        self._shutdown()

    def _drain(self, fd: int) -> None:
        port = self._ports.get(fd)
        if port is None:
            return
        receive = port.runner.receive_rtcp if port.rtcp else port.runner.receive_rtp
        recvmsg = port.sock.recvmsg
        index = port.m_index
        now = time.monotonic()
        # Wall-clock stamps to the monotonic clock the media core runs on.
        offset = time.time() - now
        unpack = _TIMESPEC.unpack_from
        for _ in range(DRAIN_LIMIT):
            try:
                data, ancillary, _flags, source = recvmsg(_RECV_SIZE, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # an ICMP error queued on the socket; nothing to read
            arrival = now
            if ancillary:
                seconds, nanoseconds = unpack(ancillary[0][2])
                arrival = min(now, seconds + nanoseconds * 1e-9 - offset)
            receive(index, data, arrival, source)

    def _tick(self, now: float) -> None:
        for runner in list(self._calls.values()):
            tick_call(runner, now, self)

    # ---------------------------------------------------------------- EngineEvents, to main

    def media_events(self, recording_id: UUID, events: list[MediaEvent]) -> None:
        self._post(("events", recording_id, events))

    def inactive(self, recording_id: UUID, seconds: float) -> None:
        self._post(("inactive", recording_id, seconds))

    def no_space(self, recording_id: UUID) -> None:
        self._post(("no_space", recording_id))

    def lost(self, recording_id: UUID, why: str) -> None:  # pragma: no cover - main's own
        self._post(("lost", recording_id, why))

    # ---------------------------------------------------------------- the control channel

    def _post(self, message: Any) -> None:
        self._outbox.append(message)

    def _flush_outbox(self) -> None:
        while self._outbox:
            try:
                ipc.send(self._control, self._outbox[0])
            except BlockingIOError:
                return  # the main process is busy; the rest goes at the next wakeup
            except OSError:
                self._running = False  # the main process is gone
                return
            self._outbox.pop(0)

    def _read_control(self) -> None:
        while True:
            try:
                received = ipc.receive(self._control)
            except BlockingIOError:
                return
            except OSError:
                received = None
            if received is None:
                self._running = False  # the main process is gone
                return
            message, fds = received
            try:
                self._handle(message, fds)
            except Exception as exc:  # noqa: BLE001 - a bad request fails alone
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                log.error("worker_request_failed", request=str(message[0]), error=repr(exc))
                if len(message) > 1 and isinstance(message[1], int):
                    self._post(("re", message[1], ("error", f"{type(exc).__name__}: {exc}")))

    def _handle(self, message: tuple[Any, ...], fds: list[int]) -> None:
        kind = message[0]
        if kind == "start":
            _kind, seq, plan, m_indexes = message
            self._start(plan, m_indexes, fds)
            self._post(("re", seq, ("ok", None)))
        elif kind == "update":
            _kind, seq, recording_id, specs, hold = message
            runner = self._calls.get(recording_id)
            unrecorded = [] if runner is None else self._update(runner, specs, hold)
            self._post(("re", seq, ("ok", unrecorded)))
        elif kind in ("pause", "resume"):
            _kind, recording_id, source, at = message
            runner = self._calls.get(recording_id)
            if runner is not None:
                (runner.pause if kind == "pause" else runner.resume)(at, source)
        elif kind == "stop":
            _kind, seq, recording_id = message
            self._post(("re", seq, ("ok", self._stop(recording_id))))
        elif kind == "shutdown":
            self._running = False
        else:
            raise ValueError(f"unknown request {kind!r}")

    # ---------------------------------------------------------------- calls

    def _start(self, plan: CallPlan, m_indexes: list[int], fds: list[int]) -> None:
        if len(fds) != 2 * len(m_indexes):
            raise ValueError(f"{len(fds)} sockets for {len(m_indexes)} streams")
        sockets = [socket.socket(fileno=fd) for fd in fds]
        try:
            runner = CallRunner(plan)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        self._calls[plan.recording_id] = runner
        for i, m_index in enumerate(m_indexes):
            for rtcp, sock in ((False, sockets[2 * i]), (True, sockets[2 * i + 1])):
                sock.setblocking(False)
                self._ports[sock.fileno()] = _Port(runner, m_index, rtcp, sock)
                self._epoll.register(sock.fileno(), select.EPOLLIN)

    def _update(self, runner: CallRunner, specs: list[StreamSpec], hold: bool | None) -> list[int]:
        unrecorded = runner.update(specs, hold, time.monotonic())
        events = runner.take_events()
        if events:
            self.media_events(runner.plan.recording_id, events)
        return unrecorded

    def _release_ports(self, runner: CallRunner) -> None:
        for fd, port in list(self._ports.items()):
            if port.runner is runner:
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(fd)
                port.sock.close()  # the worker's copy; the main process keeps its own
                del self._ports[fd]

    def _stop(self, recording_id: UUID) -> CallOutcome | None:
        runner = self._calls.pop(recording_id, None)
        if runner is None:
            return None
        self._release_ports(runner)
        outcome = runner.close(time.monotonic())
        events = runner.take_events()
        if events:
            self.media_events(recording_id, events)
        if outcome.report is not None:
            for stream in outcome.report.streams:
                self._finished.update(packet_counts(stream))
        return outcome

    def _totals(self) -> Counter[str]:
        totals = Counter(self._finished)
        for runner in self._calls.values():
            for stream in runner.stream_reports():
                totals.update(packet_counts(stream))
        return totals

    def _shutdown(self) -> None:
        for runner in list(self._calls.values()):
            self._release_ports(runner)
            runner.abandon()
        self._calls.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="media_worker")
    parser.add_argument("fd", type=int)
    parser.add_argument("--log-format", default="json")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--cycle", type=float, default=DEFAULT_CYCLE)
    args = parser.parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    # The main process decides when to stop (shutdown request or its end of the channel
    # closing); a Ctrl-C meant for the server must not kill its workers first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=args.fd)
    try:
        Worker(control, args.cycle).run()
    finally:
        control.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
