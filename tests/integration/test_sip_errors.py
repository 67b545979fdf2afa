"""The SRS on the error paths, over real sockets against a running server: malformed and hostile
requests, requests it must refuse (RFC 3261 420/415/405/481, RFC 3264 488, RFC 4028 422, 503
when full), the CANCEL and re-INVITE races, and session timers.

Whatever the request, the server answers as the RFCs say or stays silent when no answer can be
built, never holds a recording open or an RTP port for a refused session, and still records the
next normal call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from siprec_server.app import RunningServer, start_server
from siprec_server.config import load_config
from siprec_server.sip.message import SipRequest, SipResponse, parse_message
from storage import recordings
from tests.integration.conftest import server_env, sip_address
from tests.sip_client import Dialog, SipTestClient, interop_case

BOUNDARY = "srs-test-boundary"

TWO_STREAMS_SDP = (
    "v=0\r\n"
    "o=SBC 1 1 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 8\r\n"
    "a=label:1\r\n"
    "a=sendonly\r\n"
    "m=audio 40002 RTP/AVP 0 8\r\n"
    "a=label:2\r\n"
    "a=sendonly\r\n"
)

METADATA = (
    '<?xml version="1.0" encoding="UTF-8"?>\r\n'
    '<recording xmlns="urn:ietf:params:xml:ns:recording:1">\r\n'
    "<datamode>complete</datamode>\r\n"
    '<session session_id="err-session"/>\r\n'
    '<participant participant_id="p1"><nameID aor="sip:caller@example.com"/></participant>\r\n'
    '<participant participant_id="p2"><nameID aor="sip:agent@example.com"/></participant>\r\n'
    '<stream stream_id="s1" session_id="err-session"><label>1</label></stream>\r\n'
    '<stream stream_id="s2" session_id="err-session"><label>2</label></stream>\r\n'
    '<participantstreamassoc participant_id="p1"><send>s1</send></participantstreamassoc>\r\n'
    '<participantstreamassoc participant_id="p2"><send>s2</send></participantstreamassoc>\r\n'
    "</recording>\r\n"
)


def multipart(sdp: str | None = TWO_STREAMS_SDP, metadata: str | None = METADATA) -> bytes:
    parts = []
    if sdp is not None:
        parts.append(f"--{BOUNDARY}\r\nContent-Type: application/sdp\r\n\r\n{sdp}")
    if metadata is not None:
        parts.append(
            f"--{BOUNDARY}\r\nContent-Type: application/rs-metadata+xml\r\n"
            f"Content-Disposition: recording-session\r\n\r\n{metadata}"
        )
    return ("\r\n".join(parts) + f"\r\n--{BOUNDARY}--\r\n").encode()


def invite(
    src: SipTestClient,
    *,
    call_id: str | None = None,
    body: bytes | None = None,
    content_type: str = f"multipart/mixed;boundary={BOUNDARY}",
    headers: tuple[tuple[str, str], ...] = (),
    branch: str | None = None,
    require: str = "siprec",
) -> bytes:
    """A SIPREC INVITE from `src` (RFC 7866 6.1: Require: siprec, +sip.src)."""
    body = multipart() if body is None else body
    host, port = src.server
    lines = [
        f"INVITE sip:srs@{host}:{port} SIP/2.0",
        f"Via: SIP/2.0/{src.transport.upper()} 127.0.0.1:{src.port};"
        f"branch={branch or 'z9hG4bK' + secrets.token_hex(6)};rport",
        f"From: <sip:src@127.0.0.1>;tag={secrets.token_hex(4)}",
        f"To: <sip:srs@{host}>",
        f"Call-ID: {call_id or secrets.token_hex(8)}@127.0.0.1",
        "CSeq: 1 INVITE",
        "Max-Forwards: 70",
        f"Contact: <sip:src@127.0.0.1:{src.port}>;+sip.src",
    ]
    if require:
        lines.append(f"Require: {require}")
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def out_of_dialog(
    src: SipTestClient,
    method: str,
    *,
    headers: tuple[tuple[str, str], ...] = (),
    omit: tuple[str, ...] = (),
    cseq: str | None = None,
    body: bytes = b"",
    content_length: int | None = None,
) -> bytes:
    host, port = src.server
    fields = [
        ("Via", f"SIP/2.0/{src.transport.upper()} 127.0.0.1:{src.port};"
                f"branch=z9hG4bK{secrets.token_hex(6)};rport"),
        ("From", f"<sip:src@127.0.0.1>;tag={secrets.token_hex(4)}"),
        ("To", f"<sip:srs@{host}>"),
        ("Call-ID", f"{secrets.token_hex(8)}@127.0.0.1"),
        ("CSeq", cseq or f"1 {method}"),
        ("Max-Forwards", "70"),
        *headers,
        ("Content-Length", str(len(body) if content_length is None else content_length)),
    ]
    lines = [f"{method} sip:srs@{host}:{port} SIP/2.0"]
    lines += [f"{name}: {value}" for name, value in fields if name not in omit]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def answer_to(src: SipTestClient, data: bytes, timeout: float = 2.0) -> SipResponse | None:
    """Send one request; its final response, or None when the server stays silent."""
    call_id = re.search(rb"(?im)^call-id: *(\S+)", data)
    src.send(data)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            response = await src.response(timeout=max(0.01, deadline - loop.time()))
            if call_id is None or response.call_id.encode() == call_id.group(1):
                return response
    except TimeoutError:
        return None


async def nothing_held(srv: RunningServer) -> None:
    """No refused or finished session keeps a recording open, a session slot or an RTP port."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while loop.time() < deadline:
        open_rows = await srv.db.fetchval(
            "SELECT count(*) FROM recordings WHERE state IN ('offered', 'recording')")
        if (open_rows, srv.recorder.active_sessions, srv.media.ports_in_use) == (0, 0, 0):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"held: open recordings={open_rows}, sessions={srv.recorder.active_sessions}, "
        f"ports={srv.media.ports_in_use}")


async def recording_count(srv: RunningServer) -> int:
    return int(await srv.db.fetchval("SELECT count(*) FROM recordings"))


async def wait_for_state(srv: RunningServer, call_id: str, *states: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while loop.time() < deadline:
        ids = await recordings.find_by_call_id(srv.db, call_id)
        if ids:
            row = await recordings.get_recording(srv.db, ids[-1])
            if row and row["state"] in states:
                return row
        await asyncio.sleep(0.02)
    raise AssertionError(f"recording of {call_id} never reached {states}")


async def complete_call(srv: RunningServer, transport: str) -> None:
    """A normal SIPREC call (the RFC 7866 example) is answered, recorded and finished."""
    async with SipTestClient(transport, sip_address(srv, transport)) as src:
        response, dialog = await src.invite(interop_case("rfc7866_1"))
        assert response.status == 200, response.reason
        assert dialog is not None
        assert (await src.bye(dialog)).status == 200
        await wait_for_state(srv, dialog.call_id, "complete")


def free_port_block(size: int) -> int:
    """An even port where `size` consecutive UDP ports are free right now."""
    for _ in range(200):
        first = 2 * secrets.randbelow(8_000) + 40_000
        sockets = []
        try:
            for port in range(first, first + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind(("0.0.0.0", port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free port block")


@contextlib.asynccontextmanager
async def own_server(
    db_dsn: str, data_dir: Path, *, rtp_ports: int = 40, **overrides: str
) -> AsyncIterator[RunningServer]:
    """A server on an RTP port range of its own: other processes on this machine (other test
    runs) may hold ports of the default range, and the port counts checked here must be ours."""
    if "media__rtp_port_min" not in overrides:
        first = free_port_block(rtp_ports)
        overrides |= {"media__rtp_port_min": str(first),
                      "media__rtp_port_max": str(first + rtp_ports - 1)}
    srv = await start_server(load_config(env=server_env(db_dsn, data_dir, **overrides)))
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def server(db_dsn: str, data_dir: Path) -> AsyncIterator[RunningServer]:
    """conftest's server, but with an RTP port range nobody else holds (see own_server)."""
    async with own_server(db_dsn, data_dir) as srv:
        yield srv


async def invite_as_is(src: SipTestClient, data: bytes) -> tuple[SipResponse, Dialog | None]:
    """SipTestClient.invite without its loopback rewrite, which would change the branch."""
    request = parse_request(data)
    src.send(data)
    response = await src.response("INVITE")
    if response.status >= 300:
        src.send(src._ack_error(request, response))
        return response, None
    contact = response.headers.get("Contact") or ""
    dialog = Dialog(call_id=request.call_id, from_header=request.headers.get("From") or "",
                    to_header=response.headers.get("To") or "",
                    request_uri=contact[contact.find("<") + 1 : contact.find(">")],
                    cseq=request.cseq[0])
    src.send(src.ack(dialog, dialog.cseq))
    return response, dialog


VIDEO_ONLY_SDP = (
    "v=0\r\no=SBC 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=video 40000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=label:1\r\na=sendonly\r\n"
)


def parse_request(data: bytes) -> SipRequest:
    request = parse_message(data)
    assert isinstance(request, SipRequest)
    return request


def headers_of(response: SipResponse, name: str) -> set[str]:
    return {t.lower() for t in response.headers.tokens(name)}


# ---------------------------------------------------------------------------- malformed input


async def test_malformed_datagrams_get_400_or_silence_and_calls_go_on(
    server: RunningServer,
) -> None:
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        silent = {
            "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not SIP at all\r\n\r\n",
            "no start line": b"\r\n\r\nVia: x\r\n\r\n",
            "missing Call-ID": out_of_dialog(src, "OPTIONS", omit=("Call-ID",)),
            "missing Via": out_of_dialog(src, "OPTIONS", omit=("Via",)),
            # Far beyond any sane header block (the server's limit is 32 KB).
            "64 KB of headers": out_of_dialog(
                src, "OPTIONS", headers=tuple(("X-Pad", "x" * 1000) for _ in range(64))),
        }
        for case, data in silent.items():
            assert await answer_to(src, data, timeout=0.3) is None, case
        respondable = {
            # RFC 3261 8.2.6: every one of these can still carry an error response back.
            "CSeq method differs from the request's": out_of_dialog(
                src, "OPTIONS", cseq="1 INVITE"),
            "Content-Length larger than the datagram": out_of_dialog(
                src, "OPTIONS", body=b"v=0\r\n", content_length=500),
            "Content-Length not a number": out_of_dialog(src, "OPTIONS").replace(
                b"Content-Length: 0", b"Content-Length: lots"),
            "Max-Forwards not a number": out_of_dialog(src, "OPTIONS").replace(
                b"Max-Forwards: 70", b"Max-Forwards: many"),
            "header line without a colon": out_of_dialog(src, "OPTIONS").replace(
                b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nthis line has no colon\r\n"),
            "Request-URI that is no URI": out_of_dialog(src, "OPTIONS").replace(
                f"OPTIONS sip:srs@{src.server[0]}:{src.server[1]} ".encode(), b"OPTIONS srs ", 1),
        }
        for case, data in respondable.items():
            response = await answer_to(src, data)
            assert response is not None and response.status == 400, case
            assert response.reason, "a 400 says what was wrong"
        # A CSeq without a number matches no transaction: a 400 or silence are both fine.
        response = await answer_to(src, out_of_dialog(src, "OPTIONS", cseq="one OPTIONS"), 0.3)
        assert response is None or response.status == 400
        # SIP/3.0: 505 Version Not Supported (RFC 3261 21.5.7).
        response = await answer_to(src, out_of_dialog(src, "OPTIONS").replace(
            b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1))
        assert response is not None and response.status == 505
        # IPv4 UDP carries at most 65,507 bytes: a 70 KB datagram never leaves the sender.
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with probe, pytest.raises(OSError):
            probe.sendto(b"x" * 70_000, sip_address(server, "udp"))
    for transport in ("udp", "tcp"):
        await complete_call(server, transport)
    await nothing_held(server)


async def test_broken_tcp_streams_are_closed_and_others_keep_working(
    server: RunningServer,
) -> None:
    address = sip_address(server, "tcp")

    async def closed_without_answer(data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(*address)
        try:
            writer.write(data)
            await writer.drain()
            # The server drops the connection; whatever it said before, if anything, is here.
            return await asyncio.wait_for(reader.read(), timeout=3)
        finally:
            writer.close()

    async with SipTestClient("tcp", address) as src:
        # A stream cannot be re-synchronised once a length is unreadable (RFC 3261 18.3).
        bad_length = out_of_dialog(src, "OPTIONS").replace(
            b"Content-Length: 0", b"Content-Length: abc")
        assert b"SIP/2.0 200" not in await closed_without_answer(bad_length)
        # A 70 KB request whose header block never ends.
        huge = b"OPTIONS sip:srs@127.0.0.1 SIP/2.0\r\n" + b"X-Pad: " + b"y" * 70_000
        assert b"SIP/2.0 200" not in await closed_without_answer(huge)
        # A framed request with one bad header line is answered 400 and the stream goes on.
        response = await answer_to(src, out_of_dialog(
            src, "OPTIONS", headers=(("Bad Header Name", "1"),)))
        assert response is not None and response.status == 400
        response = await answer_to(src, out_of_dialog(src, "OPTIONS"))
        assert response is not None and response.status == 200
    await complete_call(server, "tcp")
    await nothing_held(server)


# ---------------------------------------------------------------------------- refusals


async def test_unknown_require_gets_420_with_unsupported(server: RunningServer) -> None:
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        response, dialog = await src.invite(invite(src, require="siprec, 100rel-x, foo"))
        assert response.status == 420 and dialog is None
        assert headers_of(response, "Unsupported") == {"100rel-x", "foo"}
    assert await recording_count(server) == 0
    await nothing_held(server)


async def test_unsupported_body_type_gets_415_with_accept(server: RunningServer) -> None:
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        response, dialog = await src.invite(
            invite(src, body=b"record this call please\r\n", content_type="text/plain"))
        assert response.status == 415 and dialog is None
        accept = headers_of(response, "Accept")
        assert {"application/sdp", "application/rs-metadata+xml", "multipart/mixed"} <= accept
    assert await recording_count(server) == 0
    await nothing_held(server)


@pytest.mark.parametrize(
    "sdp",
    [
        pytest.param(VIDEO_ONLY_SDP, id="video only"),
        pytest.param(
            "v=0\r\no=SBC 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio 40000 RTP/AVP 97 98\r\na=rtpmap:97 AMR-WB/16000\r\n"
            "a=rtpmap:98 X-UNKNOWN/8000\r\na=label:1\r\na=sendonly\r\n"
            "m=audio 40002 RTP/AVP 97\r\na=rtpmap:97 AMR-WB/16000\r\na=label:2\r\na=sendonly\r\n",
            id="unknown codecs only"),
    ],
)
async def test_offer_without_any_acceptable_stream_gets_488(
    server: RunningServer, sdp: str
) -> None:
    async with SipTestClient("tcp", sip_address(server, "tcp")) as src:
        response, dialog = await src.invite(invite(src, body=multipart(sdp=sdp)))
        assert response.status == 488 and dialog is None
        assert response.headers.get("Warning"), "say why in a Warning (RFC 3261 20.43)"
    assert await recording_count(server) == 0
    await nothing_held(server)


async def test_hostile_metadata_is_refused_fast_without_fetching(server: RunningServer) -> None:
    fetched: list[bytes] = []

    async def trap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fetched.append(await reader.read(100))
        writer.close()

    # The external entity points at this listener: a connection would prove a fetch.
    listener = await asyncio.start_server(trap, "127.0.0.1", 0)
    trap_port = listener.sockets[0].getsockname()[1]
    laughs = (
        '<?xml version="1.0"?>\r\n<!DOCTYPE recording [\r\n<!ENTITY lol "lol">\r\n'
        + "".join(
            f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\r\n'
            for i in range(1, 10))
        + ']>\r\n<recording xmlns="urn:ietf:params:xml:ns:recording:1">'
        "<datamode>complete</datamode><session session_id=\"a\">&lol9;</session></recording>\r\n"
    )
    external = (
        '<?xml version="1.0"?>\r\n'
        f'<!DOCTYPE recording [<!ENTITY ext SYSTEM "http://127.0.0.1:{trap_port}/secret">]>\r\n'
        '<recording xmlns="urn:ietf:params:xml:ns:recording:1">'
        '<datamode>complete</datamode><session session_id="a">&ext;</session></recording>\r\n'
    )
    loop = asyncio.get_running_loop()
    try:
        async with SipTestClient("udp", sip_address(server, "udp")) as src:
            for document in (laughs, external):
                started = loop.time()
                response, dialog = await src.invite(invite(src, body=multipart(metadata=document)))
                assert response.status == 400 and dialog is None
                assert loop.time() - started < 1.0
            assert await recording_count(server) == 0
            # In a running session the same documents are refused and the session goes on.
            response, dialog = await src.invite(invite(src))
            assert response.status == 200 and dialog is not None
            for document in (laughs, external):
                src.send(src.request("UPDATE", dialog, body=document.encode(),
                                     content_type="application/rs-metadata+xml",
                                     headers=[("Content-Disposition", "recording-session")]))
                assert (await src.response("UPDATE")).status == 400
            row = await wait_for_state(server, dialog.call_id, "recording")
            assert len(row["metadata_events"]) == 1
            assert (await src.bye(dialog)).status == 200
            await wait_for_state(server, dialog.call_id, "complete")
        await asyncio.sleep(0.2)
        assert fetched == []
    finally:
        listener.close()
        await listener.wait_closed()
    await nothing_held(server)


async def test_bye_for_unknown_dialog_gets_481(server: RunningServer) -> None:
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        ghost = Dialog(call_id="ghost@127.0.0.1", from_header="<sip:src@127.0.0.1>;tag=a1",
                       to_header=f"<sip:srs@127.0.0.1>;tag={secrets.token_hex(6)}",
                       request_uri="sip:srs@127.0.0.1", cseq=5)
        assert (await src.bye(ghost)).status == 481
        # Out of dialog (no To tag) a BYE matches no dialog either.
        response = await answer_to(src, out_of_dialog(src, "BYE"))
        assert response is not None and response.status == 481


async def test_unknown_method_gets_405_with_allow(server: RunningServer) -> None:
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        for method in ("PUBLISH", "SUBSCRIBE", "BREW"):
            response = await answer_to(src, out_of_dialog(src, method))
            assert response is not None and response.status == 405, method
            allow = {t.upper() for t in response.headers.tokens("Allow")}
            assert {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE"} <= allow


# ---------------------------------------------------------------------------- capacity


async def test_third_concurrent_session_gets_503_when_two_are_allowed(
    db_dsn: str, data_dir: Path
) -> None:
    async with own_server(db_dsn, data_dir, sip__max_sessions="2") as srv:
        async with SipTestClient("tcp", sip_address(srv, "tcp")) as src:
            requests = [invite(src) for _ in range(3)]
            # One write: three SIPREC INVITEs arrive together.
            src.send(b"".join(requests))
            answers = {}
            for _ in range(3):
                response = await src.response("INVITE")
                answers[response.call_id] = response
            statuses = [answers[parse_request(r).call_id].status for r in requests]
            assert statuses == [200, 200, 503]
            refused = answers[parse_request(requests[2]).call_id]
            retry_after = refused.headers.get("Retry-After") or ""
            assert retry_after.split(";")[0].strip().isdigit(), "the SBC fails over, retries later"
            src.send(src._ack_error(parse_request(requests[2]), refused))
            dialogs = []
            for request in requests[:2]:
                parsed = parse_request(request)
                response = answers[parsed.call_id]
                contact = response.headers.get("Contact") or ""
                dialog = Dialog(parsed.call_id, parsed.headers.get("From") or "",
                                response.headers.get("To") or "",
                                contact[contact.find("<") + 1 : contact.find(">")], 1)
                src.send(src.ack(dialog, 1))
                dialogs.append(dialog)
            # A finished session frees its slot at once.
            assert (await src.bye(dialogs.pop())).status == 200
            for _ in range(100):
                if srv.recorder.active_sessions == 1:
                    break
                await asyncio.sleep(0.02)
            response, again = await src.invite(invite(src))
            assert response.status == 200 and again is not None
            for open_dialog in (*dialogs, again):
                assert (await src.bye(open_dialog)).status == 200
        await nothing_held(srv)
        rows = await srv.db.fetch("SELECT state FROM recordings")
        assert sorted(r["state"] for r in rows) == ["complete"] * 3


async def test_call_that_needs_more_rtp_ports_than_left_gets_503(
    db_dsn: str, data_dir: Path
) -> None:
    # Room for exactly two RTP/RTCP pairs: first..first+3.
    async with own_server(db_dsn, data_dir, rtp_ports=4) as srv:
        async with SipTestClient("tcp", sip_address(srv, "tcp")) as src:
            three = TWO_STREAMS_SDP + "m=audio 40004 RTP/AVP 0\r\na=label:3\r\na=sendonly\r\n"
            response, dialog = await src.invite(invite(src, body=multipart(sdp=three)))
            assert response.status == 503 and dialog is None
            assert response.headers.get("Retry-After")
            assert srv.media.ports_in_use == 0, "the two pairs taken before failing are back"
            response, dialog = await src.invite(invite(src))
            assert response.status == 200 and dialog is not None
            assert srv.media.ports_in_use == 2
            second, other = await src.invite(invite(src))
            assert second.status == 503 and other is None
            assert srv.media.ports_in_use == 2
            assert (await src.bye(dialog)).status == 200
            await wait_for_state(srv, dialog.call_id, "complete")
            response, dialog = await src.invite(invite(src))
            assert response.status == 200 and dialog is not None
            assert (await src.bye(dialog)).status == 200
        await nothing_held(srv)


# ---------------------------------------------------------------------------- session timers


async def test_session_interval_below_min_se_gets_422(server: RunningServer) -> None:
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        response, dialog = await src.invite(invite(
            src, headers=(("Session-Expires", "60"), ("Supported", "timer"))))
        assert response.status == 422 and dialog is None
        assert response.headers.get("Min-SE") == "90"
    assert await recording_count(server) == 0
    await nothing_held(server)


async def test_session_timer_is_negotiated_and_refreshed_by_update(
    server: RunningServer,
) -> None:
    async with SipTestClient("tcp", sip_address(server, "tcp")) as src:
        response, dialog = await src.invite(invite(
            src, headers=(("Session-Expires", "90;refresher=uac"), ("Supported", "timer"),
                          ("Allow", "INVITE, ACK, BYE, CANCEL, UPDATE"))))
        assert response.status == 200 and dialog is not None
        # RFC 4028 9: the 2xx states the interval and who refreshes, and requires the timer.
        assert (response.headers.get("Session-Expires") or "").replace(" ", "") == (
            "90;refresher=uac")
        assert "timer" in headers_of(response, "Require")
        src.send(src.request("UPDATE", dialog, headers=[
            ("Session-Expires", "90;refresher=uac"), ("Supported", "timer")]))
        refresh = await src.response("UPDATE")
        assert refresh.status == 200
        assert refresh.body == b""
        assert (refresh.headers.get("Session-Expires") or "").startswith("90")
        row = await wait_for_state(server, dialog.call_id, "recording")
        assert len(row["metadata_events"]) == 1, "a refresh is no metadata"
        assert (await src.bye(dialog)).status == 200
        await wait_for_state(server, dialog.call_id, "complete")


# ---------------------------------------------------------------------------- races


async def test_second_reinvite_while_first_pending_gets_500_with_retry_after(
    server: RunningServer,
) -> None:
    async with SipTestClient("tcp", sip_address(server, "tcp")) as src:
        response, dialog = await src.invite(invite(src))
        assert response.status == 200 and dialog is not None
        body = multipart()
        content_type = f"multipart/mixed;boundary={BOUNDARY}"
        first = src.request("INVITE", dialog, body=body, content_type=content_type)
        first_cseq = dialog.cseq
        second = src.request("INVITE", dialog, body=body, content_type=content_type)
        update = src.request("UPDATE", dialog, body=TWO_STREAMS_SDP.encode(),
                             content_type="application/sdp")
        # One write: the server sees all three before it could answer the first.
        src.send(first + second + update)
        answers = {}
        for _ in range(3):
            final = await src.response()
            answers[final.cseq] = final
        assert answers[(first_cseq, "INVITE")].status == 200
        # RFC 3261 14.2 / RFC 3311 5.2: an offer while one is pending: 500 + Retry-After 0-10.
        for key in ((first_cseq + 1, "INVITE"), (first_cseq + 2, "UPDATE")):
            assert answers[key].status == 500, key
            assert 0 <= int(answers[key].headers.get("Retry-After") or "-1") <= 10
        src.send(src.ack(dialog, first_cseq))
        src.send(src._ack_error(parse_request(second), answers[(first_cseq + 1, "INVITE")]))
        assert (await src.bye(dialog)).status == 200
        await wait_for_state(server, dialog.call_id, "complete")


async def test_reinvite_before_ack_of_previous_2xx_gets_491(server: RunningServer) -> None:
    async with SipTestClient("tcp", sip_address(server, "tcp")) as src:
        response, dialog = await src.invite(invite(src))
        assert response.status == 200 and dialog is not None
        content_type = f"multipart/mixed;boundary={BOUNDARY}"
        src.send(src.request("INVITE", dialog, body=multipart(), content_type=content_type))
        first_cseq = dialog.cseq
        assert (await src.response("INVITE")).status == 200
        # Until its 2xx is acknowledged the previous INVITE transaction is not over: a new
        # re-INVITE gets 491 Request Pending (RFC 3261 14.2).
        glare = src.request("INVITE", dialog, body=multipart(), content_type=content_type)
        src.send(glare)
        response = await src.response("INVITE")
        assert response.status == 491
        src.send(src._ack_error(parse_request(glare), response))
        src.send(src.ack(dialog, first_cseq))
        assert (await src.bye(dialog)).status == 200
        await wait_for_state(server, dialog.call_id, "complete")


async def test_cancel_after_200_gets_200_only_and_the_call_goes_on(
    server: RunningServer,
) -> None:
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        branch = "z9hG4bK" + secrets.token_hex(6)
        request = invite(src, branch=branch)
        response, dialog = await invite_as_is(src, request)
        assert response.status == 200 and dialog is not None
        cancel = request.split(b"\r\n\r\n")[0].replace(b"INVITE sip:", b"CANCEL sip:", 1)
        cancel = cancel.replace(b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
        cancel = b"\r\n".join(line for line in cancel.split(b"\r\n")
                              if not line.startswith((b"Content-", b"Require", b"Contact")))
        src.send(cancel + b"\r\nContent-Length: 0\r\n\r\n")
        assert (await src.response("CANCEL")).status == 200
        # RFC 3261 9.2: the INVITE already has its final response; nothing changes.
        assert await src.no_message(0.3)
        row = await wait_for_state(server, dialog.call_id, "recording")
        assert row["end_reason"] is None
        assert (await src.bye(dialog)).status == 200
        await wait_for_state(server, dialog.call_id, "complete")
    await nothing_held(server)


async def test_cancelled_invite_gets_487_and_its_recording_fails_as_cancelled(
    server: RunningServer,
) -> None:
    async with SipTestClient("tcp", sip_address(server, "tcp")) as src:
        branch = "z9hG4bK" + secrets.token_hex(6)
        call_id = secrets.token_hex(8)
        request = invite(src, branch=branch, call_id=call_id)
        head = request.split(b"\r\n\r\n")[0]
        cancel = b"\r\n".join(
            line for line in head.replace(b"INVITE sip:", b"CANCEL sip:", 1)
            .replace(b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL").split(b"\r\n")
            if not line.startswith((b"Content-", b"Require", b"Contact"))
        ) + b"\r\nContent-Length: 0\r\n\r\n"
        # One write: the CANCEL is there before the SRS could have answered.
        src.send(request + cancel)
        assert (await src.response("CANCEL")).status == 200
        final = await src.response("INVITE")
        assert final.status == 487
        src.send(src._ack_error(parse_request(request), final))
        assert await src.no_message(0.3), "no 200 after the 487"
    # The recorder had already stored the offered session: it ends failed, reason cancelled.
    row = await wait_for_state(server, f"{call_id}@127.0.0.1", "failed")
    assert row["end_reason"] == "cancelled"
    assert row["answered_at"] is None and row["ended_at"] is not None
    await nothing_held(server)


async def test_bye_while_reinvite_pending_ends_it_with_487_and_frees_its_ports(
    server: RunningServer,
) -> None:
    async with SipTestClient("tcp", sip_address(server, "tcp")) as src:
        response, dialog = await src.invite(invite(src))
        assert response.status == 200 and dialog is not None
        three = TWO_STREAMS_SDP.replace("o=SBC 1 1", "o=SBC 1 2") + (
            "m=audio 40004 RTP/AVP 0\r\na=label:3\r\na=sendonly\r\n")
        reinvite = src.request("INVITE", dialog, body=multipart(sdp=three, metadata=None),
                               content_type=f"multipart/mixed;boundary={BOUNDARY}")
        # The SBC hangs up while its re-INVITE (a third stream) is still unanswered.
        src.send(reinvite + src.request("BYE", dialog))
        finals = [await src.response() for _ in range(2)]
        assert sorted((f.cseq[1], f.status) for f in finals) == [("BYE", 200), ("INVITE", 487)]
        src.send(src._ack_error(parse_request(reinvite),
                                next(f for f in finals if f.cseq[1] == "INVITE")))
        assert await src.no_message(0.3), "nothing after the 487: no late 200"
        row = await wait_for_state(server, dialog.call_id, "complete")
        assert row["end_reason"] == "bye"
    await nothing_held(server)


async def test_retransmitted_invite_makes_one_recording(server: RunningServer) -> None:
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        request = invite(src)
        # RFC 3261 17.2.1: a retransmission belongs to the same server transaction.
        src.send(request)
        response, dialog = await invite_as_is(src, request)
        assert response.status == 200 and dialog is not None
        await asyncio.sleep(0.2)
        assert len(await recordings.find_by_call_id(server.db, dialog.call_id)) == 1
        assert (await src.bye(dialog)).status == 200
        await wait_for_state(server, dialog.call_id, "complete")
    await nothing_held(server)


async def test_reinvite_without_acceptable_stream_gets_488_and_recording_goes_on(
    server: RunningServer,
) -> None:
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        response, dialog = await src.invite(invite(src))
        assert response.status == 200 and dialog is not None
        assert server.media.ports_in_use == 2
        before = await wait_for_state(server, dialog.call_id, "recording")
        request = src.request("INVITE", dialog, body=multipart(sdp=VIDEO_ONLY_SDP, metadata=None),
                              content_type=f"multipart/mixed;boundary={BOUNDARY}")
        src.send(request)
        response = await src.response("INVITE")
        # RFC 3261 14.2: a refused re-INVITE leaves the session as it was.
        assert response.status == 488
        src.send(src._ack_error(parse_request(request), response))
        after = await wait_for_state(server, dialog.call_id, "recording")
        assert [s["local_port"] for s in after["streams"]] == [
            s["local_port"] for s in before["streams"]]
        assert server.media.ports_in_use == 2
        assert (await src.bye(dialog)).status == 200
        await wait_for_state(server, dialog.call_id, "complete")
    await nothing_held(server)


async def test_refused_invites_leave_no_per_session_state_behind(server: RunningServer) -> None:
    """Regression: Recorder._discard (488, 503) used to leave the session's lock behind."""
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        for _ in range(5):
            response, _ = await src.invite(invite(src, body=multipart(sdp=VIDEO_ONLY_SDP)))
            assert response.status == 488
    await nothing_held(server)
    # Private, but the only place this grows: a flood of bad offers must not grow memory.
    assert len(server.recorder._locks) == 0


async def test_rtp_port_held_by_another_process_is_not_counted_as_ours(
    db_dsn: str, data_dir: Path
) -> None:
    """Regression: MediaService.allocate used to keep a port it could not bind counted as in
    use, for good."""
    first = free_port_block(6)
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with squatter:
        squatter.bind(("0.0.0.0", first))  # another program on the host took the first port
        async with own_server(db_dsn, data_dir, media__rtp_port_min=str(first),
                              media__rtp_port_max=str(first + 5)) as srv:
            async with SipTestClient("udp", sip_address(srv, "udp")) as src:
                response, dialog = await src.invite(invite(src))
                assert response.status == 200 and dialog is not None
                ports = [m.split()[1] for m in response.body.decode().splitlines()
                         if m.startswith("m=audio")]
                assert str(first) not in ports, "the squatted port is not offered"
                assert (await src.bye(dialog)).status == 200
                await wait_for_state(srv, dialog.call_id, "complete")
            assert srv.recorder.active_sessions == 0
            assert srv.media.ports_in_use == 0


# ---------------------------------------------------------------------------- what SRCs get wrong
# Issue 7.7: tolerated where the dialog is known without doubt (logged, counted); sip.strict
# keeps the RFC 3261 answers.


def unclosed_contact(data: bytes) -> bytes:
    """An INVITE of `invite()` whose Contact lacks its closing '>'."""
    fixed = re.sub(rb"(?m)^(Contact: <[^>\r\n]*)>", rb"\1", data, count=1)
    assert fixed != data
    return fixed


async def invite_unacknowledged(src: SipTestClient, data: bytes) -> tuple[SipResponse, Dialog]:
    """Send an INVITE, take its 200 and build the dialog, but send no ACK."""
    request = parse_request(data)
    src.send(data)
    response = await src.response("INVITE")
    assert response.status == 200, response.reason
    contact = response.headers.get("Contact") or ""
    return response, Dialog(call_id=request.call_id,
                            from_header=request.headers.get("From") or "",
                            to_header=response.headers.get("To") or "",
                            request_uri=contact[contact.find("<") + 1 : contact.find(">")],
                            cseq=request.cseq[0])


async def test_ack_with_wrong_cseq_and_no_to_tag_confirms_the_call_and_reinvite_is_answered(
    server: RunningServer,
) -> None:
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        _, dialog = await invite_unacknowledged(src, invite(src))
        # A script that numbers its ACK like a new request and forgets the SRS's To tag.
        untagged = dataclasses.replace(dialog, to_header=dialog.to_header.split(";tag=")[0])
        src.send(src.request("ACK", untagged, cseq=dialog.cseq + 1))
        # The 200 is acknowledged: not repeated (T1 = 500 ms), no BYE for want of an ACK.
        assert await src.no_message(1.2)
        content_type = f"multipart/mixed;boundary={BOUNDARY}"
        src.send(src.request("INVITE", dialog, body=multipart(), content_type=content_type))
        assert (await src.response("INVITE")).status == 200  # not 491
        src.send(src.ack(dialog, dialog.cseq))
        assert (await src.bye(dialog)).status == 200
        await wait_for_state(server, dialog.call_id, "complete")
    assert server.sip.agent.counters.tolerated_ack_mismatch == 1
    await nothing_held(server)


async def test_bye_with_a_cseq_below_the_last_reinvite_ends_the_recording_at_once(
    server: RunningServer,
) -> None:
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        response, dialog = await src.invite(invite(src))
        assert response.status == 200 and dialog is not None
        # CSeq counted per method: re-INVITE 10, then BYE 3.
        content_type = f"multipart/mixed;boundary={BOUNDARY}"
        src.send(src.request("INVITE", dialog, cseq=10, body=multipart(),
                             content_type=content_type))
        assert (await src.response("INVITE")).status == 200
        src.send(src.ack(dialog, 10))
        src.send(src.request("BYE", dialog, cseq=3))
        assert (await src.response("BYE")).status == 200
        # Ended now, not at the media inactivity timeout.
        row = await wait_for_state(server, dialog.call_id, "complete")
        assert row["end_reason"] == "bye"
    assert server.sip.agent.counters.tolerated_low_cseq_bye == 1
    await nothing_held(server)


async def test_contact_without_closing_bracket_is_recorded(server: RunningServer) -> None:
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        response, dialog = await invite_as_is(src, unclosed_contact(invite(src)))
        assert response.status == 200 and dialog is not None
        await wait_for_state(server, dialog.call_id, "recording")
        assert (await src.bye(dialog)).status == 200
        await wait_for_state(server, dialog.call_id, "complete")
    assert server.sip.agent.counters.tolerated_unclosed_contact == 1
    await nothing_held(server)


async def test_strict_server_keeps_the_rfc_3261_answers(db_dsn: str, data_dir: Path) -> None:
    async with own_server(db_dsn, data_dir, sip__strict="true") as srv, \
            SipTestClient("udp", sip_address(srv, "udp")) as src:
        response, dialog = await src.invite(unclosed_contact(invite(src)))
        assert response.status == 400 and dialog is None
        # An ACK with the wrong CSeq is ignored: the 200 keeps coming.
        _, dialog = await invite_unacknowledged(src, invite(src))
        src.send(src.request("ACK", dialog, cseq=dialog.cseq + 1))
        assert (await src.response("INVITE", timeout=1.2)).status == 200
        src.send(src.ack(dialog, dialog.cseq))
        content_type = f"multipart/mixed;boundary={BOUNDARY}"
        src.send(src.request("INVITE", dialog, cseq=10, body=multipart(),
                             content_type=content_type))
        assert (await src.response("INVITE")).status == 200
        src.send(src.ack(dialog, 10))
        src.send(src.request("BYE", dialog, cseq=3))
        assert (await src.response("BYE")).status == 500
        await wait_for_state(srv, dialog.call_id, "recording")
        src.send(src.request("BYE", dialog, cseq=11))
        assert (await src.response("BYE")).status == 200
        await wait_for_state(srv, dialog.call_id, "complete")
    counters = srv.sip.agent.counters
    assert (counters.tolerated_ack_mismatch, counters.tolerated_low_cseq_bye,
            counters.tolerated_unclosed_contact) == (0, 0, 0)
