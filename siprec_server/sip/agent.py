"""The SIP user agent core (sans-IO): transactions, dialogs and session timers of a recording
server, in the style of aioquic's QuicConnection.

The transport feeds `receive(data, peer, now)`; the transaction user (the SIPREC service) drains
`next_event()` and answers requests with `respond(txn, ...)`; whatever must go on the wire is
drained with `messages_to_send()`; one timer is armed from `get_timer()` and fired with
`handle_timer(now)`. Nothing here touches a socket or reads a clock, so every RFC 3261 timer is
tested with a fake clock.

What the core decides alone (generic SIP): retransmissions, 100 Trying, CANCEL (200 + 487), BYE
(200, 481 unknown dialog, 487 to what was still pending), ACK matching, OPTIONS,
405/408/420/481/483/500/491, session timers (RFC 4028: 422 below Min-SE, BYE when the SRC stops
refreshing, UPDATE refreshes when the SRC asked us to be the refresher). What it leaves to the
transaction user: whether and how to answer INVITE, UPDATE (bodies are SIPREC business). A
request the transaction user leaves unanswered for 64*T1 gets 408, so no transaction is stuck.

The machines live in their own modules, each with a state table that raises on an illegal
transition: transaction (RFC 3261 §17, RFC 6026), dialog (§12-§15), session_timer (RFC 4028);
routing says where messages go (§18.2, RFC 3581). This module is the dispatch between them.

What SRCs in the field get wrong is accepted where that costs nothing and the dialog is still
known without doubt (an ACK with the wrong CSeq or To-tag, a BYE with a stale CSeq, a Contact
without its `>`): logged with ids only and counted in `counters`. `AgentSettings.strict` keeps
the RFC 3261 answers instead.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Iterable
from functools import partial

from siprec_server.logs import get_logger
from siprec_server.sip.counters import SipCounters
from siprec_server.sip.dialog import (
    Dialog,
    DialogLayer,
    DialogState,
    InviteState,
    closed_address,
    contact_uri,
    dialog_id,
    dialog_id_of_request,
)
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
    ascii_digits,
    build_response,
    parse_message,
)
from siprec_server.sip.routing import (
    reply_destination,
    request_destination,
    stamp_via,
)
from siprec_server.sip.session_timer import (
    Negotiated,
    SessionTimer,
    negotiate,
    refusal,
)
from siprec_server.sip.settings import AgentSettings
from siprec_server.sip.timers import TimerQueue
from siprec_server.sip.transaction import (
    ClientOutcome,
    ServerTransaction,
    TransactionLayer,
    TransactionState,
    new_branch,
    transaction_key,
)

__all__ = ["AgentSettings", "SipAgent"]

log = get_logger("sip")


class SipAgent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self._timers = TimerQueue()
        self._events: deque[SipEvent] = deque()
        self._outgoing: list[Outgoing] = []
        self.counters = SipCounters()
        self._transactions = TransactionLayer(
            self._timers, settings.timers, self._send, self.counters
        )
        self._dialog_layer = DialogLayer(self._timers, settings.timers, self._send)
        # The tables by their old names: tests check that nothing is left in them.
        self._server = self._transactions.server
        self._by_id = self._transactions.by_id
        self._client = self._transactions.client
        self._dialogs = self._dialog_layer.dialogs

    # ---------------------------------------------------------------- the transport's side

    def receive(self, data: bytes, peer: Peer, now: float) -> None:
        """One complete message (a datagram, or one framed from a stream)."""
        if not data.strip(b"\r\n"):
            # CRLF keep-alives (RFC 5626 §3.5.1) also arrive as datagrams; they are no error.
            self.counters.keepalives += 1
            return
        try:
            message = parse_message(data, datagram=not peer.reliable)
        except SipParseError as exc:
            self.counters.parse_errors += 1
            partial = exc.partial
            if partial is not None and partial.method != "ACK":
                self._stateless_reply(partial, peer, exc.status, exc.reason)
            return
        if isinstance(message, SipResponse):
            self._transactions.receive_response(message, now)
            return
        self.counters.requests += 1
        try:
            self._receive_request(message, peer, now)
        except SipParseError as exc:
            # A header the dispatch needed turned out malformed (e.g. a From we must parse).
            self.counters.parse_errors += 1
            if message.method != "ACK":
                self._stateless_reply(message, peer, exc.status, exc.reason)

    def messages_to_send(self) -> list[Outgoing]:
        out, self._outgoing = self._outgoing, []
        return out

    def _send(self, item: Outgoing) -> None:
        self._outgoing.append(item)

    def next_event(self) -> SipEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        return self._timers.next_deadline()

    def handle_timer(self, now: float) -> None:
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
        finished (cancelled, timed out, its dialog ended), in which case nothing is sent."""
        txn = self._transactions.get(txn_id)
        if txn is None or txn.final_status:
            return False
        request = txn.request
        method = request.method
        dialog = self._dialog_layer.get(txn.dialog)
        if txn.dialog is not None and (dialog is None or dialog.ended):
            return False  # already answered 487 when the dialog ended
        success = 200 <= status < 300
        extra = Headers(headers)
        session: Negotiated | None = None
        if method in ("INVITE", "UPDATE") and success:
            session = negotiate(
                request,
                session_expires=self.settings.session_expires,
                min_se=self.settings.min_se,
                dialog_allows_update=dialog is not None and dialog.peer_allows_update,
            )
            if session is not None:
                extra.add("Session-Expires", session.header())
                if session.require:
                    extra.add("Require", "timer")
        if method == "INVITE" and 100 < status < 300:
            if "Contact" not in extra:
                extra.add("Contact", self.settings.contact(txn.peer.transport))
            if txn.dialog is None and "Record-Route" not in extra:
                # RFC 3261 §12.1.1: a response that creates a dialog copies Record-Route.
                for value in request.headers.get_all("Record-Route"):
                    extra.add("Record-Route", value)
        if method == "UPDATE" and success and "Contact" not in extra:
            # UPDATE is a target refresh request (RFC 3311 §5.2): its 2xx carries our Contact.
            extra.add("Contact", self.settings.contact(txn.peer.transport))
        if method == "INVITE" and success:
            extra.add("Allow", ", ".join(self.settings.allow))
            extra.add("Supported", ", ".join(self.settings.supported))
        response = self._response(request, status, reason, txn.to_tag, list(extra), body)
        if method == "INVITE" and success:
            self._accept_invite(txn, response, now, session)
        elif method == "UPDATE" and success and dialog is not None:
            if txn.target:
                dialog.remote_target = txn.target
            dialog.session.start(session, now)
        self._send_response(txn, response, now)
        return True

    def end_dialog(self, dialog_id: str, now: float, reason: str = "local") -> None:
        """Hang up a dialog from our side (BYE), e.g. at shutdown or when media timed out."""
        dialog = self._dialog_layer.get(dialog_id)
        if dialog is None or dialog.ended:
            return
        if dialog.awaiting_ack:
            # RFC 3261 §15: no BYE before the ACK of our 2xx (or its timeout); until then the
            # 2xx keeps being retransmitted, and the BYE follows the ACK.
            self._terminate_dialog(dialog, reason, now, bye_after_ack=True)
        else:
            self._send_bye(dialog, now, reason_text=reason)
            self._terminate_dialog(dialog, reason, now)

    def dialog_of(self, txn_id: str) -> str | None:
        """The dialog a transaction created or belongs to (known once a 2xx was sent)."""
        txn = self._transactions.get(txn_id)
        return txn.dialog if txn else None

    def dialog_ids(self) -> list[str]:
        return self._dialog_layer.live_ids()

    # ---------------------------------------------------------------- requests

    def _receive_request(self, request: SipRequest, peer: Peer, now: float) -> None:
        stamp_via(request, peer)
        method = request.method
        if method == "ACK":
            self._receive_ack(request, now)
            return
        key = transaction_key(request)
        existing = self._transactions.find(key)
        if existing is not None:
            self._transactions.absorb(existing)
            return
        if method == "CANCEL":
            self._receive_cancel(request, peer, now)
            return
        if len(self._transactions.server) >= self.settings.max_transactions:
            self._stateless_reply(request, peer, 503, "Overloaded", [("Retry-After", "5")])
            return
        txn = self._open_transaction(key, request, peer, now)
        try:
            self._process(txn, now)
        except SipParseError as exc:
            self.counters.parse_errors += 1
            self._reply(txn, exc.status, now, reason=exc.reason)

    def _process(self, txn: ServerTransaction, now: float) -> None:
        request = txn.request
        method = request.method
        # RFC 3261 §8.2.1 (method) comes before §8.2.2 (header) inspection.
        if method not in self.settings.allow and method != "OPTIONS":
            self._reply(txn, 405, now, headers=[("Allow", ", ".join(self.settings.allow))])
            return
        max_forwards = ascii_digits(request.headers.get("Max-Forwards") or "")
        if max_forwards == 0 and method != "OPTIONS":
            self._reply(txn, 483, now)
            return
        supported = {tag.lower() for tag in self.settings.supported}
        unsupported = sorted(request.headers.tokens("Require") - supported)
        if unsupported:
            self._reply(txn, 420, now, headers=[("Unsupported", ", ".join(unsupported))])
            return
        if method == "OPTIONS":
            self._reply(txn, 200, now, headers=self.settings.capabilities(txn.peer.transport))
            return
        if request.is_in_dialog:
            self._process_in_dialog(txn, now)
            return
        if method != "INVITE":
            self._reply(txn, 481, now)
            return
        if not self._session_interval_acceptable(txn, now):
            return
        contacts = request.headers.values("Contact")
        if not contacts:
            self._reply(txn, 400, now, reason="Missing Contact")
            return
        txn.target = self._contact_target(txn, contacts[0])  # malformed → 400 via the caller
        self._reply(txn, 100, now)
        self._events.append(RequestReceived(txn.id, request, txn.peer, None))

    def _process_in_dialog(self, txn: ServerTransaction, now: float) -> None:
        request = txn.request
        dialog = self._dialog_layer.get(dialog_id_of_request(request))
        if dialog is not None and dialog.state is DialogState.CLOSING and request.method == "BYE":
            # The SRC hangs up first while our BYE waits for the ACK: its BYE does the job.
            self._dialog_layer.stop_awaiting_ack(dialog)
            dialog.move(DialogState.ENDED)
            self._reply(txn, 200, now)
            return
        if dialog is None or dialog.ended:
            self._reply(txn, 481, now)
            return
        txn.dialog = dialog.id
        txn.to_tag = dialog.local_tag
        number, method = request.cseq
        # RFC 3261 §12.2.2: only a *lower* CSeq is out of order.
        if number >= dialog.remote_cseq:
            dialog.remote_cseq = number
        elif method == "BYE" and not self.settings.strict:
            # SRC scripts that count CSeq per method: refusing the BYE would leave the
            # recording running until media inactivity, and a BYE can only end the dialog.
            self.counters.tolerated_low_cseq_bye += 1
            log.warning("sip_low_cseq_bye_tolerated", dialog=dialog.id, txn=txn.id)
        else:
            self._reply(txn, 500, now, reason="CSeq out of order")
            return
        dialog.open_txns.add(txn.id)
        if method == "BYE":
            self._reply(txn, 200, now)
            self._terminate_dialog(dialog, "bye", now)
            return
        if method == "INFO":
            self._reply(txn, 200, now)
            self._events.append(InfoReceived(dialog.id, request.content_type, request.body))
            return
        if method in ("INVITE", "UPDATE"):
            has_offer = bool(request.body)
            busy = dialog.invite is InviteState.PENDING or dialog.pending_offer is not None
            if busy and (method == "INVITE" or has_offer):
                # RFC 3261 §14.2 / RFC 3311 §5.2: a request while an offer we received is
                # unanswered: 500 with Retry-After between 0 and 10 seconds.
                self._reply(txn, 500, now, headers=[("Retry-After", str(secrets.randbelow(11)))])
                return
            if dialog.awaiting_ack and (method == "INVITE" or (has_offer and dialog.offer_in_2xx)):
                # Our 2xx (maybe with our offer) is not acknowledged yet: glare.
                self._reply(txn, 491, now)
                return
            if not self._session_interval_acceptable(txn, now):
                return
            if contacts := request.headers.values("Contact"):
                txn.target = self._contact_target(txn, contacts[0])
            if request.headers.get("Allow"):
                dialog.peer_allows_update = "update" in request.headers.tokens("Allow")
            if method == "INVITE":
                dialog.move_invite(InviteState.PENDING)
                dialog.invite_txn = txn.id
                self._reply(txn, 100, now)
            elif has_offer:
                dialog.pending_offer = txn.id
            self._events.append(RequestReceived(txn.id, request, txn.peer, dialog.id))
            return
        self._reply(txn, 405, now, headers=[("Allow", ", ".join(self.settings.allow))])

    def _receive_ack(self, request: SipRequest, now: float) -> None:
        # ACK for a non-2xx final response: same branch as the INVITE (RFC 3261 §17.2.1).
        txn = self._transactions.find(transaction_key(request, method="INVITE"))
        if txn is not None and txn.state is TransactionState.COMPLETED:
            self._transactions.acknowledged(txn, now)
            return
        # ACK for a 2xx: its own transaction, matched to the dialog (RFC 3261 §13.3.1.4).
        dialog = self._dialog_layer.get(dialog_id_of_request(request))
        number, _ = request.cseq
        if dialog is not None and dialog.awaiting_ack and number == dialog.unacked_cseq:
            self._acknowledged(dialog, now)
            return
        odd = None if self.settings.strict else self._dialog_layer.for_odd_ack(request, txn, dialog)
        if odd is not None:
            # A wrong CSeq or To-tag: ignoring the ACK would repeat our 2xx, refuse the next
            # re-INVITE with 491 and finally hang up for want of an ACK.
            self.counters.tolerated_ack_mismatch += 1
            mismatch = [
                name
                for name, ok in (
                    ("cseq", number == odd.unacked_cseq),
                    ("to-tag", request.to_tag == odd.local_tag),
                )
                if not ok
            ]
            log.warning("sip_ack_mismatch_tolerated", dialog=odd.id, mismatch="+".join(mismatch))
            self._acknowledged(odd, now)
        elif dialog is None or dialog.ended:
            self.counters.dropped += 1

    def _receive_cancel(self, request: SipRequest, peer: Peer, now: float) -> None:
        invite = self._transactions.find(transaction_key(request, method="INVITE"))
        txn = self._open_transaction(transaction_key(request), request, peer, now)
        if invite is None:
            self._reply(txn, 481, now)
            return
        # RFC 3261 §9.2: the To tag of the 200 to CANCEL matches the INVITE's responses.
        txn.to_tag = invite.to_tag
        self._reply(txn, 200, now)
        if not invite.final_status:
            self._reply(invite, 487, now)
            self._events.append(InviteCancelled(invite.id))

    def _contact_target(self, txn: ServerTransaction, contact: str) -> str:
        """The remote target a Contact names (SipParseError: malformed). A Contact only missing
        its closing `>` is repaired, in the request too, unless strict."""
        try:
            return contact_uri(contact)
        except SipParseError:
            repaired = None if self.settings.strict else closed_address(contact)
            if repaired is None:
                raise
        target = contact_uri(repaired)
        txn.request.headers.replace_first("Contact", repaired)
        self.counters.tolerated_unclosed_contact += 1
        log.warning("sip_unclosed_contact_tolerated", txn=txn.id, call_id=txn.request.call_id)
        return target

    # ---------------------------------------------------------------- responses out

    def _reply(
        self,
        txn: ServerTransaction,
        status: int,
        now: float,
        *,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        if txn.final_status:
            return
        response = self._response(txn.request, status, reason, txn.to_tag, list(headers), b"")
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

    def _send_response(self, txn: ServerTransaction, response: SipResponse, now: float) -> None:
        status = response.status
        self._transactions.sent(txn, response.to_bytes(), status, now)
        if status < 200:
            return
        if (dialog := self._dialog_layer.get(txn.dialog)) is not None:
            dialog.open_txns.discard(txn.id)
            if dialog.invite is InviteState.PENDING and dialog.invite_txn == txn.id:
                dialog.move_invite(InviteState.IDLE)
            if dialog.pending_offer == txn.id:
                dialog.pending_offer = None

    def _answer_overdue(self, txn: ServerTransaction, now: float) -> None:
        """The transaction user never answered: the SRC gave up long ago (Timer B/F are
        64*T1), so close the transaction with 408 rather than keep it forever."""
        if txn.final_status:
            return
        self.counters.unanswered += 1
        self._reply(txn, 408, now, reason="No answer from the recording service")

    def _stateless_reply(
        self,
        request: SipRequest,
        peer: Peer,
        status: int,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        try:
            stamp_via(request, peer)
            reply_to = reply_destination(request, peer)
        except SipParseError:
            return
        response = self._response(request, status, reason, secrets.token_hex(6), headers or [], b"")
        self.counters.responses_sent += 1
        self._send(Outgoing(response.to_bytes(), reply_to))

    # ---------------------------------------------------------------- INVITE outcomes, dialogs

    def _accept_invite(
        self,
        txn: ServerTransaction,
        response: SipResponse,
        now: float,
        session: Negotiated | None,
    ) -> None:
        request = txn.request
        dialog = self._dialog_layer.get(txn.dialog)
        if dialog is None:
            dialog = Dialog(
                id=dialog_id(request.call_id, txn.to_tag, request.from_tag or ""),
                call_id=request.call_id,
                local_tag=txn.to_tag,
                remote_tag=request.from_tag or "",
                local_uri=response.headers.get("To") or "",
                remote_uri=request.headers.get("From") or "",
                remote_target=txn.target or contact_uri(request.headers.values("Contact")[0]),
                # RFC 3261 §12.1.1: the UAS keeps the Record-Route values in order.
                route_set=request.headers.values("Record-Route"),
                remote_cseq=request.cseq[0],
                peer=txn.peer,
                invite_txn=txn.id,
                peer_allows_update="update" in request.headers.tokens("Allow"),
            )
            dialog.session = SessionTimer(
                self._timers,
                partial(self._send_session_refresh, dialog),
                partial(self._session_expired, dialog),
            )
            self._dialog_layer.add(dialog)
            txn.dialog = dialog.id
        elif txn.target:
            dialog.remote_target = txn.target
        dialog.peer = txn.peer
        self._dialog_layer.await_ack(
            dialog,
            response.to_bytes(),
            request.cseq[0],
            not request.body and bool(response.body),
            txn.reply_to,
            now,
            self._ack_never_came,
        )
        dialog.session.start(session, now)

    def _acknowledged(self, dialog: Dialog, now: float) -> None:
        """The ACK of our 2xx came."""
        self._dialog_layer.stop_awaiting_ack(dialog)
        if dialog.state is DialogState.CLOSING:
            dialog.move(DialogState.ENDED)
            self._send_bye(dialog, now, reason_text=dialog.closing_reason)
        elif dialog.state is DialogState.UNCONFIRMED:
            dialog.move(DialogState.CONFIRMED)
            self._events.append(DialogConfirmed(dialog.id))

    def _ack_never_came(self, dialog: Dialog, now: float) -> None:
        if not dialog.awaiting_ack:
            return
        # RFC 3261 §13.3.1.4: no ACK within 64*T1 — confirm then end the session with BYE.
        self._dialog_layer.stop_awaiting_ack(dialog)
        if dialog.state is DialogState.CLOSING:
            dialog.move(DialogState.ENDED)
            self._send_bye(dialog, now, reason_text=dialog.closing_reason)
            return
        self._send_bye(dialog, now, reason_text="no ACK")
        self._terminate_dialog(dialog, "no-ack", now)

    def _terminate_dialog(
        self, dialog: Dialog, reason: str, now: float, *, bye_after_ack: bool = False
    ) -> None:
        """The dialog is over for the transaction user. With `bye_after_ack` our BYE waits for
        the ACK of our 2xx (CLOSING); otherwise it already went, or the SRC's BYE ended it."""
        if dialog.ended:
            return
        if bye_after_ack:
            dialog.move(DialogState.CLOSING)
            dialog.closing_reason = reason
        else:
            dialog.move(DialogState.ENDED)
        dialog.session.stop()
        if not bye_after_ack and dialog.awaiting_ack:
            self._dialog_layer.stop_awaiting_ack(dialog)
        # RFC 3261 §15.1.2: requests still pending on the dialog get 487.
        for txn_id in sorted(dialog.open_txns):
            if (pending := self._transactions.get(txn_id)) is not None:
                self._reply(pending, 487, now)
        dialog.open_txns.clear()
        self._events.append(DialogEnded(dialog.id, reason))
        self._dialog_layer.forget_later(dialog, now)

    # ---------------------------------------------------------------- session timers (RFC 4028)

    def _session_interval_acceptable(self, txn: ServerTransaction, now: float) -> bool:
        refused = refusal(txn.request, self.settings.min_se)
        if refused is None:
            return True
        self._reply(txn, refused.status, now, reason=refused.reason, headers=refused.headers)
        return False

    def _send_session_refresh(
        self, dialog: Dialog, interval: int, on_final: ClientOutcome, now: float
    ) -> None:
        self.counters.session_refreshes += 1
        headers = [
            ("Contact", self.settings.contact(dialog.peer.transport)),
            ("Session-Expires", f"{interval};refresher=uas"),
            ("Min-SE", str(self.settings.min_se)),
            ("Supported", "timer"),
        ]
        self._send_in_dialog(dialog, "UPDATE", now, headers, on_final)

    def _session_expired(self, dialog: Dialog, now: float) -> None:
        if dialog.ended:
            return
        self._send_bye(dialog, now, reason_text="session expired")
        self._terminate_dialog(dialog, "session-expired", now)

    # ---------------------------------------------------------------- requests we send

    def _send_bye(self, dialog: Dialog, now: float, reason_text: str) -> None:
        self._send_in_dialog(
            dialog, "BYE", now, [("Reason", f'SIP;cause=200;text="{reason_text}"')], None
        )

    def _send_in_dialog(
        self,
        dialog: Dialog,
        method: str,
        now: float,
        extra: list[tuple[str, str]],
        on_final: ClientOutcome | None,
    ) -> None:
        """A request within the dialog (RFC 3261 §12.2.1.1) on a new client transaction."""
        branch = new_branch()
        via = self.settings.via(dialog.peer.transport, branch)
        request = dialog.new_request(method, via, extra, self.settings.server)
        peer = request_destination(dialog.peer, dialog.route_set, dialog.remote_target)
        self._transactions.start_client(branch, request.to_bytes(), peer, now, on_final)

    # ---------------------------------------------------------------- helpers

    def _open_transaction(
        self, key: tuple[str, ...], request: SipRequest, peer: Peer, now: float
    ) -> ServerTransaction:
        reply_to = reply_destination(request, peer)
        return self._transactions.open(key, request, peer, reply_to, now, self._answer_overdue)
