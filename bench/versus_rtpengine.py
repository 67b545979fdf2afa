"""Our recorder against Sipwise rtpengine, the same calls on the same core in the same run.

rtpengine (Debian's `rtpengine-daemon`, userspace forwarding: the kernel module cannot be loaded
here) records the calls it relays. It has no SIP, so a small front (below) answers the load
generator's SIPREC INVITEs by asking rtpengine over its ng control protocol: an "offer" with the
SRC's SDP (SRTP, with call recording on), an "answer" from a sink that takes plain RTP, and the
SDP rtpengine returns for the SRC (its own ports and SDES keys) goes back in the 200 OK. So
rtpengine receives the same SRTP packets our server does, authenticates and decrypts them,
records them and relays them in the clear to the sink. Without the kernel module its recording
method is `pcap`: decrypted RTP written as it arrives, plaintext and uncompressed (no decoding,
no encoding, no encryption at rest); the recording daemon that writes WAV needs the kernel
module.

Each side runs pinned to CPU 0 (our server as in bench/media_load.py's core mode: the main
process and one media worker) with the load generator on CPU 1 and the front, for rtpengine,
on CPU 1 too. For each step the CPU of the recorder's processes over a window in which every
call is up is divided by the call-seconds in it.

    .venv/bin/python bench/versus_rtpengine.py [--steps 100,200,300] [--duration 20]

Needs `rtpengine` (apt-get install rtpengine-daemon). Prints one line per step and side, then
the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.media_load import (  # noqa: E402
    cpu_seconds,
    free_udp_port,
    pin,
    run_step,
    start_server,
)

RTPENGINE_PORTS = (41000, 49999)


# ------------------------------------------------------------------------------ bencode / ng


def bencode(value: Any) -> bytes:
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in sorted(value.items())) + b"e"
    raise TypeError(type(value))


def bdecode(data: bytes, at: int = 0) -> tuple[Any, int]:
    kind = data[at:at + 1]
    if kind == b"i":
        end = data.index(b"e", at)
        return int(data[at + 1:end]), end + 1
    if kind in (b"l", b"d"):
        at += 1
        items: list[Any] = []
        while data[at:at + 1] != b"e":
            item, at = bdecode(data, at)
            items.append(item)
        if kind == b"l":
            return items, at + 1
        return {items[i].decode(): items[i + 1] for i in range(0, len(items), 2)}, at + 1
    colon = data.index(b":", at)
    size = int(data[at:colon])
    return data[colon + 1:colon + 1 + size], colon + 1 + size


class NgClient(asyncio.DatagramProtocol):
    """rtpengine's ng control protocol: "<cookie> <bencoded dict>" both ways over UDP."""

    def __init__(self) -> None:
        self._waiting: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        cookie, _, body = data.partition(b" ")
        future = self._waiting.pop(cookie, None)
        if future is not None and not future.done():
            future.set_result(bdecode(body)[0])

    async def call(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.transport is not None
        cookie = os.urandom(6).hex().encode()
        future = asyncio.get_running_loop().create_future()
        self._waiting[cookie] = future
        self.transport.sendto(cookie + b" " + bencode(command))
        reply = await asyncio.wait_for(future, 10)
        if reply.get("result") != b"ok":
            raise RuntimeError(f"rtpengine: {reply}")
        return reply


# ------------------------------------------------------------------------------ the SIP front


def sdp_of(body: bytes, content_type: str) -> bytes:
    if "multipart" not in content_type:
        return body
    boundary = content_type.split("boundary=", 1)[1].split(";")[0].strip().strip('"').encode()
    for part in body.split(b"--" + boundary):
        head, _, content = part.partition(b"\r\n\r\n")
        if b"application/sdp" in head.lower():
            return content.rstrip(b"\r\n") + b"\r\n"
    raise ValueError("no SDP in the INVITE")


def sink_answer(offer_to_sink: bytes, port: int) -> bytes:
    """The sink's answer: plain RTP to a discard port, one m-line per offered m-line."""
    text = offer_to_sink.decode()
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=sink", "c=IN IP4 127.0.0.1", "t=0 0"]
    for line in text.splitlines():
        if line.startswith("m="):
            kind, _port, _proto, *formats = line[2:].split()
            lines += [f"m={kind} {port} RTP/AVP {' '.join(formats)}", "a=recvonly"]
    return ("\r\n".join(lines) + "\r\n").encode()


async def run_front(sip_port: int, ng: tuple[str, int], sink_port: int) -> None:
    from siprec_server.net.sip_transport import SipEndpoint
    from siprec_server.sip.agent import AgentSettings, SipAgent
    from siprec_server.sip.events import DialogEnded, RequestReceived

    loop = asyncio.get_running_loop()
    _t, client = await loop.create_datagram_endpoint(NgClient, remote_addr=ng)
    agent = SipAgent(AgentSettings(local={"udp": ("127.0.0.1", sip_port)}))
    endpoint = SipEndpoint(agent)
    calls: dict[str, tuple[str, str]] = {}

    async def invite(event: RequestReceived) -> None:
        request = event.request
        call_id = request.call_id
        from_tag = request.from_tag or "a"
        try:
            sdp = sdp_of(request.body, request.headers.get("Content-Type") or "")
            offered = await client.call({
                "command": "offer", "call-id": call_id, "from-tag": from_tag, "sdp": sdp,
                "record call": "yes", "transport protocol": "RTP/AVP", "ICE": "remove",
                "replace": ["origin", "session connection"]})
            to_tag = "sink" + os.urandom(4).hex()
            answered = await client.call({
                "command": "answer", "call-id": call_id, "from-tag": from_tag,
                "to-tag": to_tag, "sdp": sink_answer(offered["sdp"], sink_port),
                "replace": ["origin", "session connection"]})
        except Exception:  # noqa: BLE001 - the generator counts the failure
            endpoint.respond(event.txn, 500)
            return
        endpoint.respond(event.txn, 200, headers=[("Content-Type", "application/sdp")],
                         body=answered["sdp"])
        dialog = endpoint.dialog_of(event.txn)
        if dialog is not None:
            calls[dialog] = (call_id, from_tag)

    async def ended(dialog: str) -> None:
        known = calls.pop(dialog, None)
        if known is not None:
            await client.call({"command": "delete", "call-id": known[0],
                               "from-tag": known[1]})

    def on_event(event: Any) -> None:
        if isinstance(event, RequestReceived) and event.dialog is None:
            asyncio.ensure_future(invite(event))
        elif isinstance(event, RequestReceived):
            endpoint.respond(event.txn, 200)
        elif isinstance(event, DialogEnded):
            asyncio.ensure_future(ended(event.dialog))

    from siprec_server.config import parse_listen

    endpoint.on_event = on_event
    await endpoint.listen([parse_listen(f"udp:127.0.0.1:{sip_port}")], None)
    await asyncio.Event().wait()


def front_main() -> None:
    import uvloop

    sip_port, ng_port, sink_port = (int(x) for x in sys.argv[2:5])
    uvloop.run(run_front(sip_port, ("127.0.0.1", ng_port), sink_port))


# ------------------------------------------------------------------------------ the comparison


async def start_rtpengine(spool: Path, ng_port: int) -> asyncio.subprocess.Process:
    spool.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("rtpengine")
    if binary is None:
        raise SystemExit("rtpengine is not installed: apt-get install rtpengine-daemon")
    return await asyncio.create_subprocess_exec(
        binary, "--foreground", "--interface=127.0.0.1", f"--listen-ng=127.0.0.1:{ng_port}",
        "--table=-1", f"--recording-dir={spool}", "--recording-method=pcap",
        f"--port-min={RTPENGINE_PORTS[0]}", f"--port-max={RTPENGINE_PORTS[1]}",
        "--num-threads=1", "--log-level=3", "--no-log-timestamps",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=pin(0))


async def start_front(sip_port: int, ng_port: int, sink_port: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, "front", str(sip_port), str(ng_port), str(sink_port),
        cwd=ROOT, preexec_fn=pin(1))


def discard_socket() -> socket.socket:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    return sink  # never read: the kernel drops what overflows, at no cost to either side


async def measure(side: str, pid: int, sip_port: int, calls: int, args: argparse.Namespace,
                  out: Path) -> dict[str, Any]:
    step = await run_step(pid, sip_port, calls, args.duration, args.srtp, "PCMU", out, 1, 1)
    summary = step["generator"].get("summary", {})
    step["side"] = side
    step["failed"] = summary.get("failed", calls)
    step["kept_up"] = not summary.get("sender_fell_behind", True)
    return step


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="100,200,300")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--srtp", default="AES_CM_128_HMAC_SHA1_80")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="siprec-versus-"))
    tmp.chmod(0o755)
    sink = discard_socket()
    results: list[dict[str, Any]] = []
    print(f"{'side':>10} {'calls':>6} {'cpu ms/call-s':>14} {'core %':>7} {'failed':>6} "
          f"{'gen ok':>6}")
    try:
        for n in [int(x) for x in args.steps.split(",")]:
            for side in ("siprec", "rtpengine"):
                sip_port = free_udp_port()
                if side == "siprec":
                    server = await start_server(tmp / f"var-{n}", sip_port, 1, 0)
                    helpers: list[asyncio.subprocess.Process] = []
                else:
                    ng_port = random.randrange(30000, 32000)
                    server = await start_rtpengine(tmp / f"spool-{n}", ng_port)
                    helpers = [await start_front(sip_port, ng_port, sink.getsockname()[1])]
                    await asyncio.sleep(1.5)
                try:
                    idle0, t0 = cpu_seconds(server.pid), time.monotonic()
                    await asyncio.sleep(2)
                    idle = (cpu_seconds(server.pid) - idle0) / (time.monotonic() - t0)
                    step = await measure(side, server.pid, sip_port, n, args,
                                         tmp / f"{side}-{n}.json")
                    step["idle_core"] = idle
                    results.append(step)
                    print(f"{side:>10} {n:>6} {step['cpu_ms_per_call_second']:>14.2f} "
                          f"{100 * step['server_core_utilisation']:>6.1f}% {step['failed']:>6} "
                          f"{str(step['kept_up']):>6}", flush=True)
                finally:
                    for process in [server, *helpers]:
                        process.terminate()
                        try:
                            await asyncio.wait_for(process.wait(), 30)
                        except TimeoutError:
                            process.kill()
        print("ratio siprec / rtpengine (CPU per recorded call-second, same calls, same core):")
        for n in sorted({r["calls"] for r in results}):
            pair = {r["side"]: r for r in results if r["calls"] == n}
            if len(pair) == 2:
                ours = pair["siprec"]["cpu_ms_per_call_second"]
                theirs = pair["rtpengine"]["cpu_ms_per_call_second"]
                print(f"  {n} calls: {ours:.2f} / {theirs:.2f} = {ours / theirs:.2f}")
    finally:
        sink.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "front":
        front_main()
    else:
        asyncio.run(main())
