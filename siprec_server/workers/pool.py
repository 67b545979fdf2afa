"""Media worker processes, seen from the main process: one per core (`media.workers`), each
recording the calls it is given (siprec_server/workers/media_worker.py).

A call goes to the worker with the fewest calls, with the RTP/RTCP sockets the main process
already bound for it (so the SDP answer never names a port another process holds; no port slices
to configure). Pause and resume go over the control channel with the main process's clock; their
answer ("was it already paused for this reason?") is kept here, where the API asks. A worker
that dies takes its calls' media with it: each of them is reported lost (the recorder hangs it
up and the media service seals what reached the file, as a crash's recovery would), and a new
worker takes its place, with back-off if it keeps dying. Other calls never notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Any
from uuid import UUID

from siprec_server.logs import get_logger
from siprec_server.media.call import StreamSpec
from siprec_server.workers import ipc
from siprec_server.workers.call_runner import CallOutcome, CallPlan
from siprec_server.workers.engine import CallSockets, EngineEvents

log = get_logger("media.workers")

REQUEST_TIMEOUT_S = 30.0
RESTART_BACKOFF_S = (0.2, 1.0, 5.0, 30.0)


class WorkerLost(Exception):
    """The worker died (or stopped answering) before it answered."""


@dataclass
class WorkerCounters:
    workers_started: int = 0
    workers_died: int = 0
    calls_lost: int = 0
    """Calls whose media went away with a worker (sealed as interrupted)."""


@dataclass
class _Worker:
    slot: int
    process: asyncio.subprocess.Process
    channel: socket.socket
    calls: set[UUID] = field(default_factory=set)
    paused: dict[UUID, set[str]] = field(default_factory=dict)
    """Reasons each call is paused for that the main process gave (api, hold)."""
    replies: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    outbox: list[tuple[Any, list[int]]] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    alive: bool = True


class WorkerPool:
    def __init__(self, events: EngineEvents, workers: int, *, log_format: str = "json",
                 log_level: str = "info") -> None:
        if workers < 1:
            raise ValueError("a worker pool needs at least one worker")
        self._events = events
        self._size = workers
        self._log = (log_format, log_level)
        self._workers: dict[int, _Worker] = {}
        self._by_call: dict[UUID, _Worker] = {}
        self._seq = count(1)
        self._loop = asyncio.get_running_loop()
        self._dead_totals: Counter[str] = Counter()
        self._deaths: dict[int, int] = {}
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters = WorkerCounters()

    # ---------------------------------------------------------------- life

    async def start(self) -> None:
        for slot in range(self._size):
            await self._spawn(slot)

    async def _spawn(self, slot: int) -> None:
        main_end, worker_end = ipc.channel_pair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "siprec_server.workers.media_worker",
                str(worker_end.fileno()), "--log-format", self._log[0],
                "--log-level", self._log[1],
                pass_fds=(worker_end.fileno(),), stdin=asyncio.subprocess.DEVNULL)
        finally:
            worker_end.close()
        main_end.setblocking(False)
        worker = _Worker(slot, process, main_end)
        self._workers[slot] = worker
        self._loop.add_reader(main_end.fileno(), self._readable, worker)
        self._watch(asyncio.ensure_future(self._supervise(worker)))
        self.counters.workers_started += 1
        log.info("media_worker_started", slot=slot, pid=process.pid)

    def _watch(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _supervise(self, worker: _Worker) -> None:
        code = await worker.process.wait()
        self._gone(worker, f"exited with {code}")
        if self._closing:
            return
        self.counters.workers_died += 1
        deaths = self._deaths.get(worker.slot, 0)
        self._deaths[worker.slot] = deaths + 1
        delay = RESTART_BACKOFF_S[min(deaths, len(RESTART_BACKOFF_S) - 1)]
        log.error("media_worker_died", slot=worker.slot, pid=worker.process.pid, code=code,
                  restart_in_s=delay)
        await asyncio.sleep(delay)
        if not self._closing:
            await self._spawn(worker.slot)

    def _gone(self, worker: _Worker, why: str) -> None:
        """The worker's media is gone: its calls are lost, its questions unanswered."""
        if not worker.alive:
            return
        worker.alive = False
        with contextlib.suppress(Exception):
            self._loop.remove_reader(worker.channel.fileno())
        with contextlib.suppress(OSError):
            worker.channel.close()
        self._dead_totals.update(worker.stats)
        for future in worker.replies.values():
            if not future.done():
                future.set_exception(WorkerLost(why))
        worker.replies.clear()
        for recording_id in list(worker.calls):
            if self._closing:
                continue
            self.counters.calls_lost += 1
            self._events.lost(recording_id, f"media worker {why}")

    async def close(self) -> None:
        self._closing = True
        for worker in list(self._workers.values()):
            if worker.alive:
                self._send(worker, ("shutdown",))
        for worker in list(self._workers.values()):
            try:
                await asyncio.wait_for(worker.process.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
            self._gone(worker, "stopped")
        for task in list(self._tasks):
            task.cancel()

    # ---------------------------------------------------------------- the channel

    def _send(self, worker: _Worker, message: Any, fds: list[int] | None = None) -> None:
        worker.outbox.append((message, fds or []))
        self._flush(worker)

    def _flush(self, worker: _Worker) -> None:
        if not worker.alive:
            return
        while worker.outbox:
            message, fds = worker.outbox[0]
            try:
                ipc.send(worker.channel, message, fds)
            except BlockingIOError:
                self._loop.add_writer(worker.channel.fileno(), self._writable, worker)
                return
            except OSError as exc:
                self._gone(worker, f"channel failed ({exc.strerror})")
                return
            worker.outbox.pop(0)

    def _writable(self, worker: _Worker) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_writer(worker.channel.fileno())
        self._flush(worker)

    async def _ask(self, worker: _Worker, message: tuple[Any, ...],
                   fds: list[int] | None = None) -> Any:
        if not worker.alive:
            raise WorkerLost("not running")
        seq = message[1]
        future: asyncio.Future[Any] = self._loop.create_future()
        worker.replies[seq] = future
        self._send(worker, message, fds)
        try:
            status, value = await asyncio.wait_for(future, REQUEST_TIMEOUT_S)
        except TimeoutError:
            # A worker that does not answer is as good as dead: end it, its calls are lost.
            log.error("media_worker_unresponsive", slot=worker.slot)
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
            raise WorkerLost("unresponsive") from None
        finally:
            worker.replies.pop(seq, None)
        if status != "ok":
            raise RuntimeError(f"media worker: {value}")
        return value

    def _readable(self, worker: _Worker) -> None:
        while worker.alive:
            try:
                received = ipc.receive(worker.channel)
            except BlockingIOError:
                return
            except OSError:
                received = None
            if received is None:
                self._gone(worker, "closed its channel")
                return
            message, fds = received
            for fd in fds:  # a worker never sends descriptors
                os.close(fd)
            try:
                self._dispatch(worker, message)
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the rest
                log.error("media_worker_message_failed", slot=worker.slot, error=repr(exc))

    def _dispatch(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "re":
            future = worker.replies.get(message[1])
            if future is not None and not future.done():
                future.set_result(message[2])
        elif kind == "events":
            self._events.media_events(message[1], message[2])
        elif kind == "inactive":
            self._events.inactive(message[1], message[2])
        elif kind == "no_space":
            self._events.no_space(message[1])
        elif kind == "stats":
            worker.stats = Counter(message[1])

    # ---------------------------------------------------------------- MediaEngine

    async def start_call(self, plan: CallPlan, sockets: Sequence[CallSockets]) -> None:
        alive = [w for w in self._workers.values() if w.alive]
        if not alive:
            raise WorkerLost("no media worker is running")
        worker = min(alive, key=lambda w: len(w.calls))
        fds = [fd for s in sockets for fd in (s.rtp.fileno(), s.rtcp.fileno())]
        worker.calls.add(plan.recording_id)
        worker.paused[plan.recording_id] = set()
        self._by_call[plan.recording_id] = worker
        try:
            await self._ask(worker, ("start", next(self._seq), plan,
                                     [s.m_index for s in sockets]), fds)
        except BaseException:
            self._forget(plan.recording_id)
            raise

    async def update_call(self, recording_id: UUID, specs: Sequence[StreamSpec],
                          hold: bool | None) -> list[int]:
        worker = self._by_call.get(recording_id)
        if worker is None:
            return []
        if hold is not None:
            reasons = worker.paused.setdefault(recording_id, set())
            (reasons.add if hold else reasons.discard)("hold")
        try:
            unrecorded: list[int] = await self._ask(
                worker, ("update", next(self._seq), recording_id, list(specs), hold))
        except WorkerLost:
            return []
        return unrecorded

    def _control(self, recording_id: UUID, source: str, pause: bool) -> bool | None:
        worker = self._by_call.get(recording_id)
        if worker is None or not worker.alive:
            return None
        reasons = worker.paused.setdefault(recording_id, set())
        if (source in reasons) == pause:
            return False
        (reasons.add if pause else reasons.discard)(source)
        self._send(worker, ("pause" if pause else "resume", recording_id, source,
                            time.monotonic()))
        return True

    def pause(self, recording_id: UUID, source: str) -> bool | None:
        return self._control(recording_id, source, True)

    def resume(self, recording_id: UUID, source: str) -> bool | None:
        return self._control(recording_id, source, False)

    async def stop_call(self, recording_id: UUID) -> CallOutcome | None:
        worker = self._by_call.get(recording_id)
        if worker is None:
            return None
        try:
            outcome: CallOutcome | None = await self._ask(
                worker, ("stop", next(self._seq), recording_id))
        except WorkerLost as exc:
            outcome = CallOutcome(unsealed=f"worker lost: {exc}")
        finally:
            self._forget(recording_id)
        return outcome

    def _forget(self, recording_id: UUID) -> None:
        worker = self._by_call.pop(recording_id, None)
        if worker is not None:
            worker.calls.discard(recording_id)
            worker.paused.pop(recording_id, None)

    def has_call(self, recording_id: UUID) -> bool:
        return recording_id in self._by_call

    def packet_totals(self) -> Counter[str]:
        totals = Counter(self._dead_totals)
        for worker in self._workers.values():
            if worker.alive:
                totals.update(worker.stats)
        return totals

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers.values() if w.alive]

    def calls_per_worker(self) -> dict[int, int]:
        return {w.slot: len(w.calls) for w in self._workers.values() if w.alive}
