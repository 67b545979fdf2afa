"""Whom a stream believes: the source filter of each policy, the SSRC lock, and which streams'
key sequences may pause (by label, or by the AOR or number of their sender in the metadata)."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from siprec_server.media.source import (
    SSRC_CHANGE_SILENCE,
    SourceFilter,
    SourceVerdict,
    SsrcLock,
    offer_address,
)
from siprec_server.media_service import keypad_control
from siprec_server.sip.message import SipRequest, parse_message
from siprec_server.siprec.metadata import parse_metadata
from siprec_server.siprec.request import read_body
from siprec_server.siprec.sdp import parse_sdp
from siprec_server.siprec.sdp_answer import AnswerPreferences, negotiate
from siprec_server.siprec.session import RecordingSession
from tests.sip_client import interop_case

ALLOWED, FOREIGN, UNLATCHED = SourceVerdict.ALLOWED, SourceVerdict.FOREIGN, SourceVerdict.UNLATCHED


@pytest.mark.parametrize(("text", "expected"), [
    ("192.0.2.1", "192.0.2.1"), (" 2001:DB8::1 ", "2001:db8::1"), ("::ffff:192.0.2.1", "192.0.2.1"),
    ("[2001:db8::2]", "2001:db8::2"), ("0.0.0.0", None), ("::", None), ("sbc.example.com", None),
    ("", None), (None, None),
])
def test_offer_address_is_an_ip_literal_or_nothing(text: str | None, expected: str | None
                                                   ) -> None:
    assert offer_address(text) == expected


def test_offer_address_policy_checks_the_ip_on_any_port() -> None:
    f = SourceFilter("offer-address", "192.0.2.1", 4000, 4001)
    assert f.check(("192.0.2.1", 9999)) is ALLOWED
    assert f.check(("::ffff:192.0.2.1", 9999, 0, 0)) is ALLOWED  # type: ignore[arg-type]
    assert f.check(("192.0.2.2", 4000)) is FOREIGN
    assert f.check(None) is FOREIGN
    assert f.check(("192.0.2.2", 4001), rtcp=True) is FOREIGN


def test_offer_policy_checks_ip_and_port() -> None:
    f = SourceFilter("offer", "2001:db8::1", 4000, 4001)
    assert f.check(("2001:db8::1", 4000, 0, 0)) is ALLOWED  # type: ignore[arg-type]
    assert f.check(("2001:db8::1", 4001)) is FOREIGN
    assert f.check(("2001:db8::1", 4001), rtcp=True) is ALLOWED
    assert f.check(("2001:db8::1", 4000), rtcp=True) is FOREIGN


def test_latch_fixes_rtp_and_rtcp_sources_separately() -> None:
    f = SourceFilter("latch", "10.0.0.5", 4000, 4001)
    assert f.check(("203.0.113.9", 61000)) is UNLATCHED
    f.latch(("203.0.113.9", 61000))
    assert f.check(("203.0.113.9", 61000)) is ALLOWED
    assert f.check(("203.0.113.9", 61002)) is FOREIGN
    assert f.check(("203.0.113.9", 61001), rtcp=True) is UNLATCHED
    f.latch(("203.0.113.9", 61001), rtcp=True)
    f.latch(("198.51.100.1", 1), rtcp=True)  # the first one stays
    assert f.check(("203.0.113.9", 61001), rtcp=True) is ALLOWED


def test_offer_policies_without_a_usable_address_latch_and_any_takes_all() -> None:
    assert SourceFilter("offer-address", None).policy == "latch"
    assert SourceFilter("any", "192.0.2.1").check(("198.51.100.1", 1)) is ALLOWED
    assert SourceFilter("any", None).check(None) is ALLOWED
    with pytest.raises(ValueError):
        SourceFilter("everyone", None)  # type: ignore[arg-type]


def test_ssrc_lock_takes_a_new_ssrc_only_after_silence_or_a_reset() -> None:
    lock = SsrcLock()
    assert lock.admit(1, 10.0) and lock.ssrc == 1
    assert not lock.admit(2, 10.5)
    assert lock.admit(1, 10.6)
    assert not lock.admit(2, 10.6 + SSRC_CHANGE_SILENCE - 0.01)
    assert lock.admit(2, 10.6 + SSRC_CHANGE_SILENCE) and lock.ssrc == 2
    assert not lock.admit(1, 11.7)
    lock.reset()
    assert lock.admit(3, 11.8) and lock.ssrc == 3


def _session(case: str = "oracle_acme_1") -> RecordingSession:
    request = parse_message(interop_case(case))
    assert isinstance(request, SipRequest)
    body = read_body(request)
    assert body.sdp is not None and body.metadata is not None
    session = RecordingSession(uuid4(), request.call_id, datetime.now(UTC))
    ports = iter(range(30000, 30100, 2))
    session.negotiation = negotiate(parse_sdp(body.sdp), AnswerPreferences(),
                                    local_address="192.0.2.200",
                                    port_for=lambda _i: next(ports), session_id=1,
                                    session_version=1)
    session.apply_metadata(parse_metadata(body.metadata), datetime.now(UTC))
    return session


@pytest.mark.parametrize(("rules", "controlling"), [
    (("*",), [True, True]),
    ((), [False, False]),
    (("label:16777228",), [False, True]),
    (("label:1677722?",), [True, True]),
    (("aor:sip:1002@*",), [False, True]),  # the agent sends label 16777228
    (("aor:SIP:9000@192.168.50.102",), [True, False]),
    (("number:9000",), [True, False]),
    (("number:+44*", "label:nope"), [False, False]),
])
def test_keypad_control_follows_labels_and_the_senders_in_the_metadata(
    rules: tuple[str, ...], controlling: list[bool]
) -> None:
    session = _session()
    assert [keypad_control(session, s, rules) for s in session.streams] == controlling
