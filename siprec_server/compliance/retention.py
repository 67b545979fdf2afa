"""Retention: how long each recording is kept, decided from policies that match groups of
recordings, a default, and a system floor and ceiling.

- A policy matches a recording when every criterion it names holds: any party's number matches
  one of its number patterns or its AOR one of its AOR globs (`parties`), the call's direction,
  and each SRC metadata key (RFC 7865 extension data, extracted when the metadata arrives:
  migration 0009) has one of the given values.
- The effective retention of a recording is the longest of the default and every matching
  policy (retention may only grow), clamped to [floor, ceiling]; it runs from `started_at`.
- A policy marked `legal_obligation` (MiFID II's presets are) is a duty to keep: a data subject's
  erasure request is refused for recordings it covers until it ends (GDPR Art. 17(3)(b)).
- A change that could shorten how long anything is kept — fewer days, another match, dropping
  the legal obligation, deleting the policy — needs a second user's approval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from siprec_server.compliance import ComplianceError
from siprec_server.compliance.patterns import matches_aor, matches_number, split_patterns

__all__ = [
    "DIRECTIONS",
    "PRESETS",
    "Expiry",
    "Obligation",
    "Policy",
    "PolicyMatch",
    "RecordingFacts",
    "RetentionLimits",
    "change_needs_approval",
    "expiry_of",
    "governing_policy",
    "matches_recording",
    "matching_policies",
    "obligations_of",
    "parse_match",
    "preset_policy",
]

DIRECTIONS = ("inbound", "outbound")
MAX_PATTERNS = 100
MAX_METADATA_KEYS = 20
MAX_NAME_LENGTH = 200


@dataclass(frozen=True, slots=True)
class Preset:
    days: int
    legal_obligation: bool
    basis: str


PRESETS: Mapping[str, Preset] = {
    # MiFID II Art. 16(7) and Delegated Regulation 2017/565 Art. 76(8): five years...
    "mifid2": Preset(5 * 365 + 1, True, "MiFID II Art. 16(7): 5 years"),
    # ...and up to seven where the competent authority requests it.
    "mifid2-extended": Preset(7 * 365 + 2, True,
                              "MiFID II Art. 16(7): 7 years at the competent authority's request"),
}


@dataclass(frozen=True, slots=True)
class PolicyMatch:
    """Which recordings a policy covers; an empty match covers every recording."""

    numbers: tuple[str, ...] = ()
    """Number patterns ("+4420794600*", "2001"), compared with each party's normalised number."""
    aors: tuple[str, ...] = ()
    """AOR globs ("sip:*@trading.example.com"), compared case-insensitively."""
    direction: str | None = None
    """"inbound" or "outbound" as the SRC's metadata says; a recording without one never
    matches a policy that names one."""
    metadata: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(key, accepted values): lower-cased local names and values of SRC extension-data leaves,
    e.g. ("groupid", ("trading",))."""

    def as_dict(self) -> dict[str, Any]:
        view: dict[str, Any] = {"parties": [*self.numbers, *self.aors]}
        if self.direction is not None:
            view["direction"] = self.direction
        if self.metadata:
            view["metadata"] = {k: list(v) for k, v in self.metadata}
        return view


def parse_match(raw: object) -> PolicyMatch:
    """A policy's match from JSON: {"parties": [patterns], "direction": "inbound",
    "metadata": {"groupID": "Trading" | ["Trading", "Sales"]}}; every key optional."""
    if raw is None:
        return PolicyMatch()
    if not isinstance(raw, Mapping):
        raise ComplianceError("match: expected an object")
    unknown = sorted(set(raw) - {"parties", "direction", "metadata"})
    if unknown:
        raise ComplianceError(f"match: unknown keys {', '.join(unknown)[:100]}")
    parties = raw.get("parties", [])
    if not isinstance(parties, list) or len(parties) > MAX_PATTERNS:
        raise ComplianceError(f"match.parties: a list of at most {MAX_PATTERNS} patterns")
    numbers, aors = split_patterns(parties)
    direction = raw.get("direction")
    if direction is not None and direction not in DIRECTIONS:
        raise ComplianceError("match.direction: inbound or outbound")
    metadata_raw = raw.get("metadata", {})
    if not isinstance(metadata_raw, Mapping) or len(metadata_raw) > MAX_METADATA_KEYS:
        raise ComplianceError(f"match.metadata: an object of at most {MAX_METADATA_KEYS} keys")
    metadata: list[tuple[str, tuple[str, ...]]] = []
    for key, value in sorted(metadata_raw.items()):
        values = value if isinstance(value, list) else [value]
        if (not isinstance(key, str) or not key.strip() or len(key) > 100
                or not values or len(values) > MAX_PATTERNS
                or not all(isinstance(v, str) and v.strip() and len(v) <= 200 for v in values)):
            raise ComplianceError("match.metadata: each key names one or more values of 1 to "
                                  "200 characters")
        metadata.append((key.strip().lower(),
                         tuple(dict.fromkeys(v.strip().lower() for v in values))))
    return PolicyMatch(numbers, aors, direction, tuple(metadata))


@dataclass(frozen=True, slots=True)
class Policy:
    id: UUID
    name: str
    days: int
    match: PolicyMatch = field(default_factory=PolicyMatch)
    legal_obligation: bool = False
    """A duty to keep (refuses a data subject's erasure until the end: Art. 17(3)(b))."""
    basis: str | None = None
    """The law or decision behind it, for the erasure report."""
    preset: str | None = None


def preset_policy(policy_id: UUID, name: str | None, preset: str,
                  match: PolicyMatch) -> Policy:
    known = PRESETS.get(preset)
    if known is None:
        raise ComplianceError(f"preset: one of {', '.join(PRESETS)}")
    return Policy(policy_id, name or preset, known.days, match, known.legal_obligation,
                  known.basis, preset)


@dataclass(frozen=True, slots=True)
class RetentionLimits:
    default_days: int = 365
    floor_days: int = 0
    """No recording is erased by retention before this many days, whatever the policies."""
    ceiling_days: int = 3650
    """No policy keeps a recording longer (ten years)."""

    def __post_init__(self) -> None:
        if not 0 <= self.floor_days <= self.ceiling_days:
            raise ComplianceError("retention: need 0 <= floor_days <= ceiling_days")
        if not self.default_days >= 1:
            raise ComplianceError("retention.default_days: at least 1")

    def clamp(self, days: int) -> int:
        return max(self.floor_days, min(days, self.ceiling_days))

    def check_days(self, days: object) -> int:
        """A policy's days as given by a user: an integer within [floor, ceiling]."""
        if isinstance(days, bool) or not isinstance(days, int):
            raise ComplianceError("days: an integer")
        if not max(1, self.floor_days) <= days <= self.ceiling_days:
            raise ComplianceError(f"days: between {max(1, self.floor_days)} (the floor) and "
                                  f"{self.ceiling_days} (the ceiling)")
        return days

    @property
    def minimum_days(self) -> int:
        """What every recording is kept at least: the default applies to all."""
        return self.clamp(self.default_days)


@dataclass(frozen=True, slots=True)
class RecordingFacts:
    """What retention decides on, of one recording."""

    recording_id: UUID
    started_at: datetime
    numbers: frozenset[str] = frozenset()
    aors: frozenset[str] = frozenset()
    direction: str | None = None
    metadata: Mapping[str, Sequence[str]] = field(default_factory=dict)


def _matches(match: PolicyMatch, facts: RecordingFacts) -> bool:
    if match.numbers or match.aors:
        hit = any(matches_number(p, n) for p in match.numbers for n in facts.numbers) or any(
            matches_aor(g, a) for g in match.aors for a in facts.aors)
        if not hit:
            return False
    if match.direction is not None and facts.direction != match.direction:
        return False
    for key, accepted in match.metadata:
        present = {v.lower() for v in facts.metadata.get(key, ())}
        if not present.intersection(accepted):
            return False
    return True


def matches_recording(match: PolicyMatch, facts: RecordingFacts) -> bool:
    """Whether `match` covers the recording these facts describe (recording rules match the
    same way: compliance/rules.py)."""
    return _matches(match, facts)


def matching_policies(facts: RecordingFacts, policies: Iterable[Policy]) -> list[Policy]:
    return [p for p in policies if _matches(p.match, facts)]


def governing_policy(facts: RecordingFacts, policies: Iterable[Policy],
                     limits: RetentionLimits) -> Policy | None:
    """The matching policy that keeps the recording longest, when it keeps it longer than the
    default (ties: the earlier id, so dry run and run name the same one)."""
    best: Policy | None = None
    for policy in sorted(matching_policies(facts, policies), key=lambda p: (-p.days, str(p.id))):
        best = policy
        break
    if best is None or limits.clamp(best.days) <= limits.minimum_days:
        return None
    return best


@dataclass(frozen=True, slots=True)
class Expiry:
    at: datetime
    days: int
    policy: Policy | None
    """The policy that sets it; None for the default (or the floor)."""


def expiry_of(facts: RecordingFacts, policies: Iterable[Policy],
              limits: RetentionLimits) -> Expiry:
    """When retention erases this recording: started_at + the longest matching retention."""
    policy = governing_policy(facts, policies, limits)
    days = limits.clamp(policy.days) if policy is not None else limits.minimum_days
    return Expiry(facts.started_at + timedelta(days=days), days, policy)


@dataclass(frozen=True, slots=True)
class Obligation:
    """A duty to keep one recording: the policy and when it ends."""

    policy: Policy
    until: datetime


def obligations_of(facts: RecordingFacts, policies: Iterable[Policy], limits: RetentionLimits,
                   now: datetime) -> list[Obligation]:
    """The legal obligations still keeping this recording at `now`, longest first."""
    found = [
        Obligation(p, facts.started_at + timedelta(days=limits.clamp(p.days)))
        for p in matching_policies(facts, policies) if p.legal_obligation
    ]
    return sorted((o for o in found if o.until > now), key=lambda o: o.until, reverse=True)


def change_needs_approval(old: Policy, new: Policy | None) -> bool:
    """Whether a change could keep anything for less time than before (new None: deletion).
    Such a change waits for a second user; anything that only lengthens applies at once."""
    if new is None:
        return True
    return (new.days < old.days or new.match != old.match
            or (old.legal_obligation and not new.legal_obligation))


def renamed(policy: Policy, **changes: Any) -> Policy:
    return replace(policy, **changes)


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise ComplianceError(f"name: 1 to {MAX_NAME_LENGTH} characters")
    return name.strip()
