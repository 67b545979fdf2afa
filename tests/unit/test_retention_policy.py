"""Retention and subject-request decisions with an injected clock (sans-IO): the default, a
policy's match, the longest policy winning, floor and ceiling, changes that need a second user,
and the erasure plan's refusals."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from siprec_server.compliance import ComplianceError
from siprec_server.compliance.holds import parse_hold_query
from siprec_server.compliance.retention import (
    Policy,
    RecordingFacts,
    RetentionLimits,
    change_needs_approval,
    expiry_of,
    obligations_of,
    parse_match,
    preset_policy,
)
from siprec_server.compliance.subjects import RecordingStatus, parse_subject, plan_erasure

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
LIMITS = RetentionLimits(default_days=365, floor_days=0, ceiling_days=3650)


def facts(*parties: tuple[str | None, str | None], direction: str | None = None,
          metadata: dict[str, list[str]] | None = None) -> RecordingFacts:
    return RecordingFacts(uuid.uuid4(), T0, frozenset(n for n, _ in parties if n),
                          frozenset(a for _, a in parties if a), direction, metadata or {})


def policy(name: str, days: int, match: dict[str, object] | None = None,
           legal: bool = False) -> Policy:
    return Policy(uuid.uuid4(), name, days, parse_match(match or {}), legal)


def test_without_policies_a_recording_expires_after_the_default() -> None:
    expiry = expiry_of(facts(("+442079460000", None)), [], LIMITS)
    assert expiry.at == T0 + timedelta(days=365) and expiry.policy is None


def test_a_matching_policy_keeps_its_group_longer_and_others_keep_the_default() -> None:
    trading = policy("trading desk", 1826, {"parties": ["+4420794600*"]})
    inside = facts(("+442079460012", "tel:+442079460012"))
    outside = facts(("+33142685300", None))
    assert expiry_of(inside, [trading], LIMITS).at == T0 + timedelta(days=1826)
    assert expiry_of(outside, [trading], LIMITS).policy is None


def test_the_longest_matching_policy_wins_and_a_shorter_one_never_shortens() -> None:
    short = policy("complaints", 30, {"parties": ["sip:*@pbx.example.com"]})
    five = policy("mifid", 1826, {"metadata": {"groupID": "Trading"}})
    seven = policy("fca request", 2557, {"direction": "outbound",
                                         "metadata": {"groupid": ["trading", "sales"]}})
    call = facts(("2001", "sip:2001@pbx.example.com"), direction="outbound",
                 metadata={"groupid": ["trading"]})
    expiry = expiry_of(call, [short, five, seven], LIMITS)
    assert expiry.policy == seven and expiry.at == T0 + timedelta(days=2557)
    inbound = facts(("2001", "sip:2001@pbx.example.com"), direction="inbound",
                    metadata={"groupid": ["trading"]})
    assert expiry_of(inbound, [short, five, seven], LIMITS).policy == five
    assert expiry_of(facts(("2001", "SIPS:2001@PBX.example.com")), [short],
                     LIMITS).days == 365  # 30 days matches but the default is longer


def test_floor_and_ceiling_bound_every_retention() -> None:
    limits = RetentionLimits(default_days=10, floor_days=30, ceiling_days=3650)
    assert expiry_of(facts(), [], limits).at == T0 + timedelta(days=30)
    forever = policy("forever", 99999)
    assert expiry_of(facts(), [forever], limits).at == T0 + timedelta(days=3650)
    with pytest.raises(ComplianceError, match="ceiling"):
        limits.check_days(3651)
    with pytest.raises(ComplianceError, match="floor"):
        limits.check_days(29)


def test_mifid_presets_are_legal_obligations_of_five_and_seven_years() -> None:
    five = preset_policy(uuid.uuid4(), None, "mifid2", parse_match({}))
    seven = preset_policy(uuid.uuid4(), "desk", "mifid2-extended", parse_match({}))
    assert (five.days, five.legal_obligation) == (1826, True)
    assert (seven.days, seven.name) == (2557, "desk")
    call = facts()
    (duty,) = obligations_of(call, [five], LIMITS, T0 + timedelta(days=100))
    assert duty.until == T0 + timedelta(days=1826)
    assert obligations_of(call, [five], LIMITS, T0 + timedelta(days=1827)) == []


def test_only_changes_that_could_shorten_retention_need_a_second_user() -> None:
    old = policy("desk", 400, {"parties": ["2001"]}, legal=True)
    longer = Policy(old.id, "renamed", 500, old.match, True)
    assert not change_needs_approval(old, longer)
    assert change_needs_approval(old, Policy(old.id, "desk", 399, old.match, True))
    assert change_needs_approval(old, Policy(old.id, "desk", 400, parse_match({}), True))
    assert change_needs_approval(old, Policy(old.id, "desk", 400, old.match, False))
    assert change_needs_approval(old, None)


def test_bad_matches_are_refused_with_the_reason() -> None:
    for raw, message in (([], "object"), ({"parties": "2001"}, "list"),
                         ({"parties": ["ab c"]}, "neither"), ({"direction": "up"}, "inbound"),
                         ({"metadata": {"k": ""}}, "values"), ({"other": 1}, "unknown")):
        with pytest.raises(ComplianceError, match=message):
            parse_match(raw)


def test_a_subject_is_one_number_in_any_spelling() -> None:
    for spelling in ("+44 20 7946 0000", "00442079460000", "tel:+44-20-7946-0000",
                     "sip:+442079460000@sbc.example.com"):
        assert parse_subject({"participant": spelling}).numbers == ("+442079460000",)
    assert parse_subject({"participant": "sip:Alice@Example.com"}).aors == (
        "sip:alice@example.com",)
    with pytest.raises(ComplianceError):
        parse_subject({})


def test_erasure_plan_refuses_held_then_legally_kept_then_live_recordings() -> None:
    duty = obligations_of(facts(), [policy("mifid", 1826, legal=True)], LIMITS, T0)
    rid = uuid.uuid4()
    held = plan_erasure(RecordingStatus(rid, "complete", ["Smith v Bank"], duty))
    assert (held.outcome, held.reason, held.matter) == ("refused", "legal_hold", "Smith v Bank")
    kept = plan_erasure(RecordingStatus(rid, "complete", [], duty))
    assert (kept.reason, kept.until) == ("legal_obligation", T0 + timedelta(days=1826))
    assert plan_erasure(RecordingStatus(rid, "recording", [], [])).reason == "recording_active"
    assert plan_erasure(RecordingStatus(rid, "complete", [], [])).outcome == "erase"


def test_a_hold_query_is_a_search_and_not_everything() -> None:
    query = parse_hold_query({"participant": "0044 20 7946 0000", "tag": "Dispute",
                              "from": "2024-01-01T00:00:00Z"})
    assert query.numbers == ("+442079460000",) and query.tags == ("dispute",)
    with pytest.raises(ComplianceError, match="at least one filter"):
        parse_hold_query({})
    with pytest.raises(ComplianceError, match="unknown"):
        parse_hold_query({"state": "complete"})
