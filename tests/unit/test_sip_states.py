"""The state tables of the SIP core's machines: every transition a table does not list raises
IllegalTransition, on the table and on the objects that carry the state, and the machines walk
the RFC paths the tables describe."""

from __future__ import annotations

import itertools
from enum import Enum
from typing import Any

import pytest

from siprec_server.sip.dialog import (
    DIALOG,
    INVITE_EXCHANGE,
    Dialog,
    DialogState,
    InviteState,
)
from siprec_server.sip.events import Peer
from siprec_server.sip.message import SipRequest, parse_message
from siprec_server.sip.session_timer import (
    SESSION_TIMER,
    Negotiated,
    SessionTimer,
    SessionTimerState,
)
from siprec_server.sip.timers import TimerQueue
from siprec_server.sip.transaction import (
    INVITE_SERVER,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    ClientTransaction,
    ServerTransaction,
    TransactionState,
)
from siprec_server.sip.transitions import IllegalTransition, StateTable
from tests.unit.test_sip_support import SDP, SRC_UDP, establish, make_agent, request

TABLES: list[StateTable[Any]] = [
    INVITE_SERVER,
    NON_INVITE_SERVER,
    NON_INVITE_CLIENT,
    DIALOG,
    INVITE_EXCHANGE,
    SESSION_TIMER,
]


def pairs(table: StateTable[Any], allowed: bool) -> list[tuple[StateTable[Any], Enum, Enum]]:
    states = table.states
    return [
        (table, a, b) for a, b in itertools.product(states, states) if table.allows(a, b) is allowed
    ]


ILLEGAL = [p for table in TABLES for p in pairs(table, allowed=False)]
LEGAL = [p for table in TABLES for p in pairs(table, allowed=True)]


def pair_id(case: tuple[StateTable[Any], Enum, Enum]) -> str:
    table, a, b = case
    return f"{table.machine}:{a.value}->{b.value}"


@pytest.mark.parametrize("case", ILLEGAL, ids=[pair_id(c) for c in ILLEGAL])
def test_every_transition_a_table_does_not_list_raises(
    case: tuple[StateTable[Any], Enum, Enum],
) -> None:
    table, current, new = case
    with pytest.raises(IllegalTransition, match=f"{current.value} -> {new.value}"):
        table.check(current, new)


@pytest.mark.parametrize("case", LEGAL, ids=[pair_id(c) for c in LEGAL])
def test_every_listed_transition_is_allowed(case: tuple[StateTable[Any], Enum, Enum]) -> None:
    table, current, new = case
    assert table.check(current, new) is new


def test_terminal_states_lead_nowhere() -> None:
    assert not any(INVITE_SERVER.allows(TransactionState.TERMINATED, s) for s in TransactionState)
    assert not any(DIALOG.allows(DialogState.ENDED, s) for s in DialogState)
    assert not any(SESSION_TIMER.allows(SessionTimerState.STOPPED, s) for s in SessionTimerState)


def test_a_table_must_name_every_state() -> None:
    with pytest.raises(ValueError, match="every state"):
        StateTable("partial", {DialogState.ENDED: set()})


# ---------------------------------------------------------------- the objects that carry state


def txn(method: str) -> ServerTransaction:
    message = parse_message(request(method, body=SDP if method == "INVITE" else b""))
    assert isinstance(message, SipRequest)
    return ServerTransaction("t1", ("k",), message, SRC_UDP, SRC_UDP, "tag")


def test_invite_server_transaction_walks_rfc_3261_and_6026_paths() -> None:
    error = txn("INVITE")
    assert error.state is TransactionState.PROCEEDING  # §17.2.1: 100 Trying is ours to send
    for state in ("PROCEEDING", "COMPLETED", "CONFIRMED", "TERMINATED"):
        error.move(TransactionState[state])
    accepted = txn("INVITE")
    accepted.move(TransactionState.ACCEPTED)
    accepted.move(TransactionState.TERMINATED)
    with pytest.raises(IllegalTransition):
        accepted.move(TransactionState.CONFIRMED)


@pytest.mark.parametrize(
    "new", [s for s in TransactionState if s is not TransactionState.COMPLETED]
)
def test_completed_invite_transaction_refuses_all_but_ack_and_timer_h(
    new: TransactionState,
) -> None:
    t = txn("INVITE")
    t.move(TransactionState.COMPLETED)
    if new in (TransactionState.CONFIRMED, TransactionState.TERMINATED):
        t.move(new)
    else:
        with pytest.raises(IllegalTransition):
            t.move(new)


def test_non_invite_server_transaction_starts_trying_and_has_no_accepted_state() -> None:
    t = txn("BYE")
    assert t.state is TransactionState.TRYING
    with pytest.raises(IllegalTransition):
        t.move(TransactionState.ACCEPTED)
    t.move(TransactionState.COMPLETED)
    with pytest.raises(IllegalTransition):
        t.move(TransactionState.CONFIRMED)
    t.move(TransactionState.TERMINATED)
    with pytest.raises(IllegalTransition):
        t.move(TransactionState.TERMINATED)


def test_client_transaction_ends_once() -> None:
    client = ClientTransaction("z9hG4bKx", b"", SRC_UDP, 0.5)
    client.move(TransactionState.PROCEEDING)
    client.move(TransactionState.TERMINATED)
    with pytest.raises(IllegalTransition):
        client.move(TransactionState.PROCEEDING)


def dialog() -> Dialog:
    return Dialog("d", "c", "l", "r", "<sip:l@x>", "<sip:r@y>", "sip:r@y", [], 1, SRC_UDP, "t1")


def test_dialog_lifecycle_refuses_to_come_back() -> None:
    d = dialog()
    assert (d.state, d.invite) == (DialogState.UNCONFIRMED, InviteState.PENDING)
    d.move(DialogState.CONFIRMED)
    with pytest.raises(IllegalTransition):
        d.move(DialogState.UNCONFIRMED)
    d.move(DialogState.CLOSING)
    assert d.ended
    with pytest.raises(IllegalTransition):
        d.move(DialogState.CONFIRMED)
    d.move(DialogState.ENDED)
    with pytest.raises(IllegalTransition):
        d.move(DialogState.CLOSING)


def test_invite_exchange_needs_an_answer_before_the_ack() -> None:
    d = dialog()
    d.move_invite(InviteState.AWAITING_ACK)
    with pytest.raises(IllegalTransition):
        d.move_invite(InviteState.PENDING)  # a re-INVITE now gets 491, it never gets here
    d.move_invite(InviteState.IDLE)
    with pytest.raises(IllegalTransition):
        d.move_invite(InviteState.AWAITING_ACK)  # no 2xx without a pending INVITE


def test_session_timer_stops_once_and_then_ignores_refreshes() -> None:
    timers = TimerQueue()
    sent: list[int] = []
    expired: list[float] = []
    timer = SessionTimer(
        timers, lambda interval, outcome, now: sent.append(interval), expired.append
    )
    timer.start(Negotiated(120, "uas", True), 0.0)
    assert timer.state is SessionTimerState.REFRESH_DUE
    timers.fire_due(60.0)
    assert timer.state is SessionTimerState.REFRESHING and sent == [120]
    timer.stop()
    timer.start(Negotiated(120, "uac", True), 61.0)  # a dialog that ended keeps no timer
    assert timer.state is SessionTimerState.STOPPED and timers.next_deadline() is None
    with pytest.raises(IllegalTransition):
        timer.stop()


# ---------------------------------------------------------------- states seen through the agent


def test_agent_dialog_and_transaction_states_follow_a_call() -> None:
    agent = make_agent()
    call = establish(agent, ack=False)
    d = agent._dialogs[call.dialog]  # noqa: SLF001 - the state is the point
    (invite,) = agent._by_id.values()  # noqa: SLF001
    assert (d.state, d.invite, invite.state) == (
        DialogState.UNCONFIRMED,
        InviteState.AWAITING_ACK,
        TransactionState.ACCEPTED,
    )
    agent.end_dialog(call.dialog, 0.2)
    assert d.state is DialogState.CLOSING and d.session.state is SessionTimerState.STOPPED
    agent.receive(call.in_dialog("BYE"), Peer("udp", SRC_UDP.host, SRC_UDP.port), 0.3)
    assert (d.state, d.invite) == (DialogState.ENDED, InviteState.IDLE)
