"""SipAgent driven with bytes and a fake clock, checked against RFC 3261 (transactions, dialogs,
§18.2.2 response routing), RFC 3581 (rport), RFC 4028 (session timers), RFC 6026 (Accepted),
RFC 3311 (UPDATE) and what SIPREC SRCs expect of a recording server."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import structlog

from siprec_server.sip.agent import SipAgent
from siprec_server.sip.events import (
    DialogConfirmed,
    DialogEnded,
    InfoReceived,
    InviteCancelled,
    Peer,
    RequestReceived,
)
from siprec_server.sip.message import (
    Headers,
    SipRequest,
    SipResponse,
    build_response,
    parse_address,
    parse_message,
    parse_via,
)
from tests.interop import INTEROP_DIR
from tests.unit.test_sip_support import (
    SDP,
    SRC_HOST,
    SRC_TCP,
    SRC_UDP,
    SRS_HOST,
    T1,
    T2,
    T4,
    Call,
    Sent,
    ack_for,
    establish,
    events,
    invite_received,
    make_agent,
    new_branch,
    request,
    run_until,
    sent,
    statuses,
)

INTEROP = INTEROP_DIR


def retransmission_times(messages: list[Sent], status: int) -> list[float]:
    return [m.at for m in messages if m.response.status == status]


def no_transactions_left(agent: SipAgent) -> bool:
    # The agent's own tables: the point is that nothing stays in them.
    return not agent._server and not agent._by_id


def requests_in(messages: list[Sent]) -> list[Sent]:
    return [m for m in messages if isinstance(m.message, SipRequest)]


# ---------------------------------------------------------------- INVITE server transaction


def test_invite_gets_100_trying_at_once_and_one_event() -> None:
    agent = make_agent()
    invite = request("INVITE", body=SDP, headers=[("Timestamp", "12.5")])
    agent.receive(invite, SRC_UDP, 0.0)
    (trying,) = sent(agent)
    assert trying.response.status == 100
    assert trying.response.to_tag is None  # RFC 3261 §8.2.6.2: no tag needed on 100
    assert trying.response.headers.get("Timestamp") == "12.5"
    (event,) = events(agent)
    assert isinstance(event, RequestReceived)
    assert event.dialog is None and event.request.body == SDP and event.peer == SRC_UDP


def test_retransmitted_invite_before_the_answer_gets_the_100_again_and_no_event() -> None:
    agent = make_agent()
    invite = request("INVITE", body=SDP)
    invite_received(agent, invite)
    agent.receive(invite, SRC_UDP, 0.5)
    assert statuses(sent(agent)) == [100]
    assert events(agent) == []
    assert agent.counters.retransmissions_absorbed == 1


def test_retransmitted_invite_after_a_180_gets_the_180() -> None:
    agent = make_agent()
    invite = request("INVITE", body=SDP)
    txn = invite_received(agent, invite)
    assert agent.respond(txn, 180, 0.1)
    (ringing,) = sent(agent)
    assert ringing.response.headers.get("Contact")
    agent.receive(invite, SRC_UDP, 0.5)
    (again,) = sent(agent)
    assert again.data == ringing.data


def test_2xx_is_retransmitted_from_t1_doubling_to_t2_until_the_ack() -> None:
    agent = make_agent()
    invite = request("INVITE", body=SDP)
    txn = invite_received(agent, invite)
    agent.respond(txn, 200, 0.0, body=SDP, headers=[("Content-Type", "application/sdp")])
    (ok,) = sent(agent)
    out = run_until(agent, 20.0)
    assert retransmission_times(out, 200) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5]
    assert all(m.data == ok.data for m in out)
    to_tag = ok.response.to_tag
    assert to_tag
    agent.receive(ack_for(invite, to_tag, branch=new_branch()), SRC_UDP, 20.0)
    assert events(agent) == [DialogConfirmed(agent.dialog_of(txn) or "")]
    assert retransmission_times(run_until(agent, 40.0), 200) == []
    # A retransmitted ACK confirms nothing twice.
    agent.receive(ack_for(invite, to_tag, branch=new_branch()), SRC_UDP, 41.0)
    assert events(agent) == []


def test_2xx_is_not_retransmitted_over_tcp() -> None:
    agent = make_agent()
    invite = request("INVITE", body=SDP, transport="TCP")
    txn = invite_received(agent, invite, SRC_TCP)
    agent.respond(txn, 200, 0.0, body=SDP)
    (ok,) = sent(agent)
    assert ok.peer == SRC_TCP
    assert run_until(agent, 31.0) == []


def test_no_ack_within_64_t1_sends_bye_and_ends_the_dialog() -> None:
    agent = make_agent()
    call = establish(agent, ack=False)
    out = run_until(agent, 64 * T1)
    byes = requests_in(out)
    assert [(m.request.method, m.at) for m in byes] == [("BYE", 64 * T1)]
    assert events(agent) == [DialogEnded(call.dialog, "no-ack")]
    assert agent.dialog_ids() == []


def test_no_ack_over_tcp_also_ends_the_dialog() -> None:
    agent = make_agent()
    call = establish(agent, peer=SRC_TCP, ack=False)
    out = run_until(agent, 64 * T1)
    assert [m.request.method for m in out] == ["BYE"]
    assert out[0].peer == SRC_TCP
    assert events(agent) == [DialogEnded(call.dialog, "no-ack")]


def test_error_final_is_retransmitted_with_timer_g_until_the_ack_then_timer_i() -> None:
    agent = make_agent()
    invite = request("INVITE", body=SDP)
    txn = invite_received(agent, invite)
    agent.respond(txn, 488, 0.0)
    (final,) = sent(agent)
    out = run_until(agent, 12.0)
    assert retransmission_times(out, 488) == [0.5, 1.5, 3.5, 7.5, 11.5]
    # A retransmitted INVITE in Completed gets the final response again.
    agent.receive(invite, SRC_UDP, 12.0)
    (again,) = sent(agent)
    assert again.data == final.data
    to_tag = final.response.to_tag
    assert to_tag
    agent.receive(ack_for(invite, to_tag), SRC_UDP, 12.2)  # same branch: non-2xx ACK
    assert run_until(agent, 12.2 + T4 - 0.01) == []
    assert not no_transactions_left(agent)
    run_until(agent, 12.2 + T4)
    assert no_transactions_left(agent)
    assert events(agent) == []  # no dialog, nothing for the TU


def test_error_final_without_ack_stops_at_timer_h() -> None:
    agent = make_agent()
    txn = invite_received(agent, request("INVITE", body=SDP))
    agent.respond(txn, 486, 0.0)
    sent(agent)
    out = run_until(agent, 100.0)
    times = retransmission_times(out, 486)
    assert times[:4] == [0.5, 1.5, 3.5, 7.5]
    assert all(b - a == T2 for a, b in zip(times[3:], times[4:], strict=False))
    assert max(times) < 64 * T1
    assert no_transactions_left(agent)
    assert agent.get_timer() is None


def test_error_final_over_tcp_is_sent_once_and_ack_ends_it_at_once() -> None:
    agent = make_agent()
    invite = request("INVITE", body=SDP, transport="TCP")
    txn = invite_received(agent, invite, SRC_TCP)
    agent.respond(txn, 503, 0.0, headers=[("Retry-After", "30")])
    (final,) = sent(agent)
    assert final.response.headers.get("Retry-After") == "30"
    assert run_until(agent, 5.0) == []
    to_tag = final.response.to_tag or ""
    agent.receive(ack_for(invite, to_tag).replace(b"/UDP", b"/TCP"), SRC_TCP, 5.0)
    run_until(agent, 5.0)
    assert no_transactions_left(agent)


def test_unanswered_invite_gets_408_after_64_t1() -> None:
    agent = make_agent()
    txn = invite_received(agent, request("INVITE", body=SDP))
    out = run_until(agent, 64 * T1)
    assert statuses(out) == [408]
    assert agent.respond(txn, 200, 40.0, body=SDP) is False
    assert agent.counters.unanswered == 1


def test_accepted_invite_transaction_absorbs_retransmissions_until_timer_l() -> None:
    agent = make_agent()
    call = establish(agent)
    agent.receive(call.invite, SRC_UDP, 1.0)  # RFC 6026: absorbed, no new event
    assert sent(agent) == [] and events(agent) == []
    run_until(agent, 64 * T1)
    assert no_transactions_left(agent)


# ---------------------------------------------------------------- non-INVITE server transactions


@pytest.mark.parametrize("method", ["OPTIONS", "BYE", "UPDATE", "INFO"])
def test_non_invite_retransmission_gets_the_same_response_until_timer_j(method: str) -> None:
    agent = make_agent()
    call = establish(agent)
    data = call.in_dialog(method)
    agent.receive(data, SRC_UDP, 1.0)
    for event in events(agent):
        if isinstance(event, RequestReceived):
            agent.respond(event.txn, 200, 1.0)
    (first,) = sent(agent)
    assert first.response.status == 200
    agent.receive(data, SRC_UDP, 10.0)
    (again,) = sent(agent)
    assert again.data == first.data
    assert events(agent) == []
    run_until(agent, 1.0 + 64 * T1 - 0.01)
    assert any(t.request.method == method for t in agent._by_id.values())
    run_until(agent, 1.0 + 64 * T1)  # Timer J
    assert not any(t.request.method == method for t in agent._by_id.values())


def test_non_invite_over_tcp_is_forgotten_at_once() -> None:
    agent = make_agent()
    agent.receive(request("OPTIONS", transport="TCP"), SRC_TCP, 0.0)
    assert statuses(sent(agent)) == [200]
    run_until(agent, 0.0)
    assert no_transactions_left(agent)


def test_unanswered_update_gets_408() -> None:
    agent = make_agent()
    call = establish(agent)
    agent.receive(call.in_dialog("UPDATE"), SRC_UDP, 1.0)
    (event,) = events(agent)
    assert isinstance(event, RequestReceived)
    assert statuses(run_until(agent, 1.0 + 64 * T1)) == [408]
    assert agent.respond(event.txn, 200, 40.0) is False


# ---------------------------------------------------------------- CANCEL


def test_cancel_before_the_answer_gets_200_and_the_invite_487() -> None:
    agent = make_agent()
    branch = new_branch()
    invite = request("INVITE", body=SDP, branch=branch)
    txn = invite_received(agent, invite)
    agent.receive(request("CANCEL", branch=branch), SRC_UDP, 1.0)
    ok, terminated = sent(agent)
    assert (ok.response.status, ok.response.headers.get("CSeq")) == (200, "1 CANCEL")
    assert (terminated.response.status, terminated.response.headers.get("CSeq")) == (
        487,
        "1 INVITE",
    )
    assert ok.response.to_tag == terminated.response.to_tag  # RFC 3261 §9.2
    assert events(agent) == [InviteCancelled(txn)]
    assert agent.respond(txn, 200, 1.5, body=SDP) is False
    assert sent(agent) == []
    agent.receive(ack_for(invite, terminated.response.to_tag or ""), SRC_UDP, 1.6)
    run_until(agent, 60.0)
    assert no_transactions_left(agent)
    assert agent.get_timer() is None


def test_retransmitted_cancel_gets_the_same_200() -> None:
    agent = make_agent()
    branch = new_branch()
    invite_received(agent, request("INVITE", body=SDP, branch=branch))
    cancel = request("CANCEL", branch=branch)
    agent.receive(cancel, SRC_UDP, 1.0)
    first = sent(agent)[0]
    agent.receive(cancel, SRC_UDP, 1.5)
    (again,) = sent(agent)
    assert again.data == first.data


def test_cancel_for_an_unknown_transaction_gets_481() -> None:
    agent = make_agent()
    agent.receive(request("CANCEL"), SRC_UDP, 0.0)
    assert statuses(sent(agent)) == [481]
    assert events(agent) == []


def test_cancel_after_the_2xx_gets_200_only() -> None:
    agent = make_agent()
    branch = new_branch()
    invite = request("INVITE", body=SDP, branch=branch)
    txn = invite_received(agent, invite)
    agent.respond(txn, 200, 0.0, body=SDP)
    sent(agent)
    agent.receive(request("CANCEL", branch=branch), SRC_UDP, 0.2)
    assert statuses(sent(agent)) == [200]
    assert events(agent) == []
    assert agent.dialog_ids() == [agent.dialog_of(txn)]


# ---------------------------------------------------------------- BYE


def test_bye_gets_200_and_ends_the_dialog() -> None:
    agent = make_agent()
    call = establish(agent)
    agent.receive(call.in_dialog("BYE"), SRC_UDP, 5.0)
    assert statuses(sent(agent)) == [200]
    assert events(agent) == [DialogEnded(call.dialog, "bye")]
    assert agent.dialog_ids() == []


def test_bye_for_an_unknown_dialog_gets_481() -> None:
    agent = make_agent()
    agent.receive(request("BYE", to_tag="nope"), SRC_UDP, 0.0)
    assert statuses(sent(agent)) == [481]


def test_retransmitted_bye_after_the_dialog_ended_still_gets_200() -> None:
    agent = make_agent()
    call = establish(agent)
    bye = call.in_dialog("BYE")
    agent.receive(bye, SRC_UDP, 5.0)
    (first,) = sent(agent)
    events(agent)
    agent.receive(bye, SRC_UDP, 6.0)
    (again,) = sent(agent)
    assert again.response.status == 200 and again.data == first.data
    assert events(agent) == []
    # A new BYE (new branch) for the dead dialog is 481.
    agent.receive(call.in_dialog("BYE"), SRC_UDP, 7.0)
    assert statuses(sent(agent)) == [481]


def test_bye_while_a_reinvite_is_pending_answers_it_487() -> None:
    agent = make_agent()
    call = establish(agent)
    agent.receive(call.in_dialog("INVITE", body=SDP), SRC_UDP, 1.0)
    assert statuses(sent(agent)) == [100]
    (reinvite,) = events(agent)
    assert isinstance(reinvite, RequestReceived) and reinvite.dialog == call.dialog
    agent.receive(call.in_dialog("BYE"), SRC_UDP, 2.0)
    assert statuses(sent(agent)) == [200, 487]  # RFC 3261 §15.1.2
    assert events(agent) == [DialogEnded(call.dialog, "bye")]
    assert agent.respond(reinvite.txn, 200, 2.5, body=SDP) is False
    assert sent(agent) == []


def test_ack_arriving_after_bye_confirms_nothing() -> None:
    agent = make_agent()
    call = establish(agent, ack=False)
    agent.receive(call.in_dialog("BYE"), SRC_UDP, 0.3)
    sent(agent)
    assert events(agent) == [DialogEnded(call.dialog, "bye")]
    agent.receive(ack_for(call.invite, call.to_tag, branch=new_branch()), SRC_UDP, 0.4)
    assert events(agent) == []
    assert requests_in(run_until(agent, 100.0)) == []


def test_reinvite_answer_after_local_hangup_is_refused_not_crashing() -> None:
    agent = make_agent()
    call = establish(agent)
    agent.receive(call.in_dialog("INVITE", body=SDP), SRC_UDP, 1.0)
    sent(agent)
    (reinvite,) = events(agent)
    assert isinstance(reinvite, RequestReceived)
    agent.end_dialog(call.dialog, 2.0)
    out = sent(agent)
    assert [m.request.method for m in requests_in(out)] == ["BYE"]
    assert [m.response.status for m in out if isinstance(m.message, SipResponse)] == [487]
    run_until(agent, 100.0)  # the dialog entry is forgotten meanwhile
    assert agent.respond(reinvite.txn, 200, 100.0, body=SDP) is False


# ---------------------------------------------------------------- OPTIONS, 405, 420, 483, 500, 491


def assert_capabilities(response_headers: Headers) -> None:
    allowed = response_headers.tokens("Allow")
    assert {"invite", "ack", "bye", "cancel", "options", "update", "info"} <= allowed
    assert "application/sdp" in response_headers.tokens("Accept")
    assert "application/rs-metadata+xml" in response_headers.tokens("Accept")
    assert "siprec" in response_headers.tokens("Supported")


def test_options_out_of_dialog_gets_200_with_capabilities() -> None:
    agent = make_agent()
    agent.receive(request("OPTIONS"), SRC_UDP, 0.0)
    (ok,) = sent(agent)
    assert ok.response.status == 200
    assert_capabilities(ok.response.headers)
    assert events(agent) == []


def test_options_in_dialog_gets_200_with_capabilities() -> None:
    agent = make_agent()
    call = establish(agent)
    agent.receive(call.in_dialog("OPTIONS"), SRC_UDP, 1.0)
    (ok,) = sent(agent)
    assert ok.response.status == 200 and ok.response.to_tag == call.to_tag
    assert_capabilities(ok.response.headers)


def test_options_with_max_forwards_zero_is_still_answered() -> None:
    agent = make_agent()
    agent.receive(request("OPTIONS", max_forwards="0"), SRC_UDP, 0.0)
    assert statuses(sent(agent)) == [200]


@pytest.mark.parametrize("method", ["MESSAGE", "SUBSCRIBE", "REGISTER", "REFER", "PRACK"])
def test_unknown_method_gets_405_with_allow(method: str) -> None:
    agent = make_agent()
    agent.receive(request(method), SRC_UDP, 0.0)
    (answer,) = sent(agent)
    assert answer.response.status == 405
    assert "invite" in answer.response.headers.tokens("Allow")
    assert events(agent) == []


def test_unknown_required_option_gets_420_with_unsupported() -> None:
    agent = make_agent()
    agent.receive(
        request("INVITE", body=SDP, headers=[("Require", "siprec, 100rel, Foo-Bar")]),
        SRC_UDP,
        0.0,
    )
    (answer,) = sent(agent)
    assert answer.response.status == 420
    assert answer.response.headers.tokens("Unsupported") == {"100rel", "foo-bar"}
    assert events(agent) == []


def test_require_siprec_and_timer_is_accepted() -> None:
    agent = make_agent()
    invite = request("INVITE", body=SDP, headers=[("Require", "siprec,timer")])
    invite_received(agent, invite)


def test_max_forwards_zero_gets_483() -> None:
    agent = make_agent()
    agent.receive(request("INVITE", body=SDP, max_forwards="0"), SRC_UDP, 0.0)
    assert statuses(sent(agent)) == [483]


def test_invite_without_contact_gets_400() -> None:
    agent = make_agent()
    agent.receive(request("INVITE", body=SDP, contact=None), SRC_UDP, 0.0)
    assert statuses(sent(agent)) == [400]


def test_invite_with_an_unparseable_contact_gets_400_not_a_crash() -> None:
    agent = make_agent()
    # sipmessage once raised TypeError for a parameter named `self`.
    for contact in ("<sip:src@host;self>", "garbage <", "<sip:a@b>;self=1"):
        agent.receive(request("INVITE", body=SDP, contact=contact), SRC_UDP, 0.0)
        assert statuses(sent(agent)) == [400]


@pytest.mark.parametrize("method", ["BYE", "UPDATE", "INFO"])
def test_out_of_dialog_request_that_needs_a_dialog_gets_481(method: str) -> None:
    agent = make_agent()
    agent.receive(request(method), SRC_UDP, 0.0)
    assert statuses(sent(agent)) == [481]


def test_in_dialog_request_with_a_lower_cseq_gets_500() -> None:
    agent = make_agent()
    call = establish(agent)
    call.cseq = 10
    agent.receive(call.in_dialog("INFO"), SRC_UDP, 1.0)  # CSeq 11
    sent(agent)
    events(agent)
    agent.receive(call.in_dialog("UPDATE", cseq=5), SRC_UDP, 2.0)
    (answer,) = sent(agent)
    assert answer.response.status == 500
    assert events(agent) == []


def test_in_dialog_request_with_an_equal_cseq_is_not_out_of_order() -> None:
    # RFC 3261 §12.2.2 rejects only a *lower* CSeq.
    agent = make_agent()
    call = establish(agent)
    agent.receive(call.in_dialog("BYE", cseq=1), SRC_UDP, 1.0)
    assert statuses(sent(agent)) == [200]


def test_reinvite_while_a_reinvite_is_unanswered_gets_500_with_retry_after() -> None:
    agent = make_agent()
    call = establish(agent)
    agent.receive(call.in_dialog("INVITE", body=SDP), SRC_UDP, 1.0)
    assert statuses(sent(agent)) == [100]
    (first,) = events(agent)
    agent.receive(call.in_dialog("INVITE", body=SDP), SRC_UDP, 1.1)
    (answer,) = sent(agent)
    assert answer.response.status == 500
    assert 0 <= int(answer.response.headers.get("Retry-After") or "-1") <= 10
    assert events(agent) == []
    # Once the first is answered, a new re-INVITE is welcome (after its ACK).
    assert isinstance(first, RequestReceived)
    agent.respond(first.txn, 200, 1.2, body=SDP)
    sent(agent)
    agent.receive(
        request(
            "ACK",
            cseq=call.cseq - 1,
            to_tag=call.to_tag,
            branch=new_branch(),
            uri=f"sip:srs@{SRS_HOST}",
        ),
        SRC_UDP,
        1.3,
    )
    agent.receive(call.in_dialog("INVITE", body=SDP), SRC_UDP, 1.4)
    assert statuses(sent(agent)) == [100]


def test_reinvite_before_our_2xx_is_acked_gets_491() -> None:
    agent = make_agent()
    call = establish(agent, ack=False)
    agent.receive(call.in_dialog("INVITE", body=SDP), SRC_UDP, 0.2)
    assert statuses(sent(agent)) == [491]


def test_update_with_offer_while_an_update_offer_is_pending_gets_500() -> None:
    agent = make_agent()
    call = establish(agent)
    agent.receive(call.in_dialog("UPDATE", body=SDP), SRC_UDP, 1.0)
    (first,) = events(agent)
    agent.receive(call.in_dialog("UPDATE", body=SDP), SRC_UDP, 1.1)
    (answer,) = sent(agent)
    assert answer.response.status == 500 and answer.response.headers.get("Retry-After")
    assert isinstance(first, RequestReceived)
    agent.respond(first.txn, 200, 1.2, body=SDP)
    sent(agent)
    agent.receive(call.in_dialog("UPDATE", body=SDP), SRC_UDP, 1.3)
    assert isinstance(events(agent)[0], RequestReceived)


def test_update_without_body_in_dialog_reaches_the_tu_and_its_2xx_has_contact() -> None:
    agent = make_agent()
    call = establish(agent)
    agent.receive(call.in_dialog("UPDATE"), SRC_UDP, 1.0)
    assert sent(agent) == []  # no 100 for non-INVITE
    (event,) = events(agent)
    assert isinstance(event, RequestReceived)
    assert event.dialog == call.dialog and event.request.method == "UPDATE"
    assert agent.respond(event.txn, 200, 1.0)
    (ok,) = sent(agent)
    assert ok.response.status == 200 and ok.response.to_tag == call.to_tag
    assert ok.response.headers.get("Contact")


def test_info_gets_200_and_an_info_event() -> None:
    agent = make_agent()
    call = establish(agent)
    body = b"Signal=5\r\nDuration=160\r\n"
    agent.receive(
        call.in_dialog("INFO", body=body, content_type="application/dtmf-relay"), SRC_UDP, 1.0
    )
    assert statuses(sent(agent)) == [200]
    assert events(agent) == [InfoReceived(call.dialog, "application/dtmf-relay", body)]


def test_reinvite_contact_becomes_the_remote_target_once_accepted() -> None:
    agent = make_agent()
    call = establish(agent)
    new_contact = "<sip:src@203.0.113.50:5070>"
    agent.receive(call.in_dialog("INVITE", body=SDP, contact=new_contact), SRC_UDP, 1.0)
    sent(agent)
    (event,) = events(agent)
    assert isinstance(event, RequestReceived)
    agent.respond(event.txn, 200, 1.0, body=SDP)
    sent(agent)
    agent.receive(
        request("ACK", cseq=call.cseq, to_tag=call.to_tag, branch=new_branch()), SRC_UDP, 1.1
    )
    agent.end_dialog(call.dialog, 2.0)
    (bye,) = requests_in(sent(agent))
    assert bye.request.uri == "sip:src@203.0.113.50:5070"
    assert (bye.peer.host, bye.peer.port) == ("203.0.113.50", 5070)


def test_rejected_reinvite_leaves_the_remote_target_alone() -> None:
    agent = make_agent()
    call = establish(agent)
    agent.receive(
        call.in_dialog("INVITE", body=SDP, contact="<sip:elsewhere@203.0.113.99>"), SRC_UDP, 1.0
    )
    sent(agent)
    (event,) = events(agent)
    assert isinstance(event, RequestReceived)
    agent.respond(event.txn, 488, 1.0)
    sent(agent)
    agent.end_dialog(call.dialog, 2.0)
    (bye,) = requests_in(sent(agent))
    assert bye.request.uri == f"sip:src@{SRC_HOST}:5060"


# ---------------------------------------------------------------- session timers (RFC 4028)


def test_session_expires_below_min_se_gets_422_with_min_se() -> None:
    agent = make_agent()
    agent.receive(
        request("INVITE", body=SDP, headers=[("Supported", "timer"), ("Session-Expires", "60")]),
        SRC_UDP,
        0.0,
    )
    (answer,) = sent(agent)
    assert answer.response.status == 422
    assert answer.response.headers.get("Min-SE") == "90"


def test_malformed_session_expires_gets_400() -> None:
    agent = make_agent()
    agent.receive(request("INVITE", body=SDP, headers=[("Session-Expires", "soon")]), SRC_UDP, 0.0)
    assert statuses(sent(agent)) == [400]


def test_accepted_interval_is_echoed_with_refresher_and_require_timer() -> None:
    agent = make_agent()
    call = establish(agent, headers=[("Supported", "timer, siprec"), ("Session-Expires", "600")])
    assert call.ok.headers.get("Session-Expires") == "600;refresher=uac"
    assert "timer" in call.ok.headers.tokens("Require")


def test_compact_session_expires_with_uac_refresher_is_honoured() -> None:
    agent = make_agent()
    call = establish(agent, headers=[("k", "timer"), ("x", "300;refresher=uac")])
    assert call.ok.headers.get("Session-Expires") == "300;refresher=uac"


def test_timer_support_without_session_expires_gets_our_interval() -> None:
    agent = make_agent()
    call = establish(agent, headers=[("Supported", "timer"), ("Min-SE", "2400")])
    assert call.ok.headers.get("Session-Expires") == "2400;refresher=uac"
    other = establish(make_agent(), headers=[("Supported", "timer")])
    assert other.ok.headers.get("Session-Expires") == "1800;refresher=uac"


def test_no_timer_support_and_no_session_expires_means_no_session_timer() -> None:
    agent = make_agent()
    call = establish(agent)
    assert call.ok.headers.get("Session-Expires") is None
    assert "timer" not in call.ok.headers.tokens("Require")
    run_until(agent, 64 * T1)
    assert agent.get_timer() is None
    assert agent.dialog_ids() == [call.dialog]


@pytest.mark.parametrize("interval, bye_at", [(90, 60.0), (600, 568.0), (1800, 1768.0)])
def test_unrefreshed_session_ends_with_bye_at_interval_minus_min_32_third(
    interval: int, bye_at: float
) -> None:
    agent = make_agent()
    call = establish(agent, headers=[("Supported", "timer"), ("Session-Expires", str(interval))])
    out = run_until(agent, bye_at - 0.001)
    assert not any(isinstance(m.message, SipRequest) for m in out)
    assert events(agent) == []
    out = run_until(agent, bye_at)
    (bye,) = requests_in(out)
    assert bye.request.method == "BYE" and bye.at == bye_at
    assert "session expired" in (bye.request.headers.get("Reason") or "")
    assert events(agent) == [DialogEnded(call.dialog, "session-expired")]


@pytest.mark.parametrize("method", ["INVITE", "UPDATE"])
def test_refresh_moves_the_session_deadline(method: str) -> None:
    agent = make_agent()
    headers = [("Supported", "timer"), ("Session-Expires", "90")]
    call = establish(agent, headers=headers)
    run_until(agent, 40.0)
    body = SDP if method == "INVITE" else b""
    agent.receive(call.in_dialog(method, body=body, headers=headers), SRC_UDP, 40.0)
    sent(agent)
    (event,) = events(agent)
    assert isinstance(event, RequestReceived)
    agent.respond(event.txn, 200, 40.0, body=body)
    (ok,) = sent(agent)
    assert ok.response.headers.get("Session-Expires") == "90;refresher=uac"
    if method == "INVITE":
        agent.receive(
            request("ACK", cseq=call.cseq, to_tag=call.to_tag, branch=new_branch()), SRC_UDP, 40.1
        )
    out = run_until(agent, 99.0)
    assert not any(isinstance(m.message, SipRequest) for m in out)  # old deadline 60 passed
    out = run_until(agent, 100.0)
    assert [m.request.method for m in out if isinstance(m.message, SipRequest)] == ["BYE"]
    assert DialogEnded(call.dialog, "session-expired") in events(agent)


def test_refresh_without_session_timer_turns_the_timer_off() -> None:
    # RFC 4028 §9: a 2xx without Session-Expires means no session timer from now on.
    agent = make_agent()
    call = establish(agent, headers=[("Supported", "timer"), ("Session-Expires", "90")])
    agent.receive(call.in_dialog("UPDATE"), SRC_UDP, 30.0)
    (event,) = events(agent)
    assert isinstance(event, RequestReceived)
    agent.respond(event.txn, 200, 30.0)
    (ok,) = sent(agent)
    assert ok.response.headers.get("Session-Expires") is None
    run_until(agent, 1000.0)
    assert events(agent) == []
    assert agent.dialog_ids() == [call.dialog]


def test_srcs_asking_us_to_refresh_get_update_refreshes_at_half_the_interval() -> None:
    agent = make_agent()
    call = establish(
        agent,
        headers=[
            ("Supported", "timer"),
            ("Session-Expires", "120;refresher=uas"),
            ("Allow", "INVITE, ACK, BYE, CANCEL, UPDATE"),
        ],
    )
    assert call.ok.headers.get("Session-Expires") == "120;refresher=uas"
    out = run_until(agent, 60.0)
    (update,) = requests_in(out)
    assert update.at == 60.0 and update.request.method == "UPDATE"
    assert update.request.headers.get("Session-Expires") == "120;refresher=uas"
    assert update.request.headers.get("Contact")
    assert update.request.headers.get("From") == call.ok.headers.get("To")
    # The SRC accepts the refresh; the next one comes half an interval later.
    agent.receive(
        answer_to(update.request, 200, [("Session-Expires", "120;refresher=uas")]), SRC_UDP, 60.1
    )
    out = run_until(agent, 120.1)
    (second,) = requests_in(out)
    assert second.at == 120.1 and second.request.cseq == (2, "UPDATE")
    agent.receive(
        answer_to(second.request, 200, [("Session-Expires", "120;refresher=uas")]), SRC_UDP, 120.2
    )
    assert events(agent) == []
    assert agent.dialog_ids() == [call.dialog]


def test_our_refresh_rejected_with_481_ends_the_session() -> None:
    agent = make_agent()
    call = establish(
        agent,
        headers=[
            ("Supported", "timer"),
            ("Session-Expires", "120;refresher=uas"),
            ("Allow", "INVITE, UPDATE, BYE"),
        ],
    )
    (update,) = requests_in(run_until(agent, 60.0))
    agent.receive(answer_to(update.request, 481), SRC_UDP, 60.2)
    out = sent(agent)
    assert [m.request.method for m in out] == ["BYE"]
    assert events(agent) == [DialogEnded(call.dialog, "session-expired")]


def test_unanswered_refresh_ends_the_session_after_timer_f() -> None:
    agent = make_agent()
    call = establish(
        agent,
        headers=[
            ("Supported", "timer"),
            ("Session-Expires", "120;refresher=uas"),
            ("Allow", "UPDATE"),
        ],
    )
    out = run_until(agent, 60.0 + 64 * T1)
    methods = [m.request.method for m in out if isinstance(m.message, SipRequest)]
    assert methods[0] == "UPDATE" and methods[-1] == "BYE"
    assert set(methods[:-1]) == {"UPDATE"}  # Timer E retransmissions
    assert events(agent) == [DialogEnded(call.dialog, "session-expired")]


def test_refresher_uas_without_update_support_is_handed_back_to_the_src() -> None:
    agent = make_agent()
    call = establish(
        agent, headers=[("Supported", "timer"), ("Session-Expires", "120;refresher=uas")]
    )
    assert call.ok.headers.get("Session-Expires") == "120;refresher=uac"


def test_proxy_inserted_session_expires_for_a_uac_without_timers() -> None:
    # RFC 4028 §9 Table 2: the UAS must refresh; with UPDATE we do, without it no timer runs.
    agent = make_agent()
    call = establish(agent, headers=[("Session-Expires", "300"), ("Allow", "INVITE, UPDATE")])
    assert call.ok.headers.get("Session-Expires") == "300;refresher=uas"
    assert "timer" not in call.ok.headers.tokens("Require")
    (update,) = requests_in(run_until(agent, 150.0))
    assert update.request.method == "UPDATE"

    agent = make_agent()
    call = establish(agent, headers=[("Session-Expires", "300")])
    assert call.ok.headers.get("Session-Expires") is None
    run_until(agent, 10_000.0)
    assert events(agent) == [] and agent.dialog_ids() == [call.dialog]


def answer_to(
    sent_request: SipRequest, status: int, headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """The SRC's response to a request the agent sent."""
    response = build_response(sent_request, status, to_tag=None, headers=list(headers))
    return response.to_bytes()


# ---------------------------------------------------------------- where responses go


def test_received_is_added_when_the_via_host_is_not_the_source() -> None:
    agent = make_agent()
    via = "SIP/2.0/UDP sbc.example.com:5070;branch=" + new_branch()
    agent.receive(request("OPTIONS", via=via), Peer("udp", "203.0.113.5", 40000), 0.0)
    (ok,) = sent(agent)
    top = parse_via(ok.response.headers.values("Via")[0])
    assert top.params.get("received") == "203.0.113.5"
    assert (ok.peer.host, ok.peer.port) == ("203.0.113.5", 5070)  # §18.2.2: sent-by port


def test_via_without_port_means_5060_and_same_host_gets_no_received() -> None:
    agent = make_agent()
    via = f"SIP/2.0/UDP {SRC_HOST};branch=" + new_branch()
    agent.receive(request("OPTIONS", via=via), Peer("udp", SRC_HOST, 33333), 0.0)
    (ok,) = sent(agent)
    top = parse_via(ok.response.headers.values("Via")[0])
    assert "received" not in top.params
    assert (ok.peer.host, ok.peer.port) == (SRC_HOST, 5060)


def test_rport_is_filled_and_used() -> None:
    agent = make_agent()
    via = "SIP/2.0/UDP 10.0.0.5:5060;rport;branch=" + new_branch()
    agent.receive(request("INVITE", via=via, body=SDP), Peer("udp", "203.0.113.5", 61000), 0.0)
    (trying,) = sent(agent)
    top = parse_via(trying.response.headers.values("Via")[0])
    assert top.params.get("rport") == "61000"
    assert top.params.get("received") == "203.0.113.5"
    assert (trying.peer.host, trying.peer.port) == ("203.0.113.5", 61000)


def test_rport_on_a_same_host_via_still_gets_received() -> None:
    agent = make_agent()
    via = f"SIP/2.0/UDP {SRC_HOST}:5060;rport;branch=" + new_branch()
    agent.receive(request("OPTIONS", via=via), Peer("udp", SRC_HOST, 5062), 0.0)
    (ok,) = sent(agent)
    top = parse_via(ok.response.headers.values("Via")[0])
    assert top.params.get("received") == SRC_HOST and top.params.get("rport") == "5062"
    assert ok.peer.port == 5062


def test_maddr_is_honoured() -> None:
    agent = make_agent()
    via = f"SIP/2.0/UDP {SRC_HOST}:5080;maddr=203.0.113.77;branch=" + new_branch()
    agent.receive(request("OPTIONS", via=via), SRC_UDP, 0.0)
    (ok,) = sent(agent)
    assert (ok.peer.host, ok.peer.port) == ("203.0.113.77", 5080)


def test_client_written_received_and_rport_values_do_not_redirect_responses() -> None:
    agent = make_agent()
    via = f"SIP/2.0/UDP {SRC_HOST}:5060;received=192.0.2.99;rport=9;branch=" + new_branch()
    agent.receive(request("OPTIONS", via=via), Peer("udp", SRC_HOST, 5064), 0.0)
    (ok,) = sent(agent)
    assert (ok.peer.host, ok.peer.port) == (SRC_HOST, 5064)


def test_tcp_responses_go_back_on_the_same_connection() -> None:
    agent = make_agent()
    via = "SIP/2.0/TCP sbc.example.com:5060;branch=" + new_branch()
    agent.receive(request("OPTIONS", via=via), SRC_TCP, 0.0)
    (ok,) = sent(agent)
    assert ok.peer == SRC_TCP and ok.peer.connection == 7


def test_stateless_400_goes_to_the_source_too() -> None:
    agent = make_agent()
    data = request("INVITE", body=SDP)[:-5]  # Content-Length larger than the datagram
    agent.receive(data, Peer("udp", "203.0.113.5", 40000), 0.0)
    (bad,) = sent(agent)
    assert bad.response.status == 400 and bad.peer.host == "203.0.113.5"
    assert events(agent) == []


def test_unrespondable_garbage_is_dropped_silently() -> None:
    agent = make_agent()
    agent.receive(request("INVITE", omit=["Call-ID"]), SRC_UDP, 0.0)
    agent.receive(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", SRC_UDP, 0.0)  # TLS hello
    assert sent(agent) == [] and events(agent) == []
    assert agent.counters.parse_errors == 2


def test_crlf_keepalive_datagrams_are_not_errors() -> None:
    agent = make_agent()
    agent.receive(b"\r\n\r\n", SRC_UDP, 0.0)
    agent.receive(b"\r\n", SRC_UDP, 0.0)
    assert sent(agent) == [] and agent.counters.parse_errors == 0
    assert agent.counters.keepalives == 2


def test_cseq_method_mismatch_gets_400() -> None:
    agent = make_agent()
    agent.receive(request("BYE", cseq_method="INVITE", to_tag="x"), SRC_UDP, 0.0)
    (bad,) = sent(agent)
    assert bad.response.status == 400 and "CSeq" in bad.response.reason


def test_wrong_sip_version_gets_505() -> None:
    agent = make_agent()
    agent.receive(request("OPTIONS").replace(b"SIP/2.0\r\n", b"SIP/1.0\r\n", 1), SRC_UDP, 0.0)
    assert statuses(sent(agent)) == [505]


def test_overload_gets_503_with_retry_after() -> None:
    agent = make_agent(max_transactions=2)
    invite_received(agent, request("INVITE", body=SDP, call_id="a"))
    invite_received(agent, request("INVITE", body=SDP, call_id="b"))
    agent.receive(request("INVITE", body=SDP, call_id="c"), SRC_UDP, 0.0)
    (busy,) = sent(agent)
    assert busy.response.status == 503 and busy.response.headers.get("Retry-After")


# ---------------------------------------------------------------- the dialog we create


def test_2xx_copies_record_route_and_carries_contact_allow_supported() -> None:
    agent = make_agent()
    routes = [
        ("Record-Route", "<sip:p1.example.com;lr>"),
        ("Record-Route", "<sip:p2.example.com;lr>"),
    ]
    call = establish(agent, headers=routes)
    assert call.ok.headers.get_all("Record-Route") == [
        "<sip:p1.example.com;lr>",
        "<sip:p2.example.com;lr>",
    ]
    contact = call.ok.headers.get("Contact") or ""
    assert "+sip.srs" in contact and SRS_HOST in contact
    assert "update" in call.ok.headers.tokens("Allow")
    assert "siprec" in call.ok.headers.tokens("Supported")


def test_bye_we_send_carries_the_dialog_identity_and_route_set() -> None:
    agent = make_agent()
    routes = [
        ("Record-Route", "<sip:203.0.113.1:5070;lr>"),
        ("Record-Route", "<sip:p2.example.com;lr>"),
    ]
    call = establish(agent, headers=routes)
    agent.end_dialog(call.dialog, 5.0, "shutdown")
    (bye,) = sent(agent)
    r = bye.request
    assert r.method == "BYE" and r.uri == f"sip:src@{SRC_HOST}:5060"
    assert r.headers.get("From") == call.ok.headers.get("To")
    assert r.from_tag == call.to_tag
    assert r.headers.get("To") == f"<sip:src@{SRC_HOST}>;tag=src-tag"
    assert r.call_id == call.ok.call_id
    assert r.cseq == (1, "BYE")
    assert r.headers.get_all("Route") == ["<sip:203.0.113.1:5070;lr>", "<sip:p2.example.com;lr>"]
    assert (bye.peer.host, bye.peer.port) == ("203.0.113.1", 5070)  # first Route, loose routing
    assert r.top_via.branch and r.top_via.branch.startswith("z9hG4bK")
    assert events(agent) == [DialogEnded(call.dialog, "shutdown")]


def test_bye_we_send_goes_to_the_contact_and_local_cseq_increments() -> None:
    agent = make_agent()
    call = establish(
        agent,
        headers=[
            ("Supported", "timer"),
            ("Session-Expires", "120;refresher=uas"),
            ("Allow", "UPDATE"),
        ],
    )
    (update,) = requests_in(run_until(agent, 60.0))
    assert update.request.cseq == (1, "UPDATE")
    agent.receive(
        answer_to(update.request, 200, [("Session-Expires", "120;refresher=uas")]), SRC_UDP, 60.0
    )
    agent.end_dialog(call.dialog, 70.0)
    (bye,) = sent(agent)
    assert bye.request.cseq == (2, "BYE")
    assert (bye.peer.transport, bye.peer.host, bye.peer.port) == ("udp", SRC_HOST, 5060)


def test_bye_is_retransmitted_by_timer_e_until_a_final_response() -> None:
    agent = make_agent()
    call = establish(agent)
    agent.end_dialog(call.dialog, 0.0)
    (bye,) = sent(agent)
    out = run_until(agent, 8.0)
    assert [m.at for m in out] == [0.5, 1.5, 3.5, 7.5]
    assert all(m.data == bye.data for m in out)
    agent.receive(answer_to(bye.request, 200), SRC_UDP, 8.0)
    out = run_until(agent, 100.0)
    assert requests_in(out) == []
    assert not agent._client


def test_provisional_response_to_our_bye_slows_timer_e_to_t2() -> None:
    agent = make_agent()
    call = establish(agent)
    agent.end_dialog(call.dialog, 0.0)
    (bye,) = sent(agent)
    agent.receive(answer_to(bye.request, 100), SRC_UDP, 0.1)
    out = run_until(agent, 12.0)
    times = [m.at for m in out]
    assert times[0] == 0.5 and all(b - a == T2 for a, b in zip(times, times[1:], strict=False))


def test_unanswered_bye_is_given_up_after_timer_f() -> None:
    agent = make_agent()
    call = establish(agent)
    agent.end_dialog(call.dialog, 0.0)
    sent(agent)
    out = run_until(agent, 200.0)
    assert max(m.at for m in out) < 64 * T1
    assert not agent._client
    assert agent.get_timer() is None
    assert not agent._dialogs


def test_bye_over_tcp_goes_on_the_connection_without_retransmission() -> None:
    agent = make_agent()
    call = establish(agent, peer=SRC_TCP)
    agent.end_dialog(call.dialog, 0.0)
    (bye,) = sent(agent)
    assert bye.peer == SRC_TCP
    assert bye.request.top_via.transport == "TCP"
    assert run_until(agent, 31.0) == []


def test_bye_to_a_tel_contact_falls_back_to_the_source_address() -> None:
    agent = make_agent()
    invite = request("INVITE", body=SDP, contact="<tel:+15551234>")
    txn = invite_received(agent, invite, Peer("udp", "203.0.113.8", 5066))
    agent.respond(txn, 200, 0.0, body=SDP)
    dialog = agent.dialog_of(txn)
    (ok,) = sent(agent)
    assert dialog
    agent.receive(ack_for(invite, ok.response.to_tag or "", branch=new_branch()), SRC_UDP, 0.1)
    agent.end_dialog(dialog, 1.0)
    (bye,) = requests_in(sent(agent))
    assert (bye.peer.host, bye.peer.port) == ("203.0.113.8", 5066)


def test_hanging_up_before_the_ack_waits_for_it_and_keeps_retransmitting_the_2xx() -> None:
    # RFC 3261 §15: no BYE on a dialog until the ACK for our 2xx came (or never will).
    agent = make_agent()
    call = establish(agent, ack=False)
    agent.end_dialog(call.dialog, 0.2, "shutdown")
    assert sent(agent) == []
    assert events(agent) == [DialogEnded(call.dialog, "shutdown")]
    out = run_until(agent, 2.0)
    assert retransmission_times(out, 200) == [0.5, 1.5]
    agent.receive(ack_for(call.invite, call.to_tag, branch=new_branch()), SRC_UDP, 2.0)
    (bye,) = sent(agent)
    assert bye.request.method == "BYE" and "shutdown" in (bye.request.headers.get("Reason") or "")
    assert events(agent) == []  # no DialogConfirmed for a dialog already ended
    agent.receive(answer_to(bye.request, 200), SRC_UDP, 2.1)
    assert requests_in(run_until(agent, 100.0)) == []
    assert agent.get_timer() is None


def test_hanging_up_before_an_ack_that_never_comes_sends_one_bye_at_64_t1() -> None:
    agent = make_agent()
    call = establish(agent, ack=False)
    agent.end_dialog(call.dialog, 1.0)
    events(agent)
    out = run_until(agent, 64 * T1)
    assert [(m.request.method, m.at) for m in requests_in(out)] == [("BYE", 64 * T1)]
    assert events(agent) == []
    run_until(agent, 200.0)
    assert agent.get_timer() is None


def test_src_bye_while_our_bye_waits_for_the_ack_is_accepted() -> None:
    agent = make_agent()
    call = establish(agent, ack=False)
    agent.end_dialog(call.dialog, 0.1)
    events(agent)
    agent.receive(call.in_dialog("BYE"), SRC_UDP, 0.3)
    assert statuses(sent(agent)) == [200]
    assert requests_in(run_until(agent, 100.0)) == []
    assert events(agent) == []


def test_end_dialog_twice_or_unknown_is_harmless() -> None:
    agent = make_agent()
    call = establish(agent)
    agent.end_dialog(call.dialog, 1.0)
    agent.end_dialog(call.dialog, 1.0)
    agent.end_dialog("nope", 1.0)
    assert len(requests_in(sent(agent))) == 1


# ---------------------------------------------------------------- interop requests through the agent


def test_interop_invite_then_update_run_through_one_dialog() -> None:
    agent = make_agent()
    invite = (INTEROP / "avaya_sbce_1.sip").read_bytes()
    txn = invite_received(agent, invite, Peer("udp", "10.64.110.65", 5060))
    agent.respond(txn, 200, 0.0, body=SDP)
    (ok,) = sent(agent)
    to_tag = ok.response.to_tag or ""
    dialog = agent.dialog_of(txn)
    update = (
        (INTEROP / "avaya_sbce_2.sip")
        .read_bytes()
        .replace(b"tag=as7e61d9b2", f"tag={to_tag}".encode())
    )
    agent.receive(update, Peer("udp", "10.64.110.65", 5060), 1.0)
    (event,) = events(agent)
    assert isinstance(event, RequestReceived)
    assert event.dialog == dialog and event.request.method == "UPDATE"
    assert event.request.content_type == "application/rs-metadata"


@pytest.mark.parametrize(
    "case",
    ["avaya_sbce_1", "metaswitch_1", "oracle_acme_1", "rfc7866_1", "sems_1", "webex_calling_1"],
)
def test_interop_invites_reach_the_transaction_user(case: str) -> None:
    agent = make_agent()
    data = (INTEROP / f"{case}.sip").read_bytes()
    message = parse_message(data)
    transport = parse_via(message.headers.values("Via")[0]).transport.lower()
    peer = Peer(transport, "198.51.100.200", 5060, connection=1 if transport != "udp" else None)
    invite_received(agent, data, peer)
    assert parse_address(message.headers.values("Contact")[0]).uri.scheme == "sip"


def test_call_helper_is_consistent() -> None:
    agent = make_agent()
    call = establish(agent)
    assert isinstance(call, Call)
    assert agent.dialog_ids() == [call.dialog]


# ---------------------------------------------------------------- what SRCs get wrong (issue 7.7)
# Tolerated where the dialog is still known without doubt (Call-ID, From-tag, and for an ACK
# the INVITE's branch or the dialog), logged with ids only and counted; `strict` keeps RFC 3261.


def reinvite_answered(agent: SipAgent, call: Call, now: float, **kwargs: object) -> Sent:
    agent.receive(call.in_dialog("INVITE", body=SDP, **kwargs), call.peer, now)
    assert statuses(sent(agent)) == [100]
    (event,) = events(agent)
    assert isinstance(event, RequestReceived)
    assert agent.respond(event.txn, 200, now, body=SDP)
    (ok,) = sent(agent)
    return ok


def ack(*, cseq: int, to_tag: str | None, branch: str | None = None) -> bytes:
    """An ACK of a 2xx from the SRC (a new branch unless one is given)."""
    return request("ACK", cseq=cseq, to_tag=to_tag, branch=branch or new_branch())


@pytest.mark.parametrize(
    "cseq, to_tag, mismatch",
    [(2, "ours", "cseq"), (1, "not-ours", "to-tag"), (1, None, "to-tag"), (7, None, "cseq+to-tag")],
)
def test_ack_with_a_wrong_cseq_or_to_tag_still_confirms_the_dialog(
    cseq: int, to_tag: str | None, mismatch: str
) -> None:
    agent = make_agent()
    call = establish(agent, ack=False)
    with structlog.testing.capture_logs() as logs:
        tag = call.to_tag if to_tag == "ours" else to_tag
        agent.receive(ack(cseq=cseq, to_tag=tag), SRC_UDP, 0.2)
    assert events(agent) == [DialogConfirmed(call.dialog)]
    assert retransmission_times(run_until(agent, 20.0), 200) == []  # the 2xx is acknowledged
    assert agent.counters.tolerated_ack_mismatch == 1
    # Logged with ids only: no number, name or URI of the call.
    assert logs == [
        {
            "event": "sip_ack_mismatch_tolerated",
            "dialog": call.dialog,
            "mismatch": mismatch,
            "log_level": "warning",
        }
    ]
    # The next re-INVITE is answered, not refused with 491.
    agent.receive(call.in_dialog("INVITE", body=SDP), SRC_UDP, 21.0)
    assert statuses(sent(agent)) == [100]


def test_reinvite_ack_with_a_stale_cseq_acknowledges_its_2xx() -> None:
    # Scripts that keep "CSeq: 1 ACK" for every ACK of the dialog.
    agent = make_agent()
    call = establish(agent)
    reinvite_answered(agent, call, 1.0)
    agent.receive(ack(cseq=1, to_tag=call.to_tag), SRC_UDP, 1.1)
    assert events(agent) == []  # confirmed already, nothing new for the transaction user
    assert retransmission_times(run_until(agent, 40.0), 200) == []
    assert agent.dialog_ids() == [call.dialog]  # no BYE for want of an ACK
    agent.receive(call.in_dialog("INVITE", body=SDP), SRC_UDP, 41.0)
    assert statuses(sent(agent)) == [100]


def test_ack_naming_no_dialog_is_taken_only_if_one_dialog_has_its_call_id_and_from_tag() -> None:
    agent = make_agent()
    branch = new_branch()
    first = request("INVITE", body=SDP, branch=branch)
    second = request("INVITE", body=SDP)  # same Call-ID and From tag, another transaction
    for invite in (first, second):
        txn = invite_received(agent, invite)
        agent.respond(txn, 200, 0.0, body=SDP)
        sent(agent)
    agent.receive(ack(cseq=1, to_tag="x"), SRC_UDP, 0.1)
    assert events(agent) == [] and agent.counters.tolerated_ack_mismatch == 0
    assert agent.counters.dropped == 1
    # With the branch of the first INVITE there is no doubt which 2xx it acknowledges.
    agent.receive(ack(cseq=1, to_tag="x", branch=branch), SRC_UDP, 0.2)
    (confirmed,) = events(agent)
    assert isinstance(confirmed, DialogConfirmed)
    assert agent.counters.tolerated_ack_mismatch == 1


def test_late_ack_of_a_491_is_not_taken_for_the_ack_of_our_2xx() -> None:
    agent = make_agent()
    call = establish(agent)
    reinvite_answered(agent, call, 1.0)
    glare_branch = new_branch()
    agent.receive(call.in_dialog("INVITE", body=SDP, branch=glare_branch), SRC_UDP, 1.1)
    assert statuses(sent(agent)) == [491]
    glare_ack = ack(cseq=call.cseq, to_tag=call.to_tag, branch=glare_branch)
    agent.receive(glare_ack, SRC_UDP, 1.2)
    agent.receive(glare_ack, SRC_UDP, 1.3)  # its retransmission
    assert agent.counters.tolerated_ack_mismatch == 0
    assert retransmission_times(run_until(agent, 2.0), 200) == [1.5]  # still unacknowledged
    agent.receive(ack(cseq=call.cseq - 1, to_tag=call.to_tag), SRC_UDP, 2.0)
    assert retransmission_times(run_until(agent, 40.0), 200) == []


def test_strict_agent_ignores_an_ack_with_a_wrong_cseq_or_to_tag() -> None:
    agent = make_agent(strict=True)
    call = establish(agent, ack=False)
    agent.receive(ack(cseq=2, to_tag=call.to_tag), SRC_UDP, 0.2)
    agent.receive(ack(cseq=1, to_tag="not-ours"), SRC_UDP, 0.3)
    assert events(agent) == []
    assert retransmission_times(run_until(agent, 2.0), 200) == [0.5, 1.5]
    agent.receive(call.in_dialog("INVITE", body=SDP), SRC_UDP, 2.0)
    assert statuses(sent(agent)) == [491]
    assert agent.counters.tolerated_ack_mismatch == 0


def test_bye_with_a_cseq_below_the_last_reinvite_ends_the_dialog() -> None:
    # Scripts that count CSeq per method: re-INVITE 10, then BYE 2.
    agent = make_agent()
    call = establish(agent)
    call.cseq = 9
    reinvite_answered(agent, call, 1.0)
    agent.receive(ack(cseq=10, to_tag=call.to_tag), SRC_UDP, 1.1)
    with structlog.testing.capture_logs() as logs:
        agent.receive(call.in_dialog("BYE", cseq=2), SRC_UDP, 2.0)
    assert statuses(sent(agent)) == [200]
    assert events(agent) == [DialogEnded(call.dialog, "bye")]
    assert agent.counters.tolerated_low_cseq_bye == 1
    assert [(e["event"], e["dialog"]) for e in logs] == [
        ("sip_low_cseq_bye_tolerated", call.dialog)
    ]


def test_strict_agent_refuses_a_bye_with_a_lower_cseq_with_500() -> None:
    agent = make_agent(strict=True)
    call = establish(agent)
    call.cseq = 9
    reinvite_answered(agent, call, 1.0)
    agent.receive(ack(cseq=10, to_tag=call.to_tag), SRC_UDP, 1.1)
    agent.receive(call.in_dialog("BYE", cseq=2), SRC_UDP, 2.0)
    (answer,) = sent(agent)
    assert answer.response.status == 500
    assert events(agent) == [] and agent.dialog_ids() == [call.dialog]
    assert agent.counters.tolerated_low_cseq_bye == 0


UNCLOSED = "<sip:src@203.0.113.50:5070;+sip.src"


def test_contact_without_its_closing_bracket_is_read_as_if_it_had_one() -> None:
    agent = make_agent()
    with structlog.testing.capture_logs() as logs:
        agent.receive(request("INVITE", body=SDP, contact=UNCLOSED), SRC_UDP, 0.0)
    assert statuses(sent(agent)) == [100]
    (event,) = events(agent)
    assert isinstance(event, RequestReceived)
    # The transaction user gets the repaired Contact (its +sip.src marks a SIPREC SRC).
    assert event.request.headers.get("Contact") == UNCLOSED + ">"
    assert agent.counters.tolerated_unclosed_contact == 1
    assert [e["event"] for e in logs] == ["sip_unclosed_contact_tolerated"]
    assert "203.0.113.50" not in repr(logs) and "sip:" not in repr(logs)
    agent.respond(event.txn, 200, 0.0, body=SDP)
    (ok,) = sent(agent)
    dialog = agent.dialog_of(event.txn) or ""
    agent.receive(ack(cseq=1, to_tag=ok.response.to_tag), SRC_UDP, 0.1)
    agent.end_dialog(dialog, 1.0)
    (bye,) = requests_in(sent(agent))
    assert bye.request.uri == "sip:src@203.0.113.50:5070;+sip.src"
    assert (bye.peer.host, bye.peer.port) == ("203.0.113.50", 5070)
    assert agent.counters.tolerated_unclosed_contact == 1


def test_reinvite_contact_without_its_closing_bracket_becomes_the_remote_target() -> None:
    agent = make_agent()
    call = establish(agent)
    reinvite_answered(agent, call, 1.0, contact=UNCLOSED)
    agent.receive(ack(cseq=call.cseq, to_tag=call.to_tag), SRC_UDP, 1.1)
    agent.end_dialog(call.dialog, 2.0)
    (bye,) = requests_in(sent(agent))
    assert (bye.peer.host, bye.peer.port) == ("203.0.113.50", 5070)
    assert agent.counters.tolerated_unclosed_contact == 1


@pytest.mark.parametrize("contact", ["garbage <", "<sip:a@b;self", "<sip:", "<<sip:a@b"])
def test_contact_that_a_closing_bracket_does_not_mend_still_gets_400(contact: str) -> None:
    agent = make_agent()
    agent.receive(request("INVITE", body=SDP, contact=contact), SRC_UDP, 0.0)
    assert statuses(sent(agent)) == [400]
    assert agent.counters.tolerated_unclosed_contact == 0


def test_strict_agent_refuses_a_contact_without_its_closing_bracket_with_400() -> None:
    agent = make_agent(strict=True)
    agent.receive(request("INVITE", body=SDP, contact=UNCLOSED), SRC_UDP, 0.0)
    assert statuses(sent(agent)) == [400]
    assert events(agent) == [] and agent.counters.tolerated_unclosed_contact == 0
