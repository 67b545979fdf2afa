"""The SIP dialogs the SRS holds as UAS (RFC 3261 §12, §13.3.1.4, §14, §15): their identity,
remote target and route set, the requests we send within them, and two machines with their
state tables: the dialog's lifecycle from our 2xx to its end, and the INVITE exchange within it
(a re-INVITE waiting for the transaction user, our 2xx repeated until its ACK comes).

The dialog layer owns the table of dialogs and the UAS core's 2xx retransmissions; what a
request means for a dialog (BYE, re-INVITE, UPDATE, ACK) is decided by the agent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import partial

from siprec_server.sip.events import Outgoing, Peer
from siprec_server.sip.message import Headers, SipRequest, parse_address
from siprec_server.sip.session_timer import SessionTimer
from siprec_server.sip.timers import TimerHandle, TimerQueue, TimerValues
from siprec_server.sip.transaction import ServerTransaction
from siprec_server.sip.transitions import StateTable


class DialogState(Enum):
    UNCONFIRMED = "unconfirmed"
    """Our 2xx to the INVITE that created the dialog went; its ACK has not come yet."""
    CONFIRMED = "confirmed"
    """The ACK came (the transaction user got DialogConfirmed)."""
    CLOSING = "closing"
    """We hung up before the ACK of our 2xx: the 2xx is still repeated and our BYE waits for
    the ACK or its timeout (RFC 3261 §15). The transaction user already got DialogEnded."""
    ENDED = "ended"
    """Over; kept for 64*T1 so that late retransmissions (BYE, ACK) still find it."""


_D = DialogState
DIALOG = StateTable(
    "dialog",
    {
        _D.UNCONFIRMED: {_D.CONFIRMED, _D.CLOSING, _D.ENDED},
        _D.CONFIRMED: {_D.CLOSING, _D.ENDED},
        _D.CLOSING: {_D.ENDED},
        _D.ENDED: set(),
    },
)


class InviteState(Enum):
    """The INVITE exchange within a dialog."""

    IDLE = "idle"
    PENDING = "pending"
    """An INVITE waits for the transaction user's answer: a re-INVITE meanwhile gets 500 with
    Retry-After (RFC 3261 §14.2). A dialog is created in this state, by the 2xx it answers."""
    AWAITING_ACK = "awaiting-ack"
    """Our 2xx is repeated until its ACK, 64*T1 at most (§13.3.1.4); a re-INVITE meanwhile
    gets 491."""


_I = InviteState
INVITE_EXCHANGE = StateTable(
    "INVITE exchange",
    {
        _I.IDLE: {_I.PENDING},
        _I.PENDING: {_I.IDLE, _I.AWAITING_ACK},
        _I.AWAITING_ACK: {_I.IDLE},
    },
)


@dataclass(slots=True, eq=False)
class Dialog:
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
    invite_txn: str
    """The server transaction of the INVITE being answered or last answered."""
    peer_allows_update: bool = False
    local_cseq: int = 0
    state: DialogState = DialogState.UNCONFIRMED
    invite: InviteState = InviteState.PENDING
    pending_offer: str | None = None
    """An UPDATE carrying an offer not yet answered (RFC 3311 §5.2)."""
    open_txns: set[str] = field(default_factory=set)
    """Server transactions of this dialog without a final response yet."""
    unacked_2xx: bytes = b""
    """While AWAITING_ACK: our 2xx, repeated until the ACK."""
    unacked_cseq: int = 0
    offer_in_2xx: bool = False
    """Our unacknowledged 2xx carries an offer whose answer comes in the ACK."""
    ack_interval: float = 0.0
    ack_retransmit: TimerHandle | None = None
    ack_timeout: TimerHandle | None = None
    closing_reason: str = ""
    """While CLOSING: the reason of the BYE that waits for the ACK."""
    session: SessionTimer = field(init=False)

    def move(self, new: DialogState) -> None:
        self.state = DIALOG.check(self.state, new)

    def move_invite(self, new: InviteState) -> None:
        self.invite = INVITE_EXCHANGE.check(self.invite, new)

    @property
    def ended(self) -> bool:
        """Over for the transaction user (DialogEnded given), even while a BYE still waits."""
        return self.state in (DialogState.CLOSING, DialogState.ENDED)

    @property
    def awaiting_ack(self) -> bool:
        return self.invite is InviteState.AWAITING_ACK

    def new_request(
        self, method: str, via: str, extra: list[tuple[str, str]], user_agent: str
    ) -> SipRequest:
        """A request within the dialog (RFC 3261 §12.2.1.1), with the next local CSeq."""
        self.local_cseq = max(self.local_cseq + 1, 1)
        headers = Headers()
        headers.add("Via", via)
        headers.add("Max-Forwards", "70")
        headers.add("From", self.local_uri)
        headers.add("To", self.remote_uri)
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{self.local_cseq} {method}")
        for route in self.route_set:
            headers.add("Route", route)
        for name, value in extra:
            headers.add(name, value)
        headers.add("User-Agent", user_agent)
        return SipRequest(headers, b"", method, self.remote_target)


def dialog_id(call_id: str, local_tag: str, remote_tag: str) -> str:
    return f"{call_id};{local_tag};{remote_tag}"


def dialog_id_of_request(request: SipRequest) -> str:
    """The id of the dialog an in-dialog request from the SRC names (we are the UAS)."""
    return dialog_id(request.call_id, request.to_tag or "", request.from_tag or "")


def contact_uri(address: str) -> str:
    """The URI of a name-addr or addr-spec, as written (RFC 3261 §12.1.1: the remote target is
    the Contact URI; re-serialising it could change it). SipParseError when malformed."""
    parse_address(address)
    quoted = False
    for i, ch in enumerate(address):
        if ch == '"':
            quoted = not quoted
        elif ch == "<" and not quoted:
            end = address.find(">", i)
            return address[i + 1 : end].strip()
    return address.strip().split(";", 1)[0].strip()


def closed_address(address: str) -> str | None:
    """`address` with the `>` it lacks, for a Contact written `<sip:...` with one unquoted `<`
    and no `>`; None for anything else. The `>` goes at the very end: whatever followed the URI
    (`;+sip.src`, `;transport=tcp`) becomes URI parameters, so nothing written is lost."""
    quoted = False
    opening = closing = 0
    for ch in address:
        if ch == '"':
            quoted = not quoted
        elif not quoted:
            opening += ch == "<"
            closing += ch == ">"
    if opening != 1 or closing or quoted:
        return None
    return address.rstrip() + ">"


class DialogLayer:
    """The dialogs of one agent by id, and the UAS core's 2xx retransmissions."""

    def __init__(
        self, timers: TimerQueue, values: TimerValues, send: Callable[[Outgoing], None]
    ) -> None:
        self._timers = timers
        self._values = values
        self._send = send
        self.dialogs: dict[str, Dialog] = {}

    def get(self, dialog_id: str | None) -> Dialog | None:
        return self.dialogs.get(dialog_id) if dialog_id is not None else None

    def add(self, dialog: Dialog) -> None:
        self.dialogs[dialog.id] = dialog

    def live_ids(self) -> list[str]:
        return [d.id for d in self.dialogs.values() if not d.ended]

    def of_src(self, call_id: str, remote_tag: str) -> list[Dialog]:
        """The dialogs of a Call-ID and SRC tag whose 2xx may still await an ACK (not ENDED).
        A scan: only requests that match no dialog by their tags get here."""
        return [
            d
            for d in self.dialogs.values()
            if d.call_id == call_id and d.remote_tag == remote_tag and d.state is not _D.ENDED
        ]

    def for_odd_ack(
        self, request: SipRequest, invite: ServerTransaction | None, dialog: Dialog | None
    ) -> Dialog | None:
        """The dialog an ACK with a wrong CSeq or To-tag acknowledges, if there is no doubt
        which: Call-ID and From-tag match, and either the ACK carries the branch of the INVITE
        (`invite`) whose 2xx awaits it, or its tags name the dialog (`dialog`), or it is the
        only dialog of that Call-ID and From-tag. An ACK with the branch of any other INVITE
        belongs to that INVITE (e.g. a late ACK of a 491), never to another 2xx."""
        if invite is not None:
            candidate = self.get(invite.dialog)
            if candidate is not None and candidate.invite_txn != invite.id:
                return None
        elif dialog is not None:
            candidate = dialog
        else:
            found = self.of_src(request.call_id, request.from_tag or "")
            candidate = found[0] if len(found) == 1 else None
        if candidate is None or not candidate.awaiting_ack:
            return None
        if (candidate.call_id, candidate.remote_tag) != (request.call_id, request.from_tag or ""):
            return None
        return candidate

    def await_ack(
        self,
        dialog: Dialog,
        response: bytes,
        cseq: int,
        offer_in_2xx: bool,
        reply_to: Peer,
        now: float,
        no_ack: Callable[[Dialog, float], None],
    ) -> None:
        """Our 2xx to the dialog's INVITE went: repeat it until the ACK (RFC 3261 §13.3.1.4),
        and call `no_ack` if none came within 64*T1."""
        dialog.move_invite(InviteState.AWAITING_ACK)
        dialog.unacked_2xx = response
        dialog.unacked_cseq = cseq
        dialog.offer_in_2xx = offer_in_2xx
        values = self._values
        if not reply_to.reliable:
            # The UAS core retransmits the 2xx, T1 doubling up to T2.
            dialog.ack_interval = values.t1
            dialog.ack_retransmit = self._timers.schedule(
                now + values.t1, self._retransmit_2xx(dialog, reply_to)
            )
        dialog.ack_timeout = self._timers.schedule(now + 64 * values.t1, partial(no_ack, dialog))

    def stop_awaiting_ack(self, dialog: Dialog) -> None:
        """The ACK came, will never come, or no longer matters."""
        dialog.move_invite(InviteState.IDLE)
        dialog.unacked_2xx = b""
        dialog.offer_in_2xx = False
        for handle in (dialog.ack_retransmit, dialog.ack_timeout):
            if handle:
                handle.cancel()

    def _retransmit_2xx(self, dialog: Dialog, reply_to: Peer) -> Callable[[float], None]:
        def fire(now: float) -> None:
            if not dialog.awaiting_ack:
                return
            self._send(Outgoing(dialog.unacked_2xx, reply_to))
            dialog.ack_interval = min(2 * dialog.ack_interval, self._values.t2)
            dialog.ack_retransmit = self._timers.schedule(now + dialog.ack_interval, fire)

        return fire

    def forget_later(self, dialog: Dialog, now: float) -> None:
        """Keep an ended dialog until late retransmissions (BYE, ACK) can no longer arrive."""
        self._timers.schedule(now + 64 * self._values.t1, partial(self._forget, dialog.id))

    def _forget(self, dialog_id: str, _now: float) -> None:
        self.dialogs.pop(dialog_id, None)
