"""asyncio glue around the sans-IO SipAgent: UDP, TCP and TLS listeners in, one timer, bytes out.

Thin on purpose: every protocol decision is in siprec_server/sip. A fault while handling one
message is logged and counted; it never stops the listener or touches other calls.

What reaches the agent is bounded here: sources outside `sip.allow_from` are refused before
parsing (source_policy.py); stream connections are capped globally and, for untrusted sources,
per source; a connection must deliver each message within the message timeout of its first
byte (and its first one within that time of connecting), and is closed after the idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from siprec_server.config import ListenAddress
from siprec_server.logs import get_logger
from siprec_server.net.source_policy import (
    LOOPBACK,
    Admission,
    SourcePolicy,
    UntrustedRateLimit,
)
from siprec_server.sip.agent import SipAgent
from siprec_server.sip.events import Outgoing, Peer, SipEvent
from siprec_server.sip.message import SipParseError, StreamFramer

log = get_logger("sip.transport")

_SWEEP_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class TransportLimits:
    sources: SourcePolicy = field(default_factory=lambda: SourcePolicy.from_config(LOOPBACK))
    max_connections: int = 2000
    """TCP/TLS connections open at once, all sources together."""
    max_connections_per_source: int = 20
    """TCP/TLS connections of one untrusted source (trusted sources: only the global cap)."""
    message_timeout: float = 10.0
    """Seconds a connection may take to deliver a message once it started one (or its first
    one after connecting): a slow sender holding a connection half-open is cut off."""
    idle_timeout: float = 3600.0
    """Seconds without a byte (keep-alives count) before a connection is closed."""
    untrusted_rate: float = 20.0
    """Messages per second one untrusted source may send (ten times that for all of them);
    beyond, they are dropped before parsing."""


@dataclass
class TransportCounters:
    send_failures: int = 0
    handler_errors: int = 0
    stream_errors: int = 0
    refused_sources: int = 0
    """Datagrams and connections from sources outside sip.allow_from."""
    refused_connections: int = 0
    """Connections over the global or per-source cap."""
    message_timeouts: int = 0
    idle_timeouts: int = 0
    rate_limited: int = 0
    """Messages of untrusted sources dropped over sip.untrusted_rate."""


class SipEndpoint:
    def __init__(self, agent: SipAgent,
                 on_event: Callable[[SipEvent], None] | None = None,
                 limits: TransportLimits | None = None) -> None:
        self.agent = agent
        self.on_event: Callable[[SipEvent], None] = on_event or (lambda event: None)
        """Where the agent's events go: the transaction user (the recorder)."""
        self.limits = limits or TransportLimits()
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pumping = False
        self._udp: list[asyncio.DatagramTransport] = []
        self._servers: list[tuple[str, asyncio.Server]] = []
        self._connections: dict[int, asyncio.Transport] = {}
        self._streams: dict[int, _StreamProtocol] = {}
        self._per_source: Counter[str] = Counter()
        self._next_connection = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._untrusted = UntrustedRateLimit(self.limits.untrusted_rate)
        self.counters = TransportCounters()

    # ---------------------------------------------------------------- listeners

    async def listen(self, addresses: Iterable[ListenAddress], tls: ssl.SSLContext | None) -> None:
        for address in addresses:
            if address.transport == "udp":
                transport, _ = await self._loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), local_addr=(address.host, address.port)
                )
                self._udp.append(transport)
            else:
                kind = address.transport
                server = await self._loop.create_server(
                    self._stream_protocol_factory(kind),
                    address.host,
                    address.port,
                    ssl=tls if kind == "tls" else None,
                    reuse_address=True,
                )
                self._servers.append((kind, server))
        if self._servers and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever())

    def bound_addresses(self) -> list[tuple[str, str, int]]:
        """(transport, host, port) actually bound — port 0 in config means any free port."""
        out: list[tuple[str, str, int]] = []
        for udp in self._udp:
            host, port = udp.get_extra_info("sockname")[:2]
            out.append(("udp", host, port))
        for kind, server in self._servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                out.append((kind, host, port))
        return out

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._timer:
            self._timer.cancel()
        for udp in self._udp:
            udp.close()
        for _kind, server in self._servers:
            server.close()
        for conn in list(self._connections.values()):
            conn.close()
        for _kind, server in self._servers:
            await server.wait_closed()

    # ---------------------------------------------------------------- the transaction user's calls

    def respond(self, txn: str, status: int, **kwargs: Any) -> bool:
        sent = self.agent.respond(txn, status, self._loop.time(), **kwargs)
        self.pump()
        return sent

    def dialog_of(self, txn: str) -> str | None:
        return self.agent.dialog_of(txn)

    def end_dialog(self, dialog: str, reason: str = "local") -> None:
        self.agent.end_dialog(dialog, self._loop.time(), reason)
        self.pump()

    # ---------------------------------------------------------------- core driving

    def receive(self, data: bytes, peer: Peer, admission: Admission = Admission.TRUSTED) -> None:
        if admission is Admission.UNTRUSTED and not self._untrusted.admits(peer.host,
                                                                            self._loop.time()):
            self.counters.rate_limited += 1
            return
        try:
            self.agent.receive(data, peer, self._loop.time())
        except Exception:  # noqa: BLE001 - one bad message must not stop the listener
            self.counters.handler_errors += 1
            log.exception("sip_receive_failed", peer=f"{peer.transport}:{peer.host}:{peer.port}")
        self.pump()

    def pump(self) -> None:
        """Send what the core wants sent, hand its events over, re-arm its timer."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while True:
                outgoing = self.agent.messages_to_send()
                for message in outgoing:
                    self._send(message)
                event = self.agent.next_event()
                if event is None and not outgoing:
                    break
                if event is not None:
                    try:
                        self.on_event(event)
                    except Exception:  # noqa: BLE001
                        self.counters.handler_errors += 1
                        log.exception("sip_event_handler_failed", event=type(event).__name__)
        finally:
            self._pumping = False
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.agent.get_timer()
        if deadline == self._timer_at:
            return
        if self._timer:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._fire_timer)

    def _fire_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.agent.handle_timer(self._loop.time())
        except Exception:  # noqa: BLE001
            self.counters.handler_errors += 1
            log.exception("sip_timer_failed")
        self.pump()

    def _send(self, message: Outgoing) -> None:
        peer = message.peer
        if peer.connection is not None:
            conn = self._connections.get(peer.connection)
            if conn is None or conn.is_closing():
                self.counters.send_failures += 1
                log.warning("sip_send_connection_gone", transport=peer.transport)
                return
            conn.write(message.data)
            return
        if peer.transport != "udp" or not self._udp:
            self.counters.send_failures += 1
            log.warning("sip_send_no_transport", transport=peer.transport)
            return
        try:
            ipaddress.ip_address(peer.host)
        except ValueError:
            self._loop.create_task(self._resolve_and_send(message))
            return
        self._udp_for(peer.host).sendto(message.data, (peer.host, peer.port))

    def _udp_for(self, host: str) -> asyncio.DatagramTransport:
        want_v6 = ":" in host
        for udp in self._udp:
            if (":" in udp.get_extra_info("sockname")[0]) == want_v6:
                return udp
        return self._udp[0]

    async def _resolve_and_send(self, message: Outgoing) -> None:
        peer = message.peer
        try:
            infos = await self._loop.getaddrinfo(peer.host, peer.port, type=2)  # SOCK_DGRAM
        except OSError:
            self.counters.send_failures += 1
            log.warning("sip_send_resolve_failed")
            return
        host, port = str(infos[0][4][0]), int(infos[0][4][1])
        self._udp_for(host).sendto(message.data, (host, port))

    # ---------------------------------------------------------------- stream connections

    def _stream_protocol_factory(self, kind: str) -> Callable[[], asyncio.Protocol]:
        return lambda: _StreamProtocol(self, kind)

    def admits(self, host: str) -> Admission:
        admission = self.limits.sources.admission(host)
        if admission is Admission.REFUSED:
            self.counters.refused_sources += 1
        return admission

    def _register(self, protocol: _StreamProtocol, transport: asyncio.Transport,
                  host: str) -> int | None:
        """A connection id, or None when the connection must be closed at once."""
        admission = self.admits(host)
        if admission is Admission.REFUSED:
            log.warning("sip_source_refused", transport=protocol.kind)
            return None
        limits = self.limits
        over_source = (admission is Admission.UNTRUSTED
                       and self._per_source[host] >= limits.max_connections_per_source)
        if len(self._connections) >= limits.max_connections or over_source:
            self.counters.refused_connections += 1
            if self.counters.refused_connections in (1, 10, 100, 1000, 10000):
                log.warning("sip_connection_cap", open=len(self._connections),
                            refused=self.counters.refused_connections)
            return None
        self._next_connection += 1
        self._connections[self._next_connection] = transport
        self._streams[self._next_connection] = protocol
        self._per_source[host] += 1
        return self._next_connection

    def _unregister(self, connection: int, host: str) -> None:
        if self._connections.pop(connection, None) is not None:
            self._streams.pop(connection, None)
            self._per_source[host] -= 1
            if self._per_source[host] <= 0:
                del self._per_source[host]

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL_S)
            self._sweep(self._loop.time())

    def _sweep(self, now: float) -> None:
        for protocol in list(self._streams.values()):
            verdict = protocol.overdue(now, self.limits)
            if verdict == "message":
                self.counters.message_timeouts += 1
                protocol.abort()
            elif verdict == "idle":
                self.counters.idle_timeouts += 1
                protocol.abort()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: SipEndpoint) -> None:
        self._endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if not data.strip(b"\r\n\x00 "):
            return  # keep-alive datagrams (CRLF, NUL, empty)
        admission = self._endpoint.admits(addr[0])
        if admission is Admission.REFUSED:
            return  # no answer: a spoofed source must not make us a reflector
        self._endpoint.receive(data, Peer("udp", addr[0], addr[1]), admission)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable for a response or BYE: nothing to do but count it.
        self._endpoint.counters.send_failures += 1


class _StreamProtocol(asyncio.Protocol):
    def __init__(self, endpoint: SipEndpoint, kind: str) -> None:
        self._endpoint = endpoint
        self.kind = kind
        self._framer = StreamFramer()
        self._transport: asyncio.Transport | None = None
        self._peer: Peer | None = None
        self._admission = Admission.REFUSED
        now = endpoint._loop.time()
        self._last_data = now
        self._waiting_since: float | None = now
        """When the message we are waiting for was begun (or the connection opened)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP/TLS transports are not subclasses of asyncio.Transport: no isinstance.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        host, port = transport.get_extra_info("peername")[:2]
        connection = self._endpoint._register(self, transport, host)
        if connection is None:
            transport.abort()
            return
        self._peer = Peer(self.kind, host, port, connection)
        self._admission = self._endpoint.limits.sources.admission(host)

    def overdue(self, now: float, limits: TransportLimits) -> str | None:
        if self._waiting_since is not None and now - self._waiting_since > limits.message_timeout:
            return "message"
        if now - self._last_data > limits.idle_timeout:
            return "idle"
        return None

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._peer is None:
            return  # refused at connection_made; the abort is on its way
        now = self._endpoint._loop.time()
        self._last_data = now
        try:
            messages = self._framer.feed(data)
        except SipParseError as exc:
            self._endpoint.counters.stream_errors += 1
            log.warning("sip_stream_framing_error", reason=exc.reason, transport=self.kind)
            self._transport.close()
            return
        if self._framer.in_progress:
            if self._waiting_since is None or messages:
                self._waiting_since = now
        else:
            self._waiting_since = None
        if self._framer.pings:
            self._framer.pings = 0
            self._transport.write(b"\r\n")  # RFC 5626 §4.4.1 pong
        for message in messages:
            self._endpoint.receive(message, self._peer, self._admission)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer is not None and self._peer.connection is not None:
            self._endpoint._unregister(self._peer.connection, self._peer.host)
