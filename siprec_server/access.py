"""Who may do what: roles and their permissions, the authenticated `Principal`, user scopes
(which recordings a user may see at all) rendered as SQL, login throttling rules, API token
format and password hashing.

Sans-IO: no database, no clock. Callers pass `now` and run the (CPU-bound) password hashing
off the event loop.

Scopes restrict a user to lines, extensions or groups. A scope pattern is either
- a number pattern: digits with an optional leading `+` and an optional trailing `*`
  ("+4420794600*", "2001"), compared with the participants' `number` column, which holds
  `normalize_number()` of their AOR; or
- an AOR glob containing `:` or `@` ("sip:*@sales.example.com"), compared case-insensitively
  with the participants' normalised `aor`; `*` is the only wildcard and `sip:`/`sips:` are the
  same address.
A recording is in scope when any of its participants matches any of the user's patterns. No
patterns means unrestricted, except for agents, who then see nothing.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from siprec_server.numbers import normalize_number

__all__ = [
    "DEFAULT_PASSWORD_HASHING",
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "ROLES",
    "AccessError",
    "LoginPolicy",
    "PasswordHashing",
    "Permission",
    "Principal",
    "Role",
    "generate_password",
    "is_number_pattern",
    "new_api_token",
    "scope_filter",
    "token_digest",
    "validate_password",
    "validate_role",
    "validate_scope",
    "validate_scopes",
    "validate_username",
]


class AccessError(ValueError):
    """A role, scope pattern, username, password or token that is not acceptable."""


class Permission(StrEnum):
    SEARCH = "search"
    PLAY = "play"
    EXPORT = "export"
    DELETE = "delete"
    PAUSE = "pause"
    AUDIT_READ = "audit.read"
    USERS_MANAGE = "users.manage"
    KEYS_MANAGE = "keys.manage"
    RETENTION_MANAGE = "retention.manage"
    """Retention policies and runs (a shortening change still needs a second holder)."""
    HOLDS_MANAGE = "holds.manage"
    """Legal holds (releasing one needs a second holder)."""
    SUBJECTS_MANAGE = "subjects.manage"
    """Data-subject requests: finding everything of a person, bundles, erasure."""
    ANNOTATE = "annotate"
    """Tags, comments and flags on recordings the user can see."""


class Role(StrEnum):
    ADMIN = "admin"
    SUPERVISOR = "supervisor"
    AUDITOR = "auditor"
    AGENT = "agent"
    INTEGRATION = "integration"
    CUSTODIAN = "custodian"


P = Permission
ROLES: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    # Quality reviewers tag, comment on and flag the calls they listen to. Retention, holds and
    # subject requests change what the company keeps or hands over: compliance officers'
    # (admin) decisions, each dangerous one needing a second admin.
    Role.SUPERVISOR: frozenset({P.SEARCH, P.PLAY, P.EXPORT, P.PAUSE, P.ANNOTATE}),
    # Reviews who did what and which recordings exist; never hears a call.
    Role.AUDITOR: frozenset({P.SEARCH, P.AUDIT_READ}),
    # Own recordings only: what "own" means is the agent's scope.
    Role.AGENT: frozenset({P.SEARCH, P.PLAY}),
    # Payment gateways and CRMs pausing recording while card data is spoken.
    Role.INTEGRATION: frozenset({P.PAUSE}),
    # Holds a share of the master key and approves key ceremonies (dual control); hears no
    # call and manages no account (split of duties, PCI DSS 3.6.1.2).
    Role.CUSTODIAN: frozenset({P.KEYS_MANAGE}),
}
del P


def validate_role(text: object) -> Role:
    if isinstance(text, str):
        try:
            return Role(text)
        except ValueError:
            pass
    raise AccessError(f"unknown role {text!r} (known: {', '.join(r.value for r in Role)})")


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of a request."""

    user_id: UUID
    username: str
    role: Role
    permissions: frozenset[Permission]
    scopes: tuple[str, ...] = ()
    """Canonical scope patterns (validate_scope); empty = unrestricted, except for agents."""

    @classmethod
    def of(cls, user_id: UUID, username: str, role: str, scopes: Iterable[str]) -> Principal:
        """The principal of a stored user; its permissions come from the role table."""
        known = validate_role(role)
        return cls(user_id, username, known, ROLES[known], tuple(scopes))

    def can(self, permission: str) -> bool:
        return permission in self.permissions

    @property
    def unrestricted(self) -> bool:
        """Sees every recording (no scope patterns, and not an agent)."""
        return not self.scopes and self.role is not Role.AGENT

    @property
    def sees_nothing(self) -> bool:
        """An agent without a scope: no recording is theirs."""
        return not self.scopes and self.role is Role.AGENT


# --- scopes -----------------------------------------------------------------------------------

_VISUAL = re.compile(r"[\s\-.()/]")
_NUMBER_PATTERN = re.compile(r"\+?[0-9]{1,20}\*?")
_AOR_GLOB = re.compile(r"[\x21-\x7e]{3,256}")
_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_MAX_SCOPES = 100


def is_number_pattern(pattern: str) -> bool:
    return ":" not in pattern and "@" not in pattern


def validate_scope(text: object) -> str:
    """The canonical form of one scope pattern; AccessError when it is neither a number pattern
    nor an AOR glob."""
    if not isinstance(text, str):
        raise AccessError(f"a scope pattern must be a string, got {type(text).__name__}")
    value = text.strip()
    if ":" in value or "@" in value:
        if not _AOR_GLOB.fullmatch(value) or value.count("@") > 1:
            raise AccessError(
                "an AOR scope must be 3 to 256 printable characters without spaces, "
                "like sip:*@sales.example.com"
            )
        return value.lower()
    compact = _VISUAL.sub("", value)
    if not _NUMBER_PATTERN.fullmatch(compact):
        raise AccessError(
            f"scope {text[:40]!r} is neither a number pattern (digits, optional leading +, "
            "optional trailing *) nor an AOR glob containing ':' or '@'"
        )
    prefix = compact.endswith("*")
    digits = compact.removesuffix("*")
    if not prefix and len(digits.lstrip("+")) < 2:
        raise AccessError("a number scope without * needs at least two digits")
    # The same rewrite normalize_number applies to the participants' numbers (00 -> +).
    if prefix:
        if digits.startswith("00") and len(digits) > 2:
            digits = "+" + digits[2:]
        return digits + "*"
    return normalize_number(digits) or digits


def validate_scopes(values: object) -> tuple[str, ...]:
    """A list of scope patterns: canonical, without duplicates, in the given order."""
    if not isinstance(values, list | tuple):
        raise AccessError("scopes must be a list of patterns")
    if len(values) > _MAX_SCOPES:
        raise AccessError(f"at most {_MAX_SCOPES} scope patterns per user")
    seen: dict[str, None] = {}
    for value in values:
        seen[validate_scope(value)] = None
    return tuple(seen)


def _like_literal(text: str) -> str:
    """`text` with LIKE's own wildcards escaped (PostgreSQL's default escape is backslash),
    then our `*` as LIKE's `%`."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def _aor_variants(glob: str) -> list[str]:
    """sip: and sips: name the same party; a glob without a scheme means sip/sips."""
    scheme, colon, rest = glob.partition(":")
    if colon and "@" in glob and glob.index(":") > glob.index("@"):
        colon = ""  # "alice@host:5060": the colon belongs to the port, there is no scheme
    if not colon:
        return [f"sip:{glob}", f"sips:{glob}"]
    if scheme in ("sip", "sips"):
        return [f"sip:{rest}", f"sips:{rest}"]
    return [glob]


def _prefix_end(prefix: str) -> str:
    """The least string above every string that starts with `prefix`, in byte order (the order
    of text_pattern_ops' ~<~): the prefix with its last character moved up by one. Patterns are
    printable ASCII, so the last character is never U+10FFFF."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class _PatternTerms:
    """One column's patterns as OR-ed terms that a btree index with text_pattern_ops serves,
    all their values in ONE text[] parameter (element i is `($n::text[])[i]`).

    LIKE ANY (array) can use no index, so the planner had to test every participant; each term
    here starts with an equality or a range, which it can turn into index bounds (a BitmapOr
    over the terms, or an index range scan ordered by started_at for a single number)."""

    def __init__(self, column: str, param: int) -> None:
        self.column = column
        self.param = param
        self.values: list[str] = []
        self.terms: list[str] = []

    def _value(self, text: str) -> str:
        self.values.append(text)
        return f"(${self.param}::text[])[{len(self.values)}]"

    def add(self, pattern: str) -> None:
        """A glob whose only wildcard is `*`."""
        col = self.column
        prefix, star, _ = pattern.partition("*")
        if not star:
            self.terms.append(f"{col} = {self._value(pattern)}")
            return
        conditions: list[str] = []
        if prefix:
            # Starts with the prefix <=> prefix <= value < prefix's successor (byte order).
            conditions.append(f"{col} ~>=~ {self._value(prefix)}")
            conditions.append(f"{col} ~<~ {self._value(_prefix_end(prefix))}")
        if pattern != prefix + "*":
            conditions.append(f"{col} LIKE {self._value(_like_literal(pattern))}")
        self.terms.append("(" + " AND ".join(conditions) + ")")


def scope_filter(
    principal: Principal, participants_table_alias: str, first_param: int
) -> tuple[str, list[object]]:
    """An SQL boolean expression over one row of `participants` (by its alias) that is true when
    that participant is within the principal's scope, and its parameters ($first_param, ...).

    TRUE (no parameters) for unrestricted principals, FALSE for agents without a scope. Use it
    inside EXISTS (SELECT 1 FROM participants p WHERE p.recording_id = r.id AND <expr>).

    The expression reads only the row's `number` and `aor`. It has at most two parameters, each
    a text[]: the number patterns' values, then the AOR globs' values. Every term is an
    equality or a byte-order range (text_pattern_ops' ~>=~ ~<~), LIKE only refining a range,
    so the participants indexes on number and lower(aor) can find the rows in scope.
    """
    if not _ALIAS.fullmatch(participants_table_alias):
        raise AccessError(f"not an SQL alias: {participants_table_alias!r}")
    if first_param < 1:
        raise AccessError("parameter numbers start at 1")
    if principal.sees_nothing:
        return "FALSE", []
    if principal.unrestricted:
        return "TRUE", []
    alias = participants_table_alias
    number_patterns = [s for s in principal.scopes if is_number_pattern(s)]
    aor_patterns = [
        v for s in principal.scopes if not is_number_pattern(s) for v in _aor_variants(s.lower())
    ]
    columns: list[_PatternTerms] = []
    for column, patterns in ((f"{alias}.number", number_patterns),
                             (f"lower({alias}.aor)", aor_patterns)):
        if patterns:
            terms = _PatternTerms(column, first_param + len(columns))
            for pattern in dict.fromkeys(patterns):
                terms.add(pattern)
            columns.append(terms)
    return (
        "(" + " OR ".join(t for c in columns for t in c.terms) + ")",
        [c.values for c in columns],
    )


# --- users and passwords ----------------------------------------------------------------------

MIN_PASSWORD_LENGTH = 12  # PCI DSS 4.0 8.3.6
MAX_PASSWORD_LENGTH = 1024  # hashing a megabyte per attempt would be a cheap denial of service
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+\-]{0,63}")


def validate_username(text: object) -> str:
    if not isinstance(text, str) or not _USERNAME.fullmatch(text):
        raise AccessError(
            "a username is 1 to 64 characters: letters, digits and . _ @ + - "
            "(starting with a letter or digit)"
        )
    return text


def validate_password(text: object, *, username: str | None = None) -> str:
    """PCI DSS 8.3.6 and NIST SP 800-63B 5.1.1.2: at least 12 characters, not a commonly used
    or easily guessed password (zxcvbn's list of 30,000 common passwords and its estimate of the
    guesses needed), and not the account's own name."""
    if not isinstance(text, str):
        raise AccessError("the password must be a string")
    if not MIN_PASSWORD_LENGTH <= len(text) <= MAX_PASSWORD_LENGTH:
        raise AccessError(
            f"a password needs {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"
        )
    if "\x00" in text:
        raise AccessError("the password must not contain NUL")
    folded = text.casefold()
    if folded in _common_passwords():
        raise AccessError("this password is one of the most commonly used: choose another")
    if username and len(username) >= 3 and username.casefold() in folded:
        raise AccessError("the password must not contain the user name")
    from zxcvbn import zxcvbn  # imported here: its dictionaries take a moment to load

    estimate = zxcvbn(text[:100], user_inputs=[username] if username else [])
    if estimate["score"] < MIN_PASSWORD_SCORE:
        hint = estimate["feedback"].get("warning") or "it would be guessed quickly"
        raise AccessError(f"this password is too easy to guess ({hint.rstrip('.')}); "
                          "a few unrelated words make a strong one")
    return text


MIN_PASSWORD_SCORE = 3
"""zxcvbn's 0-4 scale; 3 = "safely unguessable: moderate protection from offline attacks"."""


@functools.cache
def _common_passwords() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(word.casefold() for word in FREQUENCY_LISTS["passwords"])


def generate_password() -> str:
    """A random password for a new account (about 144 bits), shown once."""
    return secrets.token_urlsafe(18)


@dataclass(frozen=True, slots=True)
class PasswordHashing:
    """Argon2id parameters. The default is RFC 9106's second recommendation (t=3, 64 MiB,
    4 lanes); a stored hash carries its own parameters, so changing them only affects new
    hashes, and `needs_rehash` tells the login to upgrade old ones."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 4
    _hasher: PasswordHasher = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "_hasher",
            PasswordHasher(
                time_cost=self.time_cost,
                memory_cost=self.memory_kib,
                parallelism=self.parallelism,
            ),
        )

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored_hash: str, password: str) -> bool:
        """False for a wrong password and for a stored value that is not an Argon2 hash."""
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except (InvalidHashError, ValueError):
            return True


DEFAULT_PASSWORD_HASHING = PasswordHashing()


# --- login throttling -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    """How failed logins are slowed and stopped.

    Per account: after `max_failures` consecutive failures the account is locked for
    `lockout` (PCI DSS 4.0 8.3.4: at most 10 attempts, at least 30 minutes). A locked account
    answers exactly like a wrong password. Per source address: after `source_max_failures`
    failures within `source_window` the address gets 429 for `source_block`. Every failed
    attempt is answered after `failure_delay(n)`, n being the larger of the two counts.
    """

    max_failures: int = 5
    lockout: timedelta = timedelta(minutes=30)
    source_max_failures: int = 30
    source_window: timedelta = timedelta(minutes=15)
    source_block: timedelta = timedelta(minutes=15)
    delay_base_s: float = 0.25
    delay_max_s: float = 4.0

    def failure_delay(self, failures: int) -> float:
        """Seconds to wait before answering the n-th consecutive failure: doubling from
        delay_base_s, capped at delay_max_s."""
        if failures < 1 or self.delay_base_s <= 0:
            return 0.0
        return min(self.delay_base_s * 2.0 ** min(failures - 1, 30), self.delay_max_s)

    def is_locked(self, locked_until: datetime | None, now: datetime) -> bool:
        return locked_until is not None and locked_until > now


# --- API tokens -------------------------------------------------------------------------------

TOKEN_PREFIX = "srs_"
_TOKEN = re.compile(r"srs_[A-Za-z0-9_\-]{43}")


def new_api_token() -> str:
    """A bearer token: 256 random bits, URL-safe; only its digest is ever stored."""
    raw = secrets.token_bytes(32)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def token_digest(token: str) -> bytes:
    """SHA-256 of a token as presented; AccessError when it cannot be one of ours."""
    if not _TOKEN.fullmatch(token):
        raise AccessError("not an API token")
    return hashlib.sha256(token.encode("ascii")).digest()
