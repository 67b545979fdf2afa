"""Recording rules: what may be recorded of a call, decided when its INVITE arrives.

A rule matches like a retention policy (compliance/retention.py: any party's number or AOR, the
direction, SRC extension metadata) and says what to do:

- `record`: audio and metadata, as always;
- `metadata_only`: the metadata (who, when, how long) is kept, no audio: no RTP port is
  opened, no data key made, no file written;
- `do_not_record`: nothing is kept; the SRC still gets a clean 200 OK (see `DECLINE_RATIONALE`).

Rules are tried in order of `priority` (lower first, then name): the first that matches decides
the action and what an opt-out does to what was recorded; `restricted` is taken from every
matching rule (one restricted match restricts the recording), so a rule that only marks a
group's calls restricted can sit beside the rules that decide what is recorded. No match: the
configured default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from siprec_server.compliance import ComplianceError
from siprec_server.compliance.retention import PolicyMatch, RecordingFacts, matches_recording

__all__ = [
    "ACTIONS",
    "DECLINE_RATIONALE",
    "OPT_OUT_CHOICES",
    "Rule",
    "RuleDecision",
    "check_rule_fields",
    "decide",
]

ACTIONS = ("record", "metadata_only", "do_not_record")
OPT_OUT_CHOICES = ("keep", "discard")
MAX_NAME_LENGTH = 200

DECLINE_RATIONALE = (
    "metadata_only and do_not_record answer the INVITE with 200 OK and every m-line declined "
    "(port 0, RFC 3264 section 6), not with a 4xx/6xx: a final error makes an SBC hunt the next "
    "SRS of its group (RFC 7866 leaves SRS failover to the SRC), and an SRC in mandatory-"
    "recording mode may tear down the recorded call itself when no SRS accepts. The 200 is an "
    "established recording session with no media: the SRC sends no RTP, and its re-INVITEs "
    "and BYE are answered as usual.")


@dataclass(frozen=True, slots=True)
class Rule:
    id: UUID
    name: str
    action: str
    match: PolicyMatch = field(default_factory=PolicyMatch)
    restricted: bool = False
    opt_out: str | None = None
    """keep | discard what was recorded when the caller opts out; None: the configured default."""
    priority: int = 100


@dataclass(frozen=True, slots=True)
class RuleDecision:
    action: str
    restricted: bool
    opt_out: str
    rule: Rule | None
    """The rule that decided the action; None for the default."""
    restricted_by: tuple[UUID, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "restricted": self.restricted, "opt_out": self.opt_out,
                "rule_id": None if self.rule is None else str(self.rule.id),
                "rule": None if self.rule is None else self.rule.name}


def ordered(rules: Iterable[Rule]) -> list[Rule]:
    return sorted(rules, key=lambda r: (r.priority, r.name.lower(), str(r.id)))


def decide(facts: RecordingFacts, rules: Iterable[Rule], *, default_action: str = "record",
           default_opt_out: str = "discard") -> RuleDecision:
    """What to do with the call these facts describe."""
    deciding: Rule | None = None
    restricted_by: list[UUID] = []
    for rule in ordered(rules):
        if not matches_recording(rule.match, facts):
            continue
        if deciding is None:
            deciding = rule
        if rule.restricted:
            restricted_by.append(rule.id)
    action = deciding.action if deciding is not None else default_action
    opt_out = (deciding.opt_out if deciding is not None and deciding.opt_out is not None
               else default_opt_out)
    return RuleDecision(action, bool(restricted_by), opt_out, deciding, tuple(restricted_by))


def check_rule_fields(raw: Mapping[str, Any], *, partial: bool = False) -> dict[str, Any]:
    """The fields of a rule as given by a user (JSON), checked: name, action, restricted,
    opt_out, priority (match is parsed by retention.parse_match). With `partial`, only those
    present."""
    out: dict[str, Any] = {}
    if "name" in raw or not partial:
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
            raise ComplianceError(f"name: 1 to {MAX_NAME_LENGTH} characters")
        out["name"] = name.strip()
    if "action" in raw or not partial:
        action = raw.get("action")
        if action not in ACTIONS:
            raise ComplianceError(f"action: one of {', '.join(ACTIONS)}")
        out["action"] = action
    if "restricted" in raw:
        if not isinstance(raw["restricted"], bool):
            raise ComplianceError("restricted: true or false")
        out["restricted"] = raw["restricted"]
    elif not partial:
        out["restricted"] = False
    if "opt_out" in raw:
        if raw["opt_out"] is not None and raw["opt_out"] not in OPT_OUT_CHOICES:
            raise ComplianceError("opt_out: keep, discard or null (the configured default)")
        out["opt_out"] = raw["opt_out"]
    elif not partial:
        out["opt_out"] = None
    if "priority" in raw:
        priority = raw["priority"]
        if isinstance(priority, bool) or not isinstance(priority, int) or not (
                -1_000_000 <= priority <= 1_000_000):
            raise ComplianceError("priority: an integer (lower first)")
        out["priority"] = priority
    elif not partial:
        out["priority"] = 100
    return out
