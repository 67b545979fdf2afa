"""The SIP user agent core (sans-IO): transactions, dialogs and session timers of a recording
server, in the style of aioquic's QuicConnection.

The transport feeds `receive(data, peer, now)`; the transaction user (the SIPREC service) drains
`next_event()` and answers requests with `respond(txn, ...)`; whatever must go on the wire is
drained with `messages_to_send()`; one timer is armed from `get_timer()` and fired with
`handle_timer(now)`. Nothing here touches a socket or reads a clock, so every RFC 3261 timer is
tested with a fake clock.

What the core decides alone (generic SIP): retransmissions, 100 Trying, CANCEL (200 + 487), BYE
(200, 481 unknown dialog), ACK matching, OPTIONS, 405/420/481/483/500/491, session timers
(RFC 4028: 422 below Min-SE, BYE when a session is not refreshed). What it leaves to the
transaction user: whether and how to answer INVITE, UPDATE (bodies are SIPREC business).
"""

from __future__ import annotations

import ipaddress
import secrets
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from siprec_server.sip.events import (
    DialogConfirmed,
    DialogEnded,
    InfoReceived,
    InviteCancelled,
    Outgoing,
    Peer,
    RequestReceived,
    SipEvent,
)
from siprec_server.sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    build_response,
    header_param,
    parse_address,
    parse_message,
    parse_via,
)
from siprec_server.sip.timers import TimerHandle, TimerQueue, TimerValues

MAGIC_COOKIE = "z9hG4bK"
DEFAULT_ALLOW = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO")
DEFAULT_ACCEPT = (
    "application/sdp",
    "application/rs-metadata+xml",
    "application/rs-metadata",
    "multipart/mixed",
)
DEFAULT_SUPPORTED = ("siprec", "timer")


@dataclass(frozen=True, slots=True)
class AgentSettings:
    local: Mapping[str, tuple[str, int]]
    """Per transport ("udp", "tcp", "tls"): the host and port we advertise (Via, Contact)."""
    allow: tuple[str, ...] = DEFAULT_ALLOW
    accept: tuple[str, ...] = DEFAULT_ACCEPT
    supported: tuple[str, ...] = DEFAULT_SUPPORTED
    server: str = "siprec-server"
    session_expires: int = 1800
    """Session interval we ask for when the SRC supports timers but proposes none."""
    min_se: int = 90
    """Smallest session interval we accept (RFC 4028 §5: at least 90)."""
    timers: TimerValues = field(default_factory=TimerValues)
    max_transactions: int = 20_000

    def contact(self, transport: str) -> str:
        host, port = self.local.get(transport) or next(iter(self.local.values()))
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        scheme = "sips" if transport == "tls" else "sip"
        param = f";transport={transport}" if transport != "udp" else ""
        return f"<{scheme}:srs@{host}:{port}{param}>;+sip.srs"


@dataclass(slots=True)
class _ServerTransaction:
    id: str
    key: tuple[str, ...]
    request: SipRequest
    peer: Peer
    reply_to: Peer
    to_tag: str
    dialog: str | None = None
    state: str = "proceeding"  # proceeding -> completed|accepted -> confirmed -> terminated
    last_response: bytes | None = None
    final_status: int = 0
    interval: float = 0.0
    retransmit: TimerHandle | None = None
    timeout: TimerHandle | None = None

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    def cancel_timers(self) -> None:
        for handle in (self.retransmit, self.timeout):
            if handle:
                handle.cancel()


@dataclass(slots=True)
class _Dialog:
    id: str
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: list[str]
    remote_cseq: int
    peer: Peer
    local_cseq: int = 0
    confirmed: bool = False
    pending_invite: str | None = None
    unacked_2xx: bytes | None = None
    unacked_cseq: int = 0
    ack_retransmit: TimerHandle | None = None
    ack_timeout: TimerHandle | None = None
    ack_interval: float = 0.0
    session_interval: int | None = None
    session_timer: TimerHandle | None = None
    ended: bool = False


@dataclass(slots=True)
class _ClientTransaction:
    """A non-INVITE client transaction (we only send BYE)."""

    branch: str
    data: bytes
    peer: Peer
    interval: float
    retransmit: TimerHandle | None = None
    timeout: TimerHandle | None = None


class SipAgent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self._timers = TimerQueue()
        self._events: deque[SipEvent] = deque()
        self._outgoing: list[Outgoing] = []
        self._server: dict[tuple[str, ...], _ServerTransaction] = {}
        self._by_id: dict[str, _ServerTransaction] = {}
        self._dialogs: dict[str, _Dialog] = {}
        self._client: dict[str, _ClientTransaction] = {}
        self._next_txn = 0
        self._now_hint = 0.0
        """The `now` of the call into the core being processed (timers scheduled from it)."""
        self.stats: dict[str, int] = {
            "requests": 0,
            "responses_sent": 0,
            "retransmissions_absorbed": 0,
            "parse_errors": 0,
            "dropped": 0,
        }

    # ---------------------------------------------------------------- the transport's side

    def receive(self, data: bytes, peer: Peer, now: float) -> None:
        """One complete message (a datagram, or one framed from a stream)."""
        self._now_hint = now
        try:
            message = parse_message(data, datagram=not peer.reliable)
        except SipParseError as exc:
            self.stats["parse_errors"] += 1
            partial = exc.partial
            if partial is not None and partial.method != "ACK":
                self._stateless_reply(partial, peer, 400, exc.reason)
            return
        if isinstance(message, SipResponse):
            self._receive_response(message, now)
            return
        self.stats["requests"] += 1
        try:
            self._receive_request(message, peer, now)
        except SipParseError as exc:
            # A header the dispatch needed turned out malformed (e.g. a From we must parse).
            self.stats["parse_errors"] += 1
            if message.method != "ACK":
                self._stateless_reply(message, peer, 400, exc.reason)

    def messages_to_send(self) -> list[Outgoing]:
        out, self._outgoing = self._outgoing, []
        return out

    def next_event(self) -> SipEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        return self._timers.next_deadline()

    def handle_timer(self, now: float) -> None:
        self._now_hint = now
        self._timers.fire_due(now)

    # ---------------------------------------------------------------- the transaction user's side

    def respond(
        self,
        txn_id: str,
        status: int,
        now: float,
        *,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> bool:
        """Answer a request from a RequestReceived event. False when the transaction is already
        finished (cancelled, timed out), in which case nothing is sent."""
        self._now_hint = now
        txn = self._by_id.get(txn_id)
        if txn is None or txn.final_status:
            return False
        request = txn.request
        extra = Headers(headers)
        if request.method in ("INVITE", "UPDATE") and 200 <= status < 300:
            self._add_session_timer_headers(request, extra)
        if request.method == "INVITE" and 100 < status < 300 and "Contact" not in extra:
            extra.add("Contact", self.settings.contact(txn.peer.transport))
        if request.method == "INVITE" and 200 <= status < 300:
            extra.add("Allow", ", ".join(self.settings.allow))
            extra.add("Supported", ", ".join(self.settings.supported))
        response = self._response(request, status, reason, txn.to_tag, list(extra), body)
        if request.method == "INVITE" and 200 <= status < 300:
            self._accept_invite(txn, response, now)
        elif request.method == "INVITE" and status >= 300:
            self._finish_invite_with_error(txn)
        if status >= 200 and request.method == "UPDATE" and 200 <= status < 300:
            dialog = self._dialogs.get(txn.dialog or "")
            if dialog:
                self._arm_session_timer(dialog, request, now)
        self._send_response(txn, response, now)
        return True

    def end_dialog(self, dialog_id: str, now: float, reason: str = "local") -> None:
        """Hang up a dialog from our side (BYE), e.g. at shutdown or when media timed out."""
        self._now_hint = now
        dialog = self._dialogs.get(dialog_id)
        if dialog is None or dialog.ended:
            return
        self._send_bye(dialog, now, reason_text=reason)
        self._terminate_dialog(dialog, reason)

    def dialog_of(self, txn_id: str) -> str | None:
        """The dialog a transaction created or belongs to (known once a 2xx was sent)."""
        txn = self._by_id.get(txn_id)
        return txn.dialog if txn else None

    def dialog_ids(self) -> list[str]:
        return [d.id for d in self._dialogs.values() if not d.ended]

    # ---------------------------------------------------------------- requests

    def _receive_request(self, request: SipRequest, peer: Peer, now: float) -> None:
        self._stamp_via(request, peer)
        method = request.method
        if method == "ACK":
            self._receive_ack(request)
            return
        key = self._transaction_key(request)
        existing = self._server.get(key)
        if existing is not None:
            self.stats["retransmissions_absorbed"] += 1
            if existing.last_response is not None and existing.state != "accepted":
                self._outgoing.append(Outgoing(existing.last_response, existing.reply_to))
            return
        if method == "CANCEL":
            self._receive_cancel(request, peer, now)
            return
        if len(self._server) >= self.settings.max_transactions:
            self._stateless_reply(request, peer, 503, "Overloaded", [("Retry-After", "5")])
            return
        txn = self._new_transaction(key, request, peer)
        try:
            self._process(txn, now)
        except SipParseError as exc:
            self.stats["parse_errors"] += 1
            self._reply(txn, 400, now, reason=exc.reason)

    def _process(self, txn: _ServerTransaction, now: float) -> None:
        request = txn.request
        method = request.method
        max_forwards = request.headers.get("Max-Forwards")
        if max_forwards is not None and int(max_forwards) == 0 and method != "OPTIONS":
            self._reply(txn, 483, now)
            return
        unsupported = sorted(request.headers.tokens("Require") - set(self.settings.supported))
        if unsupported and method != "CANCEL":
            self._reply(txn, 420, now, headers=[("Unsupported", ", ".join(unsupported))])
            return
        if method == "OPTIONS":
            self._reply(txn, 200, now, headers=self._capabilities())
            return
        if method not in self.settings.allow:
            self._reply(txn, 405, now, headers=[("Allow", ", ".join(self.settings.allow))])
            return
        if request.is_in_dialog:
            self._process_in_dialog(txn, now)
            return
        if method != "INVITE":
            self._reply(txn, 481, now)
            return
        if not self._session_interval_acceptable(txn, now):
            return
        if not request.headers.get("Contact"):
            self._reply(txn, 400, now, reason="Missing Contact")
            return
        parse_address(request.headers.values("Contact")[0])  # malformed → 400 via caller
        self._reply(txn, 100, now)
        self._events.append(RequestReceived(txn.id, request, txn.peer, None))

    def _process_in_dialog(self, txn: _ServerTransaction, now: float) -> None:
        request = txn.request
        dialog = self._dialogs.get(self._dialog_id_of_request(request))
        if dialog is None or dialog.ended:
            self._reply(txn, 481, now)
            return
        txn.dialog = dialog.id
        txn.to_tag = dialog.local_tag
        number, method = request.cseq
        if number <= dialog.remote_cseq:
            self._reply(txn, 500, now, reason="CSeq out of order")
            return
        dialog.remote_cseq = number
        if method == "BYE":
            self._reply(txn, 200, now)
            if dialog.pending_invite:
                pending = self._by_id.get(dialog.pending_invite)
                if pending and not pending.final_status:
                    self._reply(pending, 487, now)
            self._terminate_dialog(dialog, "bye")
            return
        if method == "INFO":
            self._reply(txn, 200, now)
            self._events.append(InfoReceived(dialog.id, request.content_type, request.body))
            return
        if method in ("INVITE", "UPDATE"):
            has_offer = bool(request.body)
            if dialog.pending_invite and (method == "INVITE" or has_offer):
                # RFC 3261 §14.2 / RFC 3311 §5.2: an offer while ours is still unanswered.
                self._reply(txn, 500, now, headers=[("Retry-After", str(secrets.randbelow(10)))])
                return
            if dialog.unacked_2xx is not None and method == "INVITE":
                self._reply(txn, 491, now)
                return
            if not self._session_interval_acceptable(txn, now):
                return
            if method == "INVITE":
                dialog.pending_invite = txn.id
                self._reply(txn, 100, now)
            if contact := request.headers.values("Contact"):
                dialog.remote_target = _uri_of(contact[0])
            self._events.append(RequestReceived(txn.id, request, txn.peer, dialog.id))
            return
        self._reply(txn, 405, now, headers=[("Allow", ", ".join(self.settings.allow))])

    def _receive_ack(self, request: SipRequest) -> None:
        # ACK for a non-2xx final response: same branch as the INVITE (RFC 3261 §17.2.1).
        key = self._transaction_key(request, method="INVITE")
        txn = self._server.get(key)
        if txn is not None and txn.state == "completed":
            txn.state = "confirmed"
            txn.cancel_timers()
            delay = 0.0 if txn.peer.reliable else self.settings.timers.t4
            txn.timeout = self._timers.schedule(
                self._now_hint + delay, lambda _now, t=txn: self._drop_transaction(t)
            )
            return
        # ACK for a 2xx: its own transaction, matched to the dialog (RFC 3261 §13.3.1.4).
        dialog = self._dialogs.get(self._dialog_id_of_request(request))
        if dialog is None:
            self.stats["dropped"] += 1
            return
        try:
            number, _ = request.cseq
        except SipParseError:
            return
        if dialog.unacked_2xx is not None and number == dialog.unacked_cseq:
            dialog.unacked_2xx = None
            for handle in (dialog.ack_retransmit, dialog.ack_timeout):
                if handle:
                    handle.cancel()
            if not dialog.confirmed:
                dialog.confirmed = True
                self._events.append(DialogConfirmed(dialog.id))

    def _receive_cancel(self, request: SipRequest, peer: Peer, now: float) -> None:
        key = self._transaction_key(request, method="INVITE")
        invite = self._server.get(key)
        cancel_key = self._transaction_key(request)
        txn = self._new_transaction(cancel_key, request, peer)
        if invite is None:
            self._reply(txn, 481, now)
            return
        txn.to_tag = invite.to_tag
        self._reply(txn, 200, now)
        if not invite.final_status:
            self._reply(invite, 487, now)
            self._events.append(InviteCancelled(invite.id))

    # ---------------------------------------------------------------- responses out

    def _reply(
        self,
        txn: _ServerTransaction,
        status: int,
        now: float,
        *,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        if txn.final_status:
            return
        response = self._response(txn.request, status, reason, txn.to_tag, list(headers), b"")
        if txn.is_invite and status >= 300:
            self._finish_invite_with_error(txn)
        self._send_response(txn, response, now)

    def _response(
        self,
        request: SipRequest,
        status: int,
        reason: str | None,
        to_tag: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> SipResponse:
        headers.append(("Server", self.settings.server))
        tag = to_tag if status > 100 else None
        return build_response(request, status, reason, to_tag=tag, headers=headers, body=body)

    def _send_response(self, txn: _ServerTransaction, response: SipResponse, now: float) -> None:
        self._now_hint = now
        data = response.to_bytes()
        self.stats["responses_sent"] += 1
        self._outgoing.append(Outgoing(data, txn.reply_to))
        txn.last_response = data
        status = response.status
        if status < 200:
            return
        txn.final_status = status
        timers = self.settings.timers
        reliable = txn.peer.reliable
        if txn.is_invite and status >= 300:
            txn.state = "completed"
            if not reliable:
                txn.interval = timers.t1
                txn.retransmit = self._timers.schedule(now + timers.t1, self._timer_g(txn))
            txn.timeout = self._timers.schedule(
                now + 64 * timers.t1, lambda _now, t=txn: self._drop_transaction(t)
            )  # Timer H: the ACK never came.
        elif txn.is_invite:
            # RFC 6026 "Accepted": absorb INVITE retransmissions until Timer L.
            txn.state = "accepted"
            txn.timeout = self._timers.schedule(
                now + 64 * timers.t1, lambda _now, t=txn: self._drop_transaction(t)
            )
        else:
            txn.state = "completed"
            delay = 0.0 if reliable else 64 * timers.t1  # Timer J
            txn.timeout = self._timers.schedule(
                now + delay, lambda _now, t=txn: self._drop_transaction(t)
            )

    def _timer_g(self, txn: _ServerTransaction):  # type: ignore[no-untyped-def]
        def fire(now: float) -> None:
            if txn.state != "completed" or txn.last_response is None:
                return
            self._outgoing.append(Outgoing(txn.last_response, txn.reply_to))
            txn.interval = min(2 * txn.interval, self.settings.timers.t2)
            txn.retransmit = self._timers.schedule(now + txn.interval, fire)

        return fire

    def _stateless_reply(
        self,
        request: SipRequest,
        peer: Peer,
        status: int,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        try:
            self._stamp_via(request, peer)
            reply_to = self._reply_destination(request, peer)
        except SipParseError:
            return
        response = self._response(
            request, status, reason, secrets.token_hex(6), headers or [], b""
        )
        self.stats["responses_sent"] += 1
        self._outgoing.append(Outgoing(response.to_bytes(), reply_to))

    # ---------------------------------------------------------------- INVITE outcomes, dialogs

    def _accept_invite(self, txn: _ServerTransaction, response: SipResponse, now: float) -> None:
        request = txn.request
        if txn.dialog is None:
            remote_target = _uri_of(request.headers.values("Contact")[0])
            dialog = _Dialog(
                id=_dialog_id(request.call_id, txn.to_tag, request.from_tag or ""),
                call_id=request.call_id,
                local_tag=txn.to_tag,
                remote_tag=request.from_tag or "",
                local_uri=response.headers.get("To") or "",
                remote_uri=request.headers.get("From") or "",
                remote_target=remote_target,
                route_set=request.headers.values("Record-Route"),
                remote_cseq=request.cseq[0],
                peer=txn.peer,
            )
            self._dialogs[dialog.id] = dialog
            txn.dialog = dialog.id
        else:
            dialog = self._dialogs[txn.dialog]
            dialog.pending_invite = None
        dialog.peer = txn.peer
        dialog.unacked_2xx = response.to_bytes()
        dialog.unacked_cseq = request.cseq[0]
        timers = self.settings.timers
        if not txn.peer.reliable:
            dialog.ack_interval = timers.t1
            dialog.ack_retransmit = self._timers.schedule(
                now + timers.t1, self._retransmit_2xx(dialog, txn.reply_to)
            )
        dialog.ack_timeout = self._timers.schedule(
            now + 64 * timers.t1, lambda at, d=dialog: self._ack_never_came(d, at)
        )
        self._arm_session_timer(dialog, request, now)

    def _retransmit_2xx(self, dialog: _Dialog, reply_to: Peer):  # type: ignore[no-untyped-def]
        def fire(now: float) -> None:
            if dialog.unacked_2xx is None or dialog.ended:
                return
            self._outgoing.append(Outgoing(dialog.unacked_2xx, reply_to))
            dialog.ack_interval = min(2 * dialog.ack_interval, self.settings.timers.t2)
            dialog.ack_retransmit = self._timers.schedule(now + dialog.ack_interval, fire)

        return fire

    def _ack_never_came(self, dialog: _Dialog, now: float) -> None:
        if dialog.unacked_2xx is None or dialog.ended:
            return
        # RFC 3261 §13.3.1.4: no ACK within 64*T1 — confirm then end the session with BYE.
        dialog.unacked_2xx = None
        self._send_bye(dialog, now, reason_text="no ACK")
        self._terminate_dialog(dialog, "no-ack")

    def _finish_invite_with_error(self, txn: _ServerTransaction) -> None:
        dialog = self._dialogs.get(txn.dialog or "")
        if dialog is not None and dialog.pending_invite == txn.id:
            dialog.pending_invite = None

    def _terminate_dialog(self, dialog: _Dialog, reason: str) -> None:
        if dialog.ended:
            return
        dialog.ended = True
        for handle in (dialog.ack_retransmit, dialog.ack_timeout, dialog.session_timer):
            if handle:
                handle.cancel()
        self._events.append(DialogEnded(dialog.id, reason))
        # Keep the entry until late retransmissions (BYE, ACK) can no longer arrive.
        self._timers.schedule(
            self._now_hint + 64 * self.settings.timers.t1,
            lambda _now, d=dialog.id: self._dialogs.pop(d, None),
        )

    # ---------------------------------------------------------------- session timers (RFC 4028)

    def _session_interval_acceptable(self, txn: _ServerTransaction, now: float) -> bool:
        value = txn.request.headers.get("Session-Expires")
        if value is None:
            return True
        interval = _delta_seconds(value)
        if interval is None:
            self._reply(txn, 400, now, reason="Malformed Session-Expires")
            return False
        if interval < self.settings.min_se:
            self._reply(txn, 422, now, headers=[("Min-SE", str(self.settings.min_se))])
            return False
        return True

    def _negotiated_interval(self, request: SipRequest) -> tuple[int, str] | None:
        value = request.headers.get("Session-Expires")
        supports_timer = "timer" in request.headers.tokens("Supported") or "timer" in (
            request.headers.tokens("Require")
        )
        if value is None:
            if not supports_timer:
                return None
            min_se = _delta_seconds(request.headers.get("Min-SE") or "") or 0
            return max(self.settings.session_expires, min_se), "uac"
        interval = _delta_seconds(value) or self.settings.session_expires
        refresher = (header_param(";" + value.split(";", 1)[-1], "refresher") or "").lower()
        if ";" not in value or refresher not in ("uac", "uas"):
            refresher = "uac"  # RFC 4028 §9: the UAS picks; we never refresh, the SRC does.
        return interval, refresher

    def _add_session_timer_headers(self, request: SipRequest, headers: Headers) -> None:
        negotiated = self._negotiated_interval(request)
        if negotiated is None:
            return
        interval, refresher = negotiated
        supports_timer = "timer" in request.headers.tokens("Supported") | request.headers.tokens(
            "Require"
        )
        if not supports_timer:
            # RFC 4028 §9: without Supported: timer the UAC will not refresh; we still time the
            # session out, but cannot require the extension in the response.
            return
        headers.add("Session-Expires", f"{interval};refresher={refresher}")
        headers.add("Require", "timer")

    def _arm_session_timer(self, dialog: _Dialog, request: SipRequest, now: float) -> None:
        negotiated = self._negotiated_interval(request)
        if negotiated is None:
            return
        interval, _refresher = negotiated
        if dialog.session_timer:
            dialog.session_timer.cancel()
        dialog.session_interval = interval
        # RFC 4028 §10: without a refresh, BYE before expiry: at interval - min(32, interval/3).
        expiry = now + interval - min(32, interval / 3)
        dialog.session_timer = self._timers.schedule(
            expiry, lambda at, d=dialog: self._session_expired(d, at)
        )

    def _session_expired(self, dialog: _Dialog, now: float) -> None:
        if dialog.ended:
            return
        self._send_bye(dialog, now, reason_text="session expired")
        self._terminate_dialog(dialog, "session-expired")

    # ---------------------------------------------------------------- BYE (client transaction)

    def _send_bye(self, dialog: _Dialog, now: float, reason_text: str) -> None:
        self._now_hint = now
        transport = dialog.peer.transport
        host, port = self.settings.local.get(transport) or next(iter(self.settings.local.values()))
        branch = MAGIC_COOKIE + secrets.token_hex(8)
        dialog.local_cseq = max(dialog.local_cseq + 1, 1)
        headers = Headers()
        headers.add("Via", f"SIP/2.0/{transport.upper()} {_host(host)}:{port};branch={branch};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", dialog.local_uri)
        headers.add("To", dialog.remote_uri)
        headers.add("Call-ID", dialog.call_id)
        headers.add("CSeq", f"{dialog.local_cseq} BYE")
        for route in dialog.route_set:
            headers.add("Route", route)
        headers.add("Reason", f'SIP;cause=200;text="{reason_text}"')
        headers.add("User-Agent", self.settings.server)
        bye = SipRequest(headers, b"", "BYE", dialog.remote_target)
        peer = self._request_destination(dialog)
        data = bye.to_bytes()
        txn = _ClientTransaction(branch, data, peer, self.settings.timers.t1)
        self._client[branch] = txn
        self._outgoing.append(Outgoing(data, peer))
        if not peer.reliable:
            txn.retransmit = self._timers.schedule(now + txn.interval, self._timer_e(txn))
        txn.timeout = self._timers.schedule(
            now + 64 * self.settings.timers.t1, lambda _now, b=branch: self._client_done(b)
        )

    def _timer_e(self, txn: _ClientTransaction):  # type: ignore[no-untyped-def]
        def fire(now: float) -> None:
            if txn.branch not in self._client:
                return
            self._outgoing.append(Outgoing(txn.data, txn.peer))
            txn.interval = min(2 * txn.interval, self.settings.timers.t2)
            txn.retransmit = self._timers.schedule(now + txn.interval, fire)

        return fire

    def _client_done(self, branch: str) -> None:
        txn = self._client.pop(branch, None)
        if txn:
            for handle in (txn.retransmit, txn.timeout):
                if handle:
                    handle.cancel()

    def _receive_response(self, response: SipResponse, now: float) -> None:
        try:
            branch = response.top_via.branch or ""
        except SipParseError:
            self.stats["dropped"] += 1
            return
        if branch in self._client and response.status >= 200:
            self._client_done(branch)
        elif branch not in self._client:
            self.stats["dropped"] += 1

    def _request_destination(self, dialog: _Dialog) -> Peer:
        if dialog.peer.reliable:
            return dialog.peer
        target = dialog.route_set[0] if dialog.route_set else f"<{dialog.remote_target}>"
        try:
            uri = parse_address(target).uri
            return Peer("udp", uri.host.strip("[]"), uri.port or 5060)
        except SipParseError:
            return dialog.peer

    # ---------------------------------------------------------------- helpers

    def _new_transaction(
        self, key: tuple[str, ...], request: SipRequest, peer: Peer
    ) -> _ServerTransaction:
        self._next_txn += 1
        txn_id = f"t{self._next_txn}"
        to_tag = request.to_tag or secrets.token_hex(6)
        txn = _ServerTransaction(
            txn_id, key, request, peer, self._reply_destination(request, peer), to_tag
        )
        self._server[key] = txn
        self._by_id[txn_id] = txn
        return txn

    def _drop_transaction(self, txn: _ServerTransaction) -> None:
        txn.cancel_timers()
        txn.state = "terminated"
        if txn.final_status == 0:
            txn.final_status = 408
        self._server.pop(txn.key, None)
        self._by_id.pop(txn.id, None)

    def _capabilities(self) -> list[tuple[str, str]]:
        s = self.settings
        return [
            ("Allow", ", ".join(s.allow)),
            ("Accept", ", ".join(s.accept)),
            ("Supported", ", ".join(s.supported)),
            ("Accept-Encoding", "identity"),
        ]

    @staticmethod
    def _transaction_key(request: SipRequest, method: str | None = None) -> tuple[str, ...]:
        via = request.top_via
        method = method or request.method
        if method == "ACK":
            method = "INVITE"
        branch = via.branch or ""
        if branch.startswith(MAGIC_COOKIE):
            return (branch, via.sent_by.lower(), method)
        # RFC 2543 peers (RFC 3261 §17.2.3): match on the request's identifying fields.
        number, _ = request.cseq
        to_tag = request.to_tag if request.method != "ACK" else None
        return (
            request.uri,
            to_tag or "",
            request.from_tag or "",
            request.call_id,
            str(number),
            via.sent_by.lower(),
            method,
        )

    @staticmethod
    def _dialog_id_of_request(request: SipRequest) -> str:
        return _dialog_id(request.call_id, request.to_tag or "", request.from_tag or "")

    @staticmethod
    def _stamp_via(request: SipRequest, peer: Peer) -> None:
        """RFC 3261 §18.2.1 received= and RFC 3581 rport= on the top Via."""
        vias = request.headers.get_all("Via")
        if not vias:
            raise SipParseError("Missing Via")
        first_line = vias[0]
        values = first_line.split(",", 1)
        top = values[0]
        via = parse_via(top)
        stamped = top
        if "rport" in via.params and not via.params["rport"]:
            stamped = _set_param(stamped, "rport", str(peer.port))
            stamped = _set_param(stamped, "received", peer.host)
        elif _host_differs(via.host, peer.host):
            stamped = _set_param(stamped, "received", peer.host)
        if stamped != top:
            values[0] = stamped
            request.headers.replace_first("Via", ",".join(values))

    @staticmethod
    def _reply_destination(request: SipRequest, peer: Peer) -> Peer:
        """RFC 3261 §18.2.2 and RFC 3581 §4: where an unreliable response goes."""
        if peer.reliable:
            return peer
        via = request.top_via
        if maddr := via.params.get("maddr"):
            return Peer("udp", maddr, via.port or 5060)
        host = via.params.get("received") or peer.host
        rport = via.params.get("rport")
        if rport and rport.isdigit():
            return Peer("udp", host, int(rport))
        return Peer("udp", host, via.port or 5060)


def _dialog_id(call_id: str, local_tag: str, remote_tag: str) -> str:
    return f"{call_id};{local_tag};{remote_tag}"


def _uri_of(address: str) -> str:
    return str(parse_address(address).uri)


def _set_param(via: str, name: str, value: str) -> str:
    head, *params = via.split(";")
    kept = [p for p in params if p.strip().split("=", 1)[0].strip().lower() != name]
    return ";".join([head.rstrip(), *kept, f"{name}={value}"])


def _host_differs(via_host: str, source: str) -> bool:
    try:
        return ipaddress.ip_address(via_host.strip("[]")) != ipaddress.ip_address(source)
    except ValueError:
        return True


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _delta_seconds(value: str) -> int | None:
    head = value.split(";", 1)[0].strip()
    if not head.isdigit() or len(head) > 9:
        return None
    return int(head)
