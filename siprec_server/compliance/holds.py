"""Legal holds: a matter keeps recordings from being erased by any path (retention, a data
subject's request, a user) until it is released by two users. Members are explicit recordings
or a saved search whose future matches are held too; this module validates such a search."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from siprec_server.compliance import ComplianceError
from siprec_server.numbers import normalize_number
from siprec_server.siprec.metadata import normalize_aor

__all__ = ["HoldQuery", "parse_hold_query", "parse_text"]

MAX_VALUES = 20
MAX_TEXT = 256
_KEYS = frozenset({"participant", "number", "aor", "name", "call_id", "session_id", "from",
                   "to", "tag"})


@dataclass(frozen=True, slots=True)
class HoldQuery:
    """The search filters a hold keeps (all must hold, like a search)."""

    numbers: tuple[str, ...] = ()
    aors: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    call_id: str | None = None
    session_id: str | None = None
    started_from: datetime | None = None
    started_to: datetime | None = None
    tags: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return self == HoldQuery()

    def as_dict(self) -> dict[str, Any]:
        view: dict[str, Any] = {}
        for key, value in (("number", list(self.numbers)), ("aor", list(self.aors)),
                           ("name", list(self.names)), ("tag", list(self.tags))):
            if value:
                view[key] = value
        if self.call_id is not None:
            view["call_id"] = self.call_id
        if self.session_id is not None:
            view["session_id"] = self.session_id
        if self.started_from is not None:
            view["from"] = self.started_from.isoformat()
        if self.started_to is not None:
            view["to"] = self.started_to.isoformat()
        return view


def parse_text(name: str, value: object, max_length: int = MAX_TEXT) -> str:
    if (not isinstance(value, str) or not value.strip() or len(value) > max_length
            or "\x00" in value):
        raise ComplianceError(f"{name}: 1 to {max_length} characters")
    return value.strip()


def _list(raw: Mapping[str, Any], key: str) -> list[str]:
    value = raw.get(key)
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if len(values) > MAX_VALUES:
        raise ComplianceError(f"query.{key}: at most {MAX_VALUES} values")
    return [parse_text(f"query.{key}", v) for v in values]


def _time(raw: Mapping[str, Any], key: str) -> datetime | None:
    value = raw.get(key)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(parse_text(f"query.{key}", value, 64))
    except ValueError:
        raise ComplianceError(f"query.{key}: an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise ComplianceError(f"query.{key}: the timestamp needs a time zone")
    return parsed


def parse_hold_query(raw: object) -> HoldQuery:
    """The saved search of a hold, from the search filters' JSON form: {"participant": "...",
    "aor", "name", "call_id", "session_id", "from", "to", "tag"}; a participant is a number
    when it holds one, in any spelling, else an AOR."""
    if not isinstance(raw, Mapping):
        raise ComplianceError("query: expected an object of search filters")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ComplianceError(f"query: unknown filters {', '.join(unknown)[:100]}")
    numbers: list[str] = []
    aors: list[str] = []
    for value in _list(raw, "participant"):
        number = normalize_number(value)
        if number is not None:
            numbers.append(number)
        else:
            aors.append(normalize_aor(value).lower())
    for value in _list(raw, "number"):
        number = normalize_number(value)
        if number is None:
            raise ComplianceError("query.number: not a phone number")
        numbers.append(number)
    aors += [normalize_aor(v).lower() for v in _list(raw, "aor")]
    names = _list(raw, "name")
    if any(len(n) < 3 for n in names):
        raise ComplianceError("query.name: at least 3 characters")
    call_ids = _list(raw, "call_id")
    session_ids = _list(raw, "session_id")
    if len(call_ids) > 1 or len(session_ids) > 1:
        raise ComplianceError("query: one call_id and one session_id at most")
    query = HoldQuery(
        numbers=tuple(dict.fromkeys(numbers)), aors=tuple(dict.fromkeys(aors)),
        names=tuple(names), call_id=call_ids[0] if call_ids else None,
        session_id=session_ids[0] if session_ids else None,
        started_from=_time(raw, "from"), started_to=_time(raw, "to"),
        tags=tuple(dict.fromkeys(t.lower() for t in _list(raw, "tag"))),
    )
    if query.is_empty():
        raise ComplianceError("query: at least one filter (a hold on everything is a "
                              "retention policy, not a matter)")
    if query.started_from and query.started_to and query.started_from >= query.started_to:
        raise ComplianceError("query: from must be before to")
    return query
