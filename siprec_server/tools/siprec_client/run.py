"""`run_calls`: encode every call's payloads beforehand (shared between alike calls), start the
calls at a rate with a cap on concurrency, stop what is left at a hard timeout, and gather
the reports with the pacer's timing and the process's CPU."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import resource
import socket
import time
from collections.abc import Mapping, Sequence

from siprec_server.tools.siprec_client.call import Call, PreparedMedia, RunContext
from siprec_server.tools.siprec_client.errors import SiprecClientError
from siprec_server.tools.siprec_client.pacer import Pacer
from siprec_server.tools.siprec_client.payloads import codec_spec, encode_source
from siprec_server.tools.siprec_client.plan import CallPlan, StreamPlan
from siprec_server.tools.siprec_client.reports import CallReport, RunReport
from siprec_server.tools.siprec_client.rtp import TickOverride, dtmf_overrides
from siprec_server.tools.siprec_client.sip_link import T1

ServerAddress = tuple[str, int] | str
"""(host, port) or "HOST:PORT"."""


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


class _PayloadCache:
    """Encoded tone loops and DTMF ticks shared by every call that has the same ones, so a run
    of many alike calls encodes each only once."""

    def __init__(self) -> None:
        self._payloads: dict[tuple[str, float, int, int, bool], tuple[bytes, ...]] = {}
        self._overrides: dict[tuple[object, ...], Mapping[int, TickOverride]] = {}

    def prepare(self, plan: CallPlan) -> PreparedMedia:
        return PreparedMedia(
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
    pacer = Pacer(ptimes.pop() if ptimes else 20, phases)
    ctx = RunContext(
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
            return await Call(index, plan, prepared[index], ctx).run()
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
