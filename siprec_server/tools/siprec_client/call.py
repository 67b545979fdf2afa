"""One call's life on the asyncio edge: its RTP sockets and SRTP keys, the INVITE with SDP
offer and metadata, media through the pacer, hold by re-INVITE, the BYE, and its CallReport.

Media goes to the host of the server address given by the caller, at the ports of the SDP
answer; the answer's c= address is only reported. This keeps a benchmark from spraying packets
anywhere a misconfigured answer points.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from siprec_server.media.srtp import srtp_sender
from siprec_server.media.srtp_suites import find_suite
from siprec_server.tools.siprec_client.errors import SiprecClientError
from siprec_server.tools.siprec_client.invite import (
    AnsweredMedia,
    OfferedMedia,
    build_metadata,
    build_offer_sdp,
    read_answer,
    xml_id,
)
from siprec_server.tools.siprec_client.pacer import OutboundStream, Pacer
from siprec_server.tools.siprec_client.payloads import codec_spec
from siprec_server.tools.siprec_client.plan import CallPlan, Participant, StreamPlan
from siprec_server.tools.siprec_client.reports import CallReport, SipExchange, StreamReport
from siprec_server.tools.siprec_client.rtp import (
    REGULAR_AUDIO,
    Impairment,
    RtpStream,
    TickOverride,
)
from siprec_server.tools.siprec_client.sip_link import SipDialog, SipLink


@dataclass
class RunContext:
    """What the calls of one run share: where the recorder is, the pacer, the SIP links."""

    servers: Mapping[str, tuple[str, int]]
    """The recorder's address per SIP transport; media goes to the same host."""
    local_host: str
    pacer: Pacer
    links: dict[str, SipLink]
    sip_timeout: float
    link_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def link(self, transport: str) -> SipLink:
        async with self.link_lock:
            link = self.links.get(transport)
            if link is None or link.closed_reason is not None:
                server = self.servers.get(transport)
                if server is None:
                    raise SiprecClientError(f"no server address for {transport}")
                link = SipLink(transport, server, self.local_host)
                await link.open()
                self.links[transport] = link
            return link


@dataclass(frozen=True, slots=True)
class PreparedMedia:
    """A call's encoded payloads and DTMF ticks, per stream, made before the run starts."""

    payloads: tuple[tuple[bytes, ...], ...]
    overrides: tuple[Mapping[int, TickOverride], ...]


class Call:
    """One call's life: sockets, INVITE, media via the pacer, hold, BYE; builds the report."""

    def __init__(
        self, index: int, plan: CallPlan, media: PreparedMedia, ctx: RunContext
    ) -> None:
        self.index = index
        self.plan = plan
        self.media = media
        self.ctx = ctx
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.dialog: SipDialog | None = None
        self.invite: SipExchange | None = None
        self.reinvites: list[SipExchange] = []
        self.bye: SipExchange | None = None
        self.error: str | None = None
        self.sockets: list[socket.socket] = []
        self.outbound: list[OutboundStream | None] = []
        self.answers: tuple[AnsweredMedia, ...] = ()
        self.offered: list[OfferedMedia] = []
        self.keys: list[bytes | None] = []
        self.media_start_tick: int | None = None
        self.sdp_session = random.randrange(1, 2**31)
        self.session_id = xml_id(uuid.uuid4())
        self.sdp_version = 0
        self.established = False
        self.bye_sent = False

    async def run(self) -> CallReport:
        try:
            await self._run()
        except asyncio.CancelledError:
            self.error = self.error or "stopped by the run's hard timeout"
            self._hang_up_now()
        except SiprecClientError as exc:
            self.error = str(exc)
            await self._bye_if_established()
        except OSError as exc:
            self.error = f"network error: {exc}"
            await self._bye_if_established()
        finally:
            self.ctx.pacer.remove([s for s in self.outbound if s is not None])
            if self.dialog is not None:
                self.dialog.link.detach(self.dialog)
            for sock in self.sockets:
                sock.close()
        return self._report()

    async def _run(self) -> None:
        plan = self.plan
        family = socket.AF_INET6 if ":" in self.ctx.local_host else socket.AF_INET
        for stream in plan.streams:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sockets.append(sock)
            sock.bind((self.ctx.local_host, 0))
            sock.setblocking(False)
            spec = codec_spec(stream.codec)
            suite = find_suite(stream.srtp) if stream.srtp else None
            key = os.urandom(suite.key_salt_len) if suite else None
            self.keys.append(key)
            self.offered.append(
                OfferedMedia(
                    label=stream.label, port=sock.getsockname()[1], codec=spec,
                    ptime_ms=plan.ptime_ms, srtp_suite=stream.srtp, key_salt=key,
                )
            )
        link = await self.ctx.link(plan.transport)
        dialog = self.dialog = SipDialog(link, self.ctx.sip_timeout, self.started)
        link.attach(dialog)
        sdp = self._sdp("sendonly")
        ids = [xml_id(uuid.uuid4()) for _ in plan.streams]
        parties: dict[Participant, str] = {}
        for stream in plan.streams:
            parties.setdefault(stream.participant, xml_id(uuid.uuid4()))
        metadata = build_metadata(
            plan.streams, session_id=self.session_id, stream_ids=ids,
            participant_ids=parties, now=datetime.now(UTC),
        )
        request = dialog.state.invite(sdp, metadata)
        response, self.invite = await dialog.transact(request)
        if response is None:
            self.error = f"INVITE not answered: {self.invite.reason}"
            return
        if response.status < 200 or response.status >= 300:
            dialog.ack(request, response)
            self.error = f"INVITE answered {response.status} {response.reason}"
            return
        dialog.ack(request, response)
        self.established = True
        if (response.content_type or "").split(";")[0].strip().lower() != "application/sdp":
            raise SiprecClientError(f"200 without an SDP answer ({response.content_type})")
        self.answers = read_answer(response.body, len(plan.streams))
        self._build_outbound()
        streams = [s for s in self.outbound if s is not None]
        if streams:
            self.media_start_tick = self.ctx.pacer.add(streams)
            hold = asyncio.create_task(self._hold()) if plan.hold else None
            try:
                await asyncio.gather(*(s.done for s in streams))
            finally:
                if hold is not None:
                    hold.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await hold
        else:
            self.error = "the recorder declined every stream"
        await self._bye_if_established()

    def _sdp(self, direction: str) -> bytes:
        self.sdp_version += 1
        sdp = build_offer_sdp(
            self.offered, address=self.ctx.local_host, session_id=self.sdp_session,
            session_version=self.sdp_version, direction=direction,
        )
        if self.dialog is not None:
            self.dialog.current_sdp = sdp
        return sdp

    def _build_outbound(self) -> None:
        plan = self.plan
        payloads = self.media.payloads
        overrides = self.media.overrides
        assert self.dialog is not None
        server_host = self.dialog.link.server[0]
        for i, (stream, answer) in enumerate(zip(plan.streams, self.answers, strict=True)):
            if answer.port == 0 or answer.payload_type is None:
                self.outbound.append(None)
                continue
            spec = codec_spec(stream.codec)
            key = self.keys[i]
            suite = find_suite(stream.srtp) if stream.srtp else None
            srtp = srtp_sender(suite, key) if suite is not None and key is not None else None
            impairment = (
                Impairment(plan.impairments, f"{self.index}:{i}") if plan.impairments else None
            )
            events = overrides[i]
            event_pt = answer.telephone_event_pt
            if events and event_pt is None:
                # The recorder did not take telephone-event: DTMF goes in-band only.
                events = {k: TickOverride(o.audio) for k, o in events.items()
                          if o.audio is not REGULAR_AUDIO}
            rtp = RtpStream(
                payload_type=answer.payload_type,
                units=spec.rtp_units(plan.ptime_ms),
                payloads=payloads[i],
                ssrc=secrets.randbits(32),
                first_seq=secrets.randbits(16),
                first_timestamp=secrets.randbits(32),
                event_pt=event_pt if events else None,
                overrides=events,
            )
            self.outbound.append(
                OutboundStream(
                    rtp, self.sockets[i], (server_host, answer.port), srtp, impairment,
                    frames=plan.frames(), ptime=plan.ptime_ms / 1000, stream_index=i,
                )
            )

    async def _hold(self) -> None:
        plan = self.plan
        assert plan.hold is not None and self.media_start_tick is not None
        start = self.ctx.pacer.time_of(self.media_start_tick)
        streams = [s for s in self.outbound if s is not None]
        await asyncio.sleep(max(0.0, start + plan.hold.start - time.monotonic()))
        for stream in streams:
            stream.rtp.hold()
        await self._reinvite("inactive")
        await asyncio.sleep(max(0.0, start + plan.hold.end - time.monotonic()))
        await self._reinvite("sendonly")
        for stream in streams:
            stream.rtp.resume()

    async def _reinvite(self, direction: str) -> None:
        assert self.dialog is not None
        request = self.dialog.state.request(
            "INVITE", body=self._sdp(direction), content_type="application/sdp"
        )
        response, exchange = await self.dialog.transact(request)
        self.reinvites.append(exchange)
        if response is not None:
            self.dialog.ack(request, response)

    async def _bye_if_established(self) -> None:
        dialog = self.dialog
        if dialog is None or not self.established or self.bye_sent or dialog.ended_by_server:
            return
        self.bye_sent = True
        response, self.bye = await dialog.transact(dialog.state.request("BYE"))
        if response is None:
            self.error = self.error or f"BYE not answered: {self.bye.reason}"
        elif response.status != 200:
            self.error = self.error or f"BYE answered {response.status} {response.reason}"

    def _hang_up_now(self) -> None:
        dialog = self.dialog
        if dialog is None or not self.established or self.bye_sent or dialog.ended_by_server:
            return
        # Cancelled: no time to wait for the answer, but the recorder should not keep
        # recording a call nobody will end.
        self.bye_sent = True
        dialog.link.send(dialog.state.request("BYE").to_bytes())

    def _report(self) -> CallReport:
        pacer = self.ctx.pacer
        reports = []
        last_tick = self.media_start_tick
        for i, stream in enumerate(self.plan.streams):
            out = self.outbound[i] if i < len(self.outbound) else None
            answer = self.answers[i] if i < len(self.answers) else None
            reports.append(self._stream_report(stream, i, out, answer))
            if out is not None and out.end_tick is not None:
                last_tick = max(last_tick or 0, out.end_tick)
        media_seconds = 0.0
        lateness = None
        if self.media_start_tick is not None and last_tick is not None:
            media_seconds = (last_tick - self.media_start_tick) * pacer.step
            late = pacer.lateness_between(self.media_start_tick, last_tick)
            lateness = None if late is None else late * 1000
        dtmf = sorted(
            (d for out in self.outbound if out is not None for d in out.dtmf),
            key=lambda d: d.sent_at,
        )
        ok = (
            self.error is None
            and self.invite is not None and self.invite.status == 200
            and self.bye is not None and self.bye.status == 200
            and all(r.status == 200 for r in self.reinvites)
        )
        return CallReport(
            index=self.index,
            call_id=self.dialog.call_id if self.dialog else "",
            session_id=self.session_id,
            transport=self.plan.transport,
            ok=ok,
            error=self.error,
            invite=self.invite,
            reinvites=tuple(self.reinvites),
            bye=self.bye,
            ended_by_server=bool(self.dialog and self.dialog.ended_by_server),
            streams=tuple(reports),
            dtmf=tuple(dtmf),
            started_at=self.started_wall,
            media_started_at=None if self.media_start_tick is None
            else self.started_wall + pacer.time_of(self.media_start_tick) - self.started,
            media_seconds=media_seconds,
            max_sender_lateness_ms=lateness,
        )

    def _stream_report(
        self, plan: StreamPlan, index: int, out: OutboundStream | None,
        answer: AnsweredMedia | None,
    ) -> StreamReport:
        offered = self.offered[index] if index < len(self.offered) else None
        rtp = out.rtp if out else None
        imp = out.impairment if out else None
        return StreamReport(
            label=plan.label,
            codec=codec_spec(plan.codec).rtpmap,
            payload_type=answer.payload_type if answer else None,
            telephone_event_pt=rtp.event_pt if rtp else None,
            srtp_suite=out.srtp.suite.name if out and out.srtp else None,
            answered=out is not None,
            local_port=offered.port if offered else 0,
            remote=(self.dialog.link.server[0], answer.port)
            if answer and answer.port and self.dialog else None,
            answer_address=answer.address if answer else None,
            ssrc=rtp.ssrc if rtp else 0,
            first_seq=rtp.first_seq if rtp else 0,
            first_timestamp=rtp.first_timestamp if rtp else 0,
            audio_packets=rtp.audio_packets if rtp else 0,
            event_packets=rtp.event_packets if rtp else 0,
            dropped=imp.dropped if imp else 0,
            duplicated=imp.duplicated if imp else 0,
            reordered=imp.reordered if imp else 0,
            datagrams_sent=out.datagrams if out else 0,
            send_errors=out.errors if out else 0,
            first_packet_at=out.first_at if out else None,
            first_packet_after=None if out is None or out.first_at is None
            else out.first_at - self.started_wall,
        )
