"""Recording rules as the recorder applies them: the first match by priority decides the
action and the opt-out choice, any matching rule restricts, and no match is the default."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from siprec_server.compliance import ComplianceError
from siprec_server.compliance.retention import RecordingFacts, parse_match
from siprec_server.compliance.rules import Rule, check_rule_fields, decide
from siprec_server.siprec.sdp import parse_sdp
from siprec_server.siprec.sdp_answer import decline_all

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def facts(*numbers: str, direction: str | None = None,
          metadata: dict[str, list[str]] | None = None) -> RecordingFacts:
    return RecordingFacts(uuid.UUID(int=0), NOW, frozenset(numbers), frozenset(), direction,
                          metadata or {})


def rule(name: str, action: str, match: dict[str, object], **kw: object) -> Rule:
    return Rule(uuid.uuid4(), name, action, parse_match(match), **kw)  # type: ignore[arg-type]


def test_no_rule_matching_is_the_default() -> None:
    decision = decide(facts("+442079460000"), [], default_action="metadata_only",
                      default_opt_out="keep")
    assert (decision.action, decision.opt_out, decision.rule) == ("metadata_only", "keep", None)
    assert not decision.restricted


def test_the_first_match_by_priority_decides_and_any_match_restricts() -> None:
    everything = rule("record all", "record", {}, priority=1000)
    eap = rule("EAP", "do_not_record", {"parties": ["+44800*"]}, priority=10, opt_out="keep")
    hr = rule("HR restricted", "record", {"parties": ["+4480012*"]}, priority=500,
              restricted=True)
    decision = decide(facts("+448001234"), [everything, hr, eap])
    assert decision.rule == eap and decision.action == "do_not_record"
    assert decision.opt_out == "keep" and decision.restricted
    assert decision.restricted_by == (hr.id,)
    other = decide(facts("+441234"), [everything, hr, eap])
    assert other.rule == everything and not other.restricted and other.opt_out == "discard"


def test_direction_and_src_metadata_are_matched_as_retention_does() -> None:
    outbound = rule("outbound sales", "metadata_only",
                    {"direction": "outbound", "metadata": {"businessGroup": "Sales"}})
    assert decide(facts(direction="outbound", metadata={"businessgroup": ["sales"]}),
                  [outbound]).action == "metadata_only"
    assert decide(facts(direction="inbound", metadata={"businessgroup": ["sales"]}),
                  [outbound]).action == "record"
    assert decide(facts(metadata={"businessgroup": ["sales"]}), [outbound]).action == "record"


@pytest.mark.parametrize("body", [
    {"name": "", "action": "record"}, {"name": "x", "action": "keep"},
    {"name": "x", "action": "record", "restricted": "yes"},
    {"name": "x", "action": "record", "opt_out": "shred"},
    {"name": "x", "action": "record", "priority": True},
])
def test_bad_rule_fields_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ComplianceError):
        check_rule_fields(body)


def test_a_declined_answer_keeps_every_m_line_in_order_with_port_zero() -> None:
    offer = parse_sdp(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n"
                      b"t=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\na=label:a\r\na=sendonly\r\n"
                      b"m=audio 4002 RTP/SAVP 8\r\na=label:b\r\n"
                      b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 "
                      b"inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\na=sendonly\r\n")
    negotiation = decline_all(offer, local_address="198.51.100.7", session_id=5,
                              session_version=2, reason="rules")
    answer = parse_sdp(negotiation.answer_sdp)
    assert [(m.port, m.proto, m.label, m.direction) for m in answer.media] == [
        (0, "RTP/AVP", "a", "inactive"), (0, "RTP/SAVP", "b", "inactive")]
    assert negotiation.streams == () and b"a=crypto" not in negotiation.answer_sdp
