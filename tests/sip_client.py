"""A small SIP client for tests: sends real datagrams/stream bytes to the server and reads what
comes back. It plays the SRC (an SBC) side: INVITE, ACK, re-INVITE, UPDATE, BYE, CANCEL."""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass, field

from siprec_server.sip.message import (
    SipRequest,
    SipResponse,
    StreamFramer,
    parse_message,
)
from tests.interop import INTEROP_DIR

INTEROP = INTEROP_DIR
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")


def interop_case(name: str) -> bytes:
    return (INTEROP / f"{name}.sip").read_bytes()


def set_content_length(message: bytes) -> bytes:
    """Recompute Content-Length after a rewrite changed the body's size."""
    head, _, body = message.partition(b"\r\n\r\n")
    lines = [
        line
        for line in head.split(b"\r\n")
        if not re.match(rb"(?i)(content-length|l)\s*:", line)
    ]
    lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def set_header(message: bytes, name: str, value: str) -> bytes:
    """Replace (or add) a header in a raw message, keeping everything else byte for byte."""
    head, _, body = message.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    pattern = re.compile(rb"(?i)" + re.escape(name.encode()) + rb"\s*:")
    replaced = False
    out = []
    for line in lines:
        if pattern.match(line):
            if not replaced:
                out.append(f"{name}: {value}".encode())
                replaced = True
            continue
        out.append(line)
    if not replaced:
        out.insert(1, f"{name}: {value}".encode())
    return b"\r\n".join(out) + b"\r\n\r\n" + body


def to_loopback(message: bytes, *, transport: str, port: int, branch: str | None = None) -> bytes:
    """Every IPv4 address becomes 127.0.0.1; the top Via names our socket so answers reach us."""
    head, _, body = message.partition(b"\r\n\r\n")
    head = _IPV4.sub("127.0.0.1", head.decode("utf-8", "surrogateescape")).encode(
        "utf-8", "surrogateescape")
    # Only the SDP's addresses move; the metadata keeps the parties' AORs as they were.
    lines = [
        _IPV4.sub("127.0.0.1", line.decode("latin-1")).encode("latin-1")
        if line[:2] in (b"c=", b"o=") else line
        for line in body.split(b"\r\n")
    ]
    out = head + b"\r\n\r\n" + b"\r\n".join(lines)
    out = _contact_to(out, port)
    branch = branch or "z9hG4bK" + secrets.token_hex(6)
    out = set_header(out, "Via", f"SIP/2.0/{transport.upper()} 127.0.0.1:{port};branch={branch};rport")
    return set_content_length(out)


_CONTACT_HOSTPORT = re.compile(
    rb"(?im)^((?:contact|m)\s*:[^<\r\n]*<?sips?:(?:[^@>;\r\n]*@)?)([^;>\r\n]+)"
)


def _contact_to(message: bytes, port: int) -> bytes:
    """Point the Contact's host:port at our socket, keeping the vendor's parameters (+sip.src
    inside or outside the brackets, ;src) that the recorder must recognise."""
    return _CONTACT_HOSTPORT.sub(lambda m: m.group(1) + f"127.0.0.1:{port}".encode(), message, 1)


@dataclass
class Dialog:
    call_id: str
    from_header: str
    to_header: str
    """With the SRS's tag."""
    request_uri: str
    cseq: int
    route: list[str] = field(default_factory=list)


class SipTestClient:
    """One socket (UDP, or a TCP connection) to the server."""

    def __init__(self, transport: str, server: tuple[str, int],
                 local_host: str = "127.0.0.1") -> None:
        self.transport = transport
        self.server = server
        self.local_host = local_host
        self.port = 0
        self._queue: asyncio.Queue[SipRequest | SipResponse] = asyncio.Queue()
        self._udp: asyncio.DatagramTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SipTestClient:
        loop = asyncio.get_running_loop()
        if self.transport == "udp":
            queue = self._queue

            class Proto(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: object) -> None:
                    queue.put_nowait(parse_message(data))

            transport, _ = await loop.create_datagram_endpoint(
                Proto, local_addr=(self.local_host, 0)
            )
            self._udp = transport  # type: ignore[assignment]
            self.port = transport.get_extra_info("sockname")[1]
        else:
            reader, writer = await asyncio.open_connection(
                *self.server, local_addr=(self.local_host, 0))
            self._writer = writer
            self.port = writer.get_extra_info("sockname")[1]
            self._reader_task = asyncio.create_task(self._read_stream(reader))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._udp:
            self._udp.close()
        if self._writer:
            self._writer.close()
        if self._reader_task:
            self._reader_task.cancel()

    async def _read_stream(self, reader: asyncio.StreamReader) -> None:
        framer = StreamFramer()
        while data := await reader.read(65536):
            for message in framer.feed(data):
                self._queue.put_nowait(parse_message(message, datagram=False))

    def send(self, data: bytes) -> None:
        if self._udp:
            self._udp.sendto(data, self.server)
        else:
            assert self._writer is not None
            self._writer.write(data)

    async def receive(self, timeout: float = 5.0) -> SipRequest | SipResponse:
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def response(
        self, method: str | None = None, *, final: bool = True, timeout: float = 5.0
    ) -> SipResponse:
        """The next response (skipping provisional ones when `final`) for `method`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            message = await self.receive(max(0.01, deadline - loop.time()))
            if not isinstance(message, SipResponse):
                continue
            if method and message.cseq[1] != method:
                continue
            if final and message.status < 200:
                continue
            return message

    async def no_message(self, within: float) -> bool:
        try:
            await self.receive(within)
        except TimeoutError:
            return True
        return False

    # ------------------------------------------------------------------ SRC behaviour

    def via(self) -> str:
        return f"SIP/2.0/{self.transport.upper()} 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport"

    async def invite(self, raw: bytes) -> tuple[SipResponse, Dialog | None]:
        """Send an (interop) INVITE rewritten to loopback; ACK a final answer."""
        message = to_loopback(raw, transport=self.transport, port=self.port)
        request = parse_message(message)
        assert isinstance(request, SipRequest)
        self.send(message)
        response = await self.response("INVITE")
        dialog = None
        if 200 <= response.status < 300:
            contact = response.headers.get("Contact") or ""
            target = contact[contact.find("<") + 1 : contact.find(">")]
            dialog = Dialog(
                call_id=request.call_id,
                from_header=request.headers.get("From") or "",
                to_header=response.headers.get("To") or "",
                request_uri=target,
                cseq=request.cseq[0],
            )
            self.send(self.ack(dialog, request.cseq[0]))
        elif response.status >= 300:
            self.send(self._ack_error(request, response))
        return response, dialog

    def ack(self, dialog: Dialog, cseq: int) -> bytes:
        return self.request("ACK", dialog, cseq=cseq)

    def _ack_error(self, invite: SipRequest, response: SipResponse) -> bytes:
        lines = [
            f"ACK {invite.uri} SIP/2.0",
            f"Via: {invite.headers.get('Via')}",
            f"From: {invite.headers.get('From')}",
            f"To: {response.headers.get('To')}",
            f"Call-ID: {invite.call_id}",
            f"CSeq: {invite.cseq[0]} ACK",
            "Max-Forwards: 70",
            "Content-Length: 0",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def request(
        self,
        method: str,
        dialog: Dialog,
        *,
        cseq: int | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> bytes:
        if cseq is None:
            dialog.cseq += 1
            cseq = dialog.cseq
        lines = [
            f"{method} {dialog.request_uri} SIP/2.0",
            f"Via: {self.via()}",
            f"From: {dialog.from_header}",
            f"To: {dialog.to_header}",
            f"Call-ID: {dialog.call_id}",
            f"CSeq: {cseq} {method}",
            "Max-Forwards: 70",
            f"Contact: <sip:src@127.0.0.1:{self.port}>;+sip.src",
        ]
        for name, value in headers or []:
            lines.append(f"{name}: {value}")
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def in_dialog(self, raw: bytes, dialog: Dialog) -> bytes:
        """An interop in-dialog request (re-INVITE, UPDATE) put into our live dialog."""
        message = to_loopback(raw, transport=self.transport, port=self.port)
        message = set_header(message, "To", dialog.to_header)
        message = set_header(message, "From", dialog.from_header)
        message = set_header(message, "Call-ID", dialog.call_id)
        request = parse_message(message)
        assert isinstance(request, SipRequest)
        dialog.cseq = max(dialog.cseq + 1, request.cseq[0])
        return set_header(message, "CSeq", f"{dialog.cseq} {request.method}")

    async def bye(self, dialog: Dialog) -> SipResponse:
        self.send(self.request("BYE", dialog))
        return await self.response("BYE")
