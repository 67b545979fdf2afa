"""Number patterns and AOR globs as retention policies and legal holds use them: the same
spelling as user scopes (siprec_server/access.py) — digits with an optional leading `+` and an
optional trailing `*`, or an AOR glob containing `:` or `@` whose only wildcard is `*`.

`matches_number` / `matches_aor` are the reference semantics; storage renders the same patterns
as SQL LIKE (storage/retention.py) and a test keeps the two in step."""

from __future__ import annotations

import re
from collections.abc import Iterable

from siprec_server.access import AccessError, is_number_pattern, validate_scope
from siprec_server.compliance import ComplianceError

__all__ = ["aor_variants", "matches_aor", "matches_number", "split_patterns"]


def split_patterns(values: Iterable[object]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Canonical (number patterns, AOR globs) of a list of patterns; ComplianceError for one
    that is neither."""
    numbers: dict[str, None] = {}
    aors: dict[str, None] = {}
    for value in values:
        try:
            pattern = validate_scope(value)
        except AccessError as exc:
            raise ComplianceError(str(exc)) from None
        (numbers if is_number_pattern(pattern) else aors)[pattern] = None
    return tuple(numbers), tuple(aors)


def aor_variants(glob: str) -> list[str]:
    """sip: and sips: name the same party; a glob without a scheme means either."""
    glob = glob.lower()
    scheme, colon, rest = glob.partition(":")
    if colon and "@" in glob and glob.index(":") > glob.index("@"):
        colon = ""
    if not colon:
        return [f"sip:{glob}", f"sips:{glob}"]
    if scheme in ("sip", "sips"):
        return [f"sip:{rest}", f"sips:{rest}"]
    return [glob]


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def matches_number(pattern: str, number: str | None) -> bool:
    if number is None:
        return False
    return _glob(pattern).fullmatch(number) is not None


def matches_aor(glob: str, aor: str | None) -> bool:
    if aor is None:
        return False
    value = aor.lower()
    return any(_glob(v).fullmatch(value) is not None for v in aor_variants(glob))
