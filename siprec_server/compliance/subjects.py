"""Data-subject requests (GDPR Art. 15 access, Art. 17 erasure): who the person is, in the
forms search compares, and the erasure plan that says for each of their recordings whether it
is erased or why it must be kept."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from siprec_server.compliance import ComplianceError
from siprec_server.compliance.holds import parse_text
from siprec_server.compliance.retention import Obligation
from siprec_server.numbers import normalize_number
from siprec_server.siprec.metadata import normalize_aor

__all__ = ["Decision", "RecordingStatus", "Subject", "parse_subject", "plan_erasure"]

KINDS = ("access", "erasure")


@dataclass(frozen=True, slots=True)
class Subject:
    """One person as the recordings know them: numbers (normalised, so every spelling finds
    the same party), AORs (lower-cased) and names (case-insensitive substrings)."""

    numbers: tuple[str, ...] = ()
    aors: tuple[str, ...] = ()
    names: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"numbers": list(self.numbers), "aors": list(self.aors),
                "names": list(self.names)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Subject:
        return cls(tuple(raw.get("numbers", ())), tuple(raw.get("aors", ())),
                   tuple(raw.get("names", ())))


def _values(raw: Mapping[str, Any], key: str) -> list[str]:
    value = raw.get(key)
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if len(values) > 20:
        raise ComplianceError(f"{key}: at most 20 values")
    return [parse_text(key, v) for v in values]


def parse_subject(raw: Mapping[str, Any]) -> Subject:
    """The person of a request: "participant" (a number in any format, or an AOR) and/or
    "name", each a string or a list; at least one."""
    numbers: list[str] = []
    aors: list[str] = []
    for value in _values(raw, "participant"):
        number = normalize_number(value)
        if number is not None:
            numbers.append(number)
        else:
            aors.append(normalize_aor(value).lower())
    names = _values(raw, "name")
    if any(len(n) < 3 for n in names):
        raise ComplianceError("name: at least 3 characters")
    if not (numbers or aors or names):
        raise ComplianceError("participant or name: who the request is about")
    return Subject(tuple(dict.fromkeys(numbers)), tuple(dict.fromkeys(aors)),
                   tuple(dict.fromkeys(names)))


@dataclass(frozen=True, slots=True)
class RecordingStatus:
    recording_id: UUID
    state: str
    held_by: Sequence[str]
    """Matters of the active legal holds on it."""
    obligations: Sequence[Obligation]
    """Legal obligations to keep it still running (retention_obligations)."""


@dataclass(frozen=True, slots=True)
class Decision:
    recording_id: UUID
    outcome: str
    """"erase", or "refused"."""
    reason: str | None = None
    """legal_hold | legal_obligation | recording_active | already_erased"""
    matter: str | None = None
    until: datetime | None = None
    basis: str | None = None

    def as_dict(self) -> dict[str, Any]:
        view: dict[str, Any] = {"recording_id": str(self.recording_id),
                                "outcome": self.outcome, "reason": self.reason}
        if self.matter is not None:
            view["matter"] = self.matter
        if self.until is not None:
            view["retained_until"] = self.until.isoformat()
        if self.basis is not None:
            view["basis"] = self.basis
        return view


def plan_erasure(status: RecordingStatus) -> Decision:
    """Erase unless something must keep it: a legal hold (its matter named) comes first, then a
    legal obligation to keep it (Art. 17(3)(b), with its end date), then a call still being
    recorded (erased once it ends, by a repeated request)."""
    rid = status.recording_id
    if status.state == "erased":
        return Decision(rid, "erased", "already_erased")
    if status.held_by:
        return Decision(rid, "refused", "legal_hold", matter=sorted(status.held_by)[0])
    if status.obligations:
        first = status.obligations[0]
        return Decision(rid, "refused", "legal_obligation", until=first.until,
                        basis=first.policy.basis or first.policy.name)
    if status.state in ("offered", "recording"):
        return Decision(rid, "refused", "recording_active")
    return Decision(rid, "erase")
