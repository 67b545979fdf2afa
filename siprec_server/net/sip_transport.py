"""asyncio glue around the sans-IO SipAgent: UDP, TCP and TLS listeners in, one timer, bytes out.

Thin on purpose: every protocol decision is in siprec_server/sip. A fault while handling one
message is logged and counted; it never stops the listener or touches other calls.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Callable, Iterable
from typing import Any, cast

from siprec_server.config import ListenAddress
from siprec_server.logs import get_logger
from siprec_server.sip.agent import SipAgent
from siprec_server.sip.events import Outgoing, Peer, SipEvent
from siprec_server.sip.message import SipParseError, StreamFramer

log = get_logger("sip.transport")

STREAM_IDLE_TIMEOUT = 3600.0


class SipEndpoint:
    def __init__(self, agent: SipAgent,
                 on_event: Callable[[SipEvent], None] | None = None) -> None:
        self.agent = agent
        self.on_event: Callable[[SipEvent], None] = on_event or (lambda event: None)
        """Where the agent's events go: the transaction user (the recorder)."""
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pumping = False
        self._udp: list[asyncio.DatagramTransport] = []
        self._servers: list[tuple[str, asyncio.Server]] = []
        self._connections: dict[int, asyncio.Transport] = {}
        self._next_connection = 0
        self.stats = {"send_failures": 0, "handler_errors": 0, "stream_errors": 0}

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

    def receive(self, data: bytes, peer: Peer) -> None:
        try:
            self.agent.receive(data, peer, self._loop.time())
        except Exception:  # noqa: BLE001 - one bad message must not stop the listener
            self.stats["handler_errors"] += 1
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
                        self.stats["handler_errors"] += 1
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
            self.stats["handler_errors"] += 1
            log.exception("sip_timer_failed")
        self.pump()

    def _send(self, message: Outgoing) -> None:
        peer = message.peer
        if peer.connection is not None:
            conn = self._connections.get(peer.connection)
            if conn is None or conn.is_closing():
                self.stats["send_failures"] += 1
                log.warning("sip_send_connection_gone", transport=peer.transport)
                return
            conn.write(message.data)
            return
        if peer.transport != "udp" or not self._udp:
            self.stats["send_failures"] += 1
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
            self.stats["send_failures"] += 1
            log.warning("sip_send_resolve_failed")
            return
        host, port = str(infos[0][4][0]), int(infos[0][4][1])
        self._udp_for(host).sendto(message.data, (host, port))

    # ---------------------------------------------------------------- stream connections

    def _stream_protocol_factory(self, kind: str) -> Callable[[], asyncio.Protocol]:
        return lambda: _StreamProtocol(self, kind)

    def _register(self, transport: asyncio.Transport) -> int:
        self._next_connection += 1
        self._connections[self._next_connection] = transport
        return self._next_connection

    def _unregister(self, connection: int) -> None:
        self._connections.pop(connection, None)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: SipEndpoint) -> None:
        self._endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if not data.strip(b"\r\n\x00 "):
            return  # keep-alive datagrams (CRLF, NUL, empty)
        self._endpoint.receive(data, Peer("udp", addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable for a response or BYE: nothing to do but count it.
        self._endpoint.stats["send_failures"] += 1


class _StreamProtocol(asyncio.Protocol):
    def __init__(self, endpoint: SipEndpoint, kind: str) -> None:
        self._endpoint = endpoint
        self._kind = kind
        self._framer = StreamFramer()
        self._transport: asyncio.Transport | None = None
        self._peer: Peer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP/TLS transports are not subclasses of asyncio.Transport: no isinstance.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        connection = self._endpoint._register(transport)
        host, port = transport.get_extra_info("peername")[:2]
        self._peer = Peer(self._kind, host, port, connection)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None and self._peer is not None
        try:
            messages = self._framer.feed(data)
        except SipParseError as exc:
            self._endpoint.stats["stream_errors"] += 1
            log.warning("sip_stream_framing_error", reason=exc.reason, transport=self._kind)
            self._transport.close()
            return
        if self._framer.pings:
            self._framer.pings = 0
            self._transport.write(b"\r\n")  # RFC 5626 §4.4.1 pong
        for message in messages:
            self._endpoint.receive(message, self._peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer is not None and self._peer.connection is not None:
            self._endpoint._unregister(self._peer.connection)
