"""The asyncio edge of SIP: one link per transport (a UDP socket or a TCP connection) shared
by every call of a run and routing messages by Call-ID, and per call a SrcDialog on that link
with small client transactions (RFC 3261 17.1: retransmission on T1 doubling over UDP)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Final

from siprec_server.sip.message import (
    SipParseError,
    SipRequest,
    SipResponse,
    StreamFramer,
    build_response,
    parse_message,
)
from siprec_server.tools.siprec_client.dialog import SrcDialog
from siprec_server.tools.siprec_client.reports import SipExchange

T1: Final = 0.5
"""RFC 3261 timer T1: the first UDP retransmission interval."""
T2: Final = 4.0
"""RFC 3261 timer T2: the cap of non-INVITE retransmission intervals."""


class SipLink:
    """One SIP transport towards the server (a UDP socket or a TCP connection), shared by
    every call of a run; messages are routed to calls by Call-ID."""

    def __init__(self, transport: str, server: tuple[str, int], local_host: str) -> None:
        self.transport = transport
        self.server = server
        self.local_host = local_host
        self.local_port = 0
        self._calls: dict[str, SipDialog] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None
        self.closed_reason: str | None = None
        self.parse_errors = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        if self.transport == "udp":
            link = self

            class _Protocol(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
                    link._received(data, datagram=True)

                def error_received(self, exc: Exception) -> None:
                    pass  # ICMP errors: the transactions time out and say so

            udp, _ = await loop.create_datagram_endpoint(
                _Protocol, local_addr=(self.local_host, 0)
            )
            self._udp = udp
            self.local_port = udp.get_extra_info("sockname")[1]
        else:
            reader, writer = await asyncio.open_connection(
                self.server[0], self.server[1], local_addr=(self.local_host, 0)
            )
            self._writer = writer
            self.local_port = writer.get_extra_info("sockname")[1]
            self._reader = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        framer = StreamFramer()
        try:
            while data := await reader.read(65536):
                for message in framer.feed(data):
                    self._received(message, datagram=False)
            self.closed_reason = "connection closed by the server"
        except (SipParseError, OSError) as exc:
            self.closed_reason = f"connection failed: {exc}"
        for dialog in list(self._calls.values()):
            dialog.connection_lost(self.closed_reason or "connection lost")

    def _received(self, data: bytes, *, datagram: bool) -> None:
        try:
            message = parse_message(data, datagram=datagram)
        except SipParseError:
            self.parse_errors += 1
            return
        dialog = self._calls.get(message.call_id)
        if dialog is not None:
            dialog.received(message)
        elif isinstance(message, SipRequest) and message.method != "ACK":
            self.send(build_response(message, 481).to_bytes())

    def attach(self, dialog: SipDialog) -> None:
        self._calls[dialog.call_id] = dialog

    def detach(self, dialog: SipDialog) -> None:
        self._calls.pop(dialog.call_id, None)

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"

    def send(self, data: bytes) -> None:
        if self._udp is not None:
            self._udp.sendto(data, self.server)
        elif self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class _Transaction:
    __slots__ = ("cseq", "final", "method", "provisional_at", "transmissions")

    def __init__(self, method: str, cseq: int) -> None:
        self.method = method
        self.cseq = cseq
        self.final: asyncio.Future[SipResponse | None] = (
            asyncio.get_running_loop().create_future()
        )
        """The final response; None when the connection was lost."""
        self.provisional_at: float | None = None
        self.transmissions = 0


class SipDialog:
    """A SrcDialog on a SIP link: client transactions, and answers to the recorder's requests."""

    def __init__(self, link: SipLink, timeout: float, started: float) -> None:
        self.link = link
        self.state = SrcDialog(
            transport=link.transport, local=(link.local_host, link.local_port),
            server=link.server,
        )
        self.call_id = self.state.call_id
        self.timeout = timeout
        self.started = started
        self._pending: dict[tuple[int, str], _Transaction] = {}
        self._acks: dict[int, bytes] = {}
        self.ended_by_server = False
        self.lost: str | None = None
        self.current_sdp: bytes = b""

    async def transact(self, request: SipRequest) -> tuple[SipResponse | None, SipExchange]:
        """Send a request and wait for its final response, or `timeout`.

        Over UDP the request is retransmitted on T1 doubling (RFC 3261 17.1.1.2 / 17.1.2.2):
        an INVITE until anything comes back, other requests with the interval capped at T2.
        """
        cseq, method = request.cseq
        txn = _Transaction(method, cseq)
        self._pending[(cseq, method)] = txn
        data = request.to_bytes()
        sent = time.monotonic()
        deadline = sent + self.timeout
        interval = T1
        next_send = sent + interval
        self.link.send(data)
        txn.transmissions = 1
        try:
            while not txn.final.done() and self.lost is None:
                now = time.monotonic()
                if now >= deadline:
                    break
                retransmit = not self.link.reliable and not (
                    method == "INVITE" and txn.provisional_at is not None
                )
                if retransmit and now >= next_send:
                    self.link.send(data)
                    txn.transmissions += 1
                    interval = interval * 2 if method == "INVITE" else min(interval * 2, T2)
                    next_send = now + interval
                wake = min(deadline, next_send) if retransmit else deadline
                await asyncio.wait([txn.final], timeout=max(0.0, wake - now))
        finally:
            self._pending.pop((cseq, method), None)
        response = txn.final.result() if txn.final.done() else None
        final_at = time.monotonic() if response is not None else None
        reason = self.lost or "timeout"
        exchange = SipExchange(
            method=method,
            cseq=cseq,
            sent_after=sent - self.started,
            status=response.status if response else None,
            reason=response.reason if response else reason,
            provisional_after=None if txn.provisional_at is None
            else txn.provisional_at - self.started,
            final_after=None if final_at is None else final_at - self.started,
            transmissions=txn.transmissions,
        )
        return response, exchange

    def ack(self, invite: SipRequest, response: SipResponse) -> None:
        ack = self.state.ack(invite, response).to_bytes()
        if 200 <= response.status < 300:
            self._acks[invite.cseq[0]] = ack
        self.link.send(ack)

    def received(self, message: SipRequest | SipResponse) -> None:
        if isinstance(message, SipResponse):
            self._response(message)
        else:
            self._request(message)

    def _response(self, response: SipResponse) -> None:
        try:
            key = response.cseq
        except SipParseError:
            return
        txn = self._pending.get(key)
        if txn is None:
            # A retransmitted 2xx to an INVITE we ACKed already: ACK again (RFC 3261 13.2.2.4).
            if key[1] == "INVITE" and 200 <= response.status < 300 and key[0] in self._acks:
                self.link.send(self._acks[key[0]])
            return
        if response.status < 200:
            if txn.provisional_at is None:
                txn.provisional_at = time.monotonic()
        elif not txn.final.done():
            txn.final.set_result(response)

    def _request(self, request: SipRequest) -> None:
        if request.method == "ACK":
            return
        headers: list[tuple[str, str]] = []
        body = b""
        status = 200
        if request.method == "BYE":
            self.ended_by_server = True
        elif request.method == "INVITE":
            # A refresh or an offer from the recorder: answer with what we send.
            headers = [("Contact", self.state.contact), ("Content-Type", "application/sdp")]
            body = self.current_sdp
        elif request.method not in ("OPTIONS", "UPDATE", "INFO"):
            status = 501
        response = build_response(request, status, to_tag=self.state.from_tag, headers=headers,
                                  body=body)
        self.link.send(response.to_bytes())

    def connection_lost(self, reason: str) -> None:
        self.lost = reason
        for txn in self._pending.values():
            if not txn.final.done():
                txn.final.set_result(None)
