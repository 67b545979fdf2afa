"""SIP transactions (RFC 3261 §17, RFC 6026): the server transactions the SRC's requests open and
the non-INVITE client transactions of the requests we send (BYE, the session refresh UPDATE).

This layer matches requests and responses to transactions, absorbs retransmitted requests,
repeats our responses and requests over UDP, and runs the transaction timers: G, H, I, J, L on
the server side, E and F on the client side. What a request means, and what to answer, is the
agent's business; what the state of a transaction may become is the state tables' below.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import partial

from siprec_server.sip.counters import SipCounters
from siprec_server.sip.events import Outgoing, Peer
from siprec_server.sip.message import SipParseError, SipRequest, SipResponse
from siprec_server.sip.timers import TimerHandle, TimerQueue, TimerValues
from siprec_server.sip.transitions import StateTable

MAGIC_COOKIE = "z9hG4bK"

ClientOutcome = Callable[[int, "SipResponse | None", float], None]
"""What a client transaction reports: the final status (408 on Timer F), the response if any,
and `now`."""


class TransactionState(Enum):
    TRYING = "trying"
    """Non-INVITE: the request came (or went, client side); no response yet (§17.2.2)."""
    PROCEEDING = "proceeding"
    """A provisional response went; an INVITE server transaction starts here (§17.2.1)."""
    COMPLETED = "completed"
    """A final response went. INVITE: a non-2xx, repeated by Timer G until the ACK or Timer H.
    Non-INVITE: kept until Timer J to answer retransmissions."""
    ACCEPTED = "accepted"
    """INVITE answered 2xx (RFC 6026 §7.1): retransmitted INVITEs absorbed until Timer L; the
    2xx itself is repeated by the dialog until its ACK."""
    CONFIRMED = "confirmed"
    """The ACK of our non-2xx came; its retransmissions are absorbed until Timer I."""
    TERMINATED = "terminated"


_T = TransactionState
INVITE_SERVER = StateTable(
    "INVITE server transaction",
    {
        _T.TRYING: set(),  # not a state of INVITE server transactions
        _T.PROCEEDING: {_T.PROCEEDING, _T.COMPLETED, _T.ACCEPTED},
        _T.COMPLETED: {_T.CONFIRMED, _T.TERMINATED},
        _T.ACCEPTED: {_T.TERMINATED},
        _T.CONFIRMED: {_T.TERMINATED},
        _T.TERMINATED: set(),
    },
)
NON_INVITE_SERVER = StateTable(
    "non-INVITE server transaction",
    {
        _T.TRYING: {_T.PROCEEDING, _T.COMPLETED},
        _T.PROCEEDING: {_T.PROCEEDING, _T.COMPLETED},
        _T.COMPLETED: {_T.TERMINATED},
        _T.ACCEPTED: set(),  # INVITE only
        _T.CONFIRMED: set(),  # INVITE only
        _T.TERMINATED: set(),
    },
)
NON_INVITE_CLIENT = StateTable(
    "non-INVITE client transaction",
    {
        # No Completed state (Timer K): the transaction ends with its final response, and a
        # retransmission of that response finds none (counted as dropped).
        _T.TRYING: {_T.PROCEEDING, _T.TERMINATED},
        _T.PROCEEDING: {_T.PROCEEDING, _T.TERMINATED},
        _T.COMPLETED: set(),
        _T.ACCEPTED: set(),
        _T.CONFIRMED: set(),
        _T.TERMINATED: set(),
    },
)


@dataclass(slots=True, eq=False)
class ServerTransaction:
    id: str
    key: tuple[str, ...]
    request: SipRequest
    peer: Peer
    reply_to: Peer
    """Where responses go (RFC 3261 §18.2.2, RFC 3581)."""
    to_tag: str
    dialog: str | None = None
    state: TransactionState = field(init=False)
    last_response: bytes | None = None
    final_status: int = 0
    interval: float = 0.0
    retransmit: TimerHandle | None = None
    timeout: TimerHandle | None = None
    target: str | None = None
    """The Contact URI of the request: the remote target of the dialog an INVITE creates, or
    the new one of a target refresh request, applied when it is accepted (RFC 6141)."""

    def __post_init__(self) -> None:
        self.state = TransactionState.PROCEEDING if self.is_invite else TransactionState.TRYING

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    def move(self, new: TransactionState) -> None:
        table = INVITE_SERVER if self.is_invite else NON_INVITE_SERVER
        self.state = table.check(self.state, new)

    def cancel_timers(self) -> None:
        for handle in (self.retransmit, self.timeout):
            if handle:
                handle.cancel()


@dataclass(slots=True, eq=False)
class ClientTransaction:
    """A non-INVITE client transaction: the BYE and the session refresh UPDATE we send."""

    branch: str
    data: bytes
    peer: Peer
    interval: float
    on_final: ClientOutcome | None = None
    state: TransactionState = TransactionState.TRYING
    retransmit: TimerHandle | None = None
    timeout: TimerHandle | None = None

    def move(self, new: TransactionState) -> None:
        self.state = NON_INVITE_CLIENT.check(self.state, new)


def transaction_key(request: SipRequest, method: str | None = None) -> tuple[str, ...]:
    """What matches a request to its server transaction (RFC 3261 §17.2.3); an ACK or CANCEL
    asks with method="INVITE" for the INVITE it refers to."""
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


def new_branch() -> str:
    return MAGIC_COOKIE + secrets.token_hex(8)


class TransactionLayer:
    """The transactions of one agent, server and client, and their timers."""

    def __init__(
        self,
        timers: TimerQueue,
        values: TimerValues,
        send: Callable[[Outgoing], None],
        counters: SipCounters,
    ) -> None:
        self._timers = timers
        self._values = values
        self._send = send
        self._counters = counters
        self.server: dict[tuple[str, ...], ServerTransaction] = {}
        self.by_id: dict[str, ServerTransaction] = {}
        self.client: dict[str, ClientTransaction] = {}
        self._next_id = 0

    # ---------------------------------------------------------------- server transactions

    def find(self, key: tuple[str, ...]) -> ServerTransaction | None:
        return self.server.get(key)

    def get(self, txn_id: str) -> ServerTransaction | None:
        return self.by_id.get(txn_id)

    def absorb(self, txn: ServerTransaction) -> None:
        """A retransmitted request: the last response again, if there is one to repeat."""
        self._counters.retransmissions_absorbed += 1
        # RFC 6026 §7.1: in Accepted the 2xx is retransmitted by its own timer, not here.
        if txn.last_response is not None and txn.state is not TransactionState.ACCEPTED:
            self._send(Outgoing(txn.last_response, txn.reply_to))

    def open(
        self,
        key: tuple[str, ...],
        request: SipRequest,
        peer: Peer,
        reply_to: Peer,
        now: float,
        overdue: Callable[[ServerTransaction, float], None],
    ) -> ServerTransaction:
        """A new server transaction; `overdue` runs if it has no final response after 64*T1."""
        self._next_id += 1
        txn_id = f"t{self._next_id}"
        to_tag = request.to_tag or secrets.token_hex(6)
        txn = ServerTransaction(txn_id, key, request, peer, reply_to, to_tag)
        txn.timeout = self._timers.schedule(now + 64 * self._values.t1, partial(overdue, txn))
        self.server[key] = txn
        self.by_id[txn_id] = txn
        return txn

    def sent(self, txn: ServerTransaction, data: bytes, status: int, now: float) -> None:
        """A response of the transaction user (or of the agent) goes out on `txn`."""
        self._counters.responses_sent += 1
        self._send(Outgoing(data, txn.reply_to))
        txn.last_response = data
        if status < 200:
            txn.move(TransactionState.PROCEEDING)
            return
        txn.final_status = status
        txn.cancel_timers()  # the unanswered-request guard
        values = self._values
        reliable = txn.peer.reliable
        if txn.is_invite and status >= 300:
            txn.move(TransactionState.COMPLETED)
            if not reliable:
                txn.interval = values.t1
                txn.retransmit = self._timers.schedule(now + values.t1, self._timer_g(txn))
            txn.timeout = self._timers.schedule(
                now + 64 * values.t1, partial(self._terminate, txn)
            )  # Timer H: the ACK never came.
        elif txn.is_invite:
            # RFC 6026 "Accepted": absorb INVITE retransmissions until Timer L.
            txn.move(TransactionState.ACCEPTED)
            txn.timeout = self._timers.schedule(now + 64 * values.t1, partial(self._terminate, txn))
        else:
            txn.move(TransactionState.COMPLETED)
            delay = 0.0 if reliable else 64 * values.t1  # Timer J
            txn.timeout = self._timers.schedule(now + delay, partial(self._terminate, txn))

    def acknowledged(self, txn: ServerTransaction, now: float) -> None:
        """The ACK of our non-2xx final response (RFC 3261 §17.2.1)."""
        txn.move(TransactionState.CONFIRMED)
        txn.cancel_timers()
        delay = 0.0 if txn.peer.reliable else self._values.t4  # Timer I
        txn.timeout = self._timers.schedule(now + delay, partial(self._terminate, txn))

    def _timer_g(self, txn: ServerTransaction) -> Callable[[float], None]:
        def fire(now: float) -> None:
            if txn.state is not TransactionState.COMPLETED or txn.last_response is None:
                return
            self._send(Outgoing(txn.last_response, txn.reply_to))
            txn.interval = min(2 * txn.interval, self._values.t2)
            txn.retransmit = self._timers.schedule(now + txn.interval, fire)

        return fire

    def _terminate(self, txn: ServerTransaction, _now: float = 0.0) -> None:
        txn.cancel_timers()
        txn.move(TransactionState.TERMINATED)
        self.server.pop(txn.key, None)
        self.by_id.pop(txn.id, None)

    # ---------------------------------------------------------------- client transactions

    def start_client(
        self,
        branch: str,
        data: bytes,
        peer: Peer,
        now: float,
        on_final: ClientOutcome | None,
    ) -> None:
        """Send a non-INVITE request on a new client transaction (RFC 3261 §17.1.2)."""
        txn = ClientTransaction(branch, data, peer, self._values.t1, on_final)
        self.client[branch] = txn
        self._send(Outgoing(data, peer))
        if not peer.reliable:
            txn.retransmit = self._timers.schedule(now + txn.interval, self._timer_e(txn))
        txn.timeout = self._timers.schedule(  # Timer F
            now + 64 * self._values.t1,
            partial(self._client_timed_out, branch),
        )

    def receive_response(self, response: SipResponse, now: float) -> None:
        try:
            branch = response.top_via.branch or ""
        except SipParseError:
            self._counters.dropped += 1
            return
        txn = self.client.get(branch)
        if txn is None:
            self._counters.dropped += 1
        elif response.status >= 200:
            self._client_done(branch, response.status, response, now)
        else:
            # RFC 3261 §17.1.2.2: after a provisional response Timer E runs at T2.
            txn.move(TransactionState.PROCEEDING)
            txn.interval = self._values.t2

    def _timer_e(self, txn: ClientTransaction) -> Callable[[float], None]:
        def fire(now: float) -> None:
            if txn.branch not in self.client:
                return
            self._send(Outgoing(txn.data, txn.peer))
            txn.interval = min(2 * txn.interval, self._values.t2)
            txn.retransmit = self._timers.schedule(now + txn.interval, fire)

        return fire

    def _client_done(
        self, branch: str, status: int, response: SipResponse | None, now: float
    ) -> None:
        txn = self.client.pop(branch, None)
        if txn is None:
            return
        txn.move(TransactionState.TERMINATED)
        for handle in (txn.retransmit, txn.timeout):
            if handle:
                handle.cancel()
        if txn.on_final is not None:
            txn.on_final(status, response, now)

    def _client_timed_out(self, branch: str, now: float) -> None:
        self._client_done(branch, 408, None, now)  # Timer F: as if 408 (RFC 3261 §8.1.3.1)
