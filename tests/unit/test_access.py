"""Roles, scopes and their SQL, password hashing, login throttling rules and token format
(siprec_server.access); scope SQL runs against a real PostgreSQL."""

from __future__ import annotations

import random
import re
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siprec_server.access import (
    DEFAULT_PASSWORD_HASHING,
    ROLES,
    AccessError,
    LoginPolicy,
    PasswordHashing,
    Permission,
    Principal,
    Role,
    generate_password,
    new_api_token,
    scope_filter,
    token_digest,
    validate_password,
    validate_role,
    validate_scope,
    validate_scopes,
    validate_username,
)
from siprec_server.numbers import normalize_number

CHEAP = PasswordHashing(time_cost=1, memory_kib=8 * 1024, parallelism=1)


def principal(role: str, *scopes: str) -> Principal:
    return Principal.of(uuid.uuid4(), f"user-{role}", role, validate_scopes(list(scopes)))


# --- roles ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("admin", {"search", "play", "export", "delete", "pause", "audit.read", "users.manage",
                   "keys.manage", "retention.manage", "holds.manage", "subjects.manage",
                   "annotate", "restricted", "rules.manage", "opt_out",
                   "deliveries.manage"}),
        ("supervisor", {"search", "play", "export", "pause", "annotate"}),
        ("auditor", {"search", "audit.read"}),
        ("agent", {"search", "play"}),
        ("integration", {"pause", "opt_out"}),
    ],
)
def test_each_role_has_exactly_the_permissions_of_the_issue(role: str, allowed: set[str]) -> None:
    who = principal(role)
    for permission in Permission:
        assert who.can(permission) is (permission.value in allowed), (role, permission)
        assert who.can(permission.value) is (permission.value in allowed)


def test_auditor_never_hears_a_call_and_integration_only_controls_calls() -> None:
    assert not principal("auditor").can("play")
    assert not principal("auditor").can("export")
    assert ROLES[Role.INTEGRATION] == frozenset({Permission.PAUSE, Permission.OPT_OUT})


def test_unknown_roles_and_permissions_grant_nothing() -> None:
    with pytest.raises(AccessError):
        validate_role("root")
    with pytest.raises(AccessError):
        validate_role(None)
    with pytest.raises(AccessError):
        Principal.of(uuid.uuid4(), "x", "superuser", ())
    assert not principal("admin").can("delete_everything")


def test_agents_without_scope_see_nothing_others_are_unrestricted() -> None:
    assert principal("agent").sees_nothing
    assert not principal("agent").unrestricted
    assert not principal("agent", "2001").sees_nothing
    assert principal("supervisor").unrestricted
    assert not principal("supervisor", "2001").unrestricted


# --- scope patterns ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("+4420794600*", "+4420794600*"),
        ("2001", "2001"),
        ("0044 20 7946 00*", "+4420794600*"),
        ("00442079460000", "+442079460000"),
        ("+44 (20) 7946-0000", "+442079460000"),
        ("2*", "2*"),
        ("sip:*@sales.example.com", "sip:*@sales.example.com"),
        ("SIP:*@Sales.Example.COM", "sip:*@sales.example.com"),
        ("*@sales.example.com", "*@sales.example.com"),
        ("tel:+4420*", "tel:+4420*"),
        ("  2001  ", "2001"),
    ],
)
def test_valid_scope_patterns_are_kept_in_canonical_form(text: str, canonical: str) -> None:
    assert validate_scope(text) == canonical


@pytest.mark.parametrize(
    "text",
    ["", "*", "+*", "1", "20*01", "abc", "2001**", "sip:alice smith@host", "sip:a@b@c",
     "x" * 300 + "@host", "+44\u0662", "sip:\u00e9@host", "\x00", "20 01 x", "::"],
)
def test_bad_scope_patterns_are_refused(text: str) -> None:
    with pytest.raises(AccessError):
        validate_scope(text)


def test_scope_lists_are_validated_and_deduplicated() -> None:
    assert validate_scopes(["2001", "2001", "+44*"]) == ("2001", "+44*")
    for bad in ("2001", [2001], [None], {"a": 1}, ["2001"] * 101 + ["1"]):
        with pytest.raises(AccessError):
            validate_scopes(bad)
    with pytest.raises(AccessError):
        validate_scopes([f"{n:04d}" for n in range(101)])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.one_of(st.text(max_size=40), st.from_regex(r"\+?[0-9 ]{1,12}\*?", fullmatch=True)))
def test_scope_validation_only_ever_raises_access_error_and_is_idempotent(text: str) -> None:
    try:
        canonical = validate_scope(text)
    except AccessError:
        return
    assert validate_scope(canonical) == canonical


def test_number_pattern_matches_what_normalize_number_stores() -> None:
    # An operator typing the national-international form reaches the stored +form.
    pattern = validate_scope("0044207946*")
    assert normalize_number("sip:00442079460012@sbc") is not None
    assert normalize_number("sip:00442079460012@sbc").startswith(pattern.rstrip("*"))  # type: ignore[union-attr]


# --- scope_filter SQL -------------------------------------------------------------------------


async def add_recording(db: asyncpg.Pool, call_id: str, *aors: str) -> None:
    recording_id = uuid.uuid4()
    await db.execute(
        """INSERT INTO recordings (id, node_id, call_id, state, started_at, transport,
                                   src_address)
           VALUES ($1, 'n1', $2, 'complete', $3, 'udp', '192.0.2.1:5060')""",
        recording_id, call_id, datetime(2025, 1, 1, tzinfo=UTC),
    )
    for index, aor in enumerate(aors):
        await db.execute(
            """INSERT INTO participants (recording_id, participant_id, aor, present, number)
               VALUES ($1, $2, $3, true, $4)""",
            recording_id, f"p{index}", aor, normalize_number(aor),
        )


async def visible(db: asyncpg.Pool, who: Principal) -> list[str]:
    # Two parameters of the caller's own come first: the filter must number after them.
    expr, params = scope_filter(who, "p", 3)
    rows = await db.fetch(
        f"""SELECT r.call_id FROM recordings r
            WHERE r.state = $1 AND r.node_id = $2
              AND EXISTS (SELECT 1 FROM participants p WHERE p.recording_id = r.id AND {expr})
            ORDER BY r.call_id""",
        "complete", "n1", *params,
    )
    return [row["call_id"] for row in rows]


@pytest.fixture
async def calls(db_pool: asyncpg.Pool) -> asyncpg.Pool:
    await add_recording(db_pool, "london", "tel:+442079460012", "sip:7001@pbx.example.com")
    await add_recording(db_pool, "london-other", "sip:+442079469999@carrier.example.net")
    await add_recording(db_pool, "ext2001", "sip:2001@pbx.example.com", "sip:+15551234567@c.net")
    await add_recording(db_pool, "ext20011", "sip:20011@pbx.example.com")
    await add_recording(db_pool, "sales", "sip:alice@sales.example.com", "tel:+15550000001")
    await add_recording(db_pool, "sales-tls", "sips:bob@Sales.Example.com")
    await add_recording(db_pool, "presales", "sip:carol@presales.example.com")
    await add_recording(db_pool, "lab-digit", "sip:1000@lab.example.com")
    await add_recording(db_pool, "lab-underscore", "sip:100_@lab.example.com")
    await add_recording(db_pool, "lab-percent", "sip:100%@lab.example.com")
    await add_recording(db_pool, "no-parties")
    return db_pool


EVERYTHING = ["ext2001", "ext20011", "lab-digit", "lab-percent", "lab-underscore", "london",
              "london-other", "presales", "sales", "sales-tls"]


async def test_unrestricted_roles_see_every_recording_with_participants(
    calls: asyncpg.Pool,
) -> None:
    assert scope_filter(principal("supervisor"), "p", 1) == ("TRUE", [])
    assert await visible(calls, principal("supervisor")) == EVERYTHING
    assert await visible(calls, principal("auditor")) == EVERYTHING


async def test_an_agent_without_scope_sees_nothing(calls: asyncpg.Pool) -> None:
    assert scope_filter(principal("agent"), "p", 1) == ("FALSE", [])
    assert await visible(calls, principal("agent")) == []


async def test_exact_number_scope_matches_only_that_extension(calls: asyncpg.Pool) -> None:
    assert await visible(calls, principal("agent", "2001")) == ["ext2001"]


async def test_number_prefix_scope_matches_a_line_range(calls: asyncpg.Pool) -> None:
    assert await visible(calls, principal("agent", "+4420794600*")) == ["london"]
    assert await visible(calls, principal("agent", "0044 2079 46*")) == ["london", "london-other"]
    assert await visible(calls, principal("agent", "2001*")) == ["ext2001", "ext20011"]


async def test_aor_glob_scope_matches_a_domain_case_insensitively_sip_and_sips(
    calls: asyncpg.Pool,
) -> None:
    assert await visible(calls, principal("agent", "sip:*@sales.example.com")) == [
        "sales", "sales-tls"]
    assert await visible(calls, principal("agent", "*@sales.example.com")) == [
        "sales", "sales-tls"]
    assert await visible(calls, principal("agent", "sips:bob@sales.example.com")) == [
        "sales-tls"]


async def test_like_wildcards_in_a_pattern_are_literal(calls: asyncpg.Pool) -> None:
    assert await visible(calls, principal("agent", "sip:100_@lab.example.com")) == [
        "lab-underscore"]
    assert await visible(calls, principal("agent", "sip:100%@lab.example.com")) == [
        "lab-percent"]
    assert await visible(calls, principal("agent", "sip:100*@lab.example.com")) == [
        "lab-digit", "lab-percent", "lab-underscore"]


async def test_several_patterns_of_both_kinds_combine_with_or(calls: asyncpg.Pool) -> None:
    who = principal("supervisor", "2001", "+1555000000*", "sip:carol@presales.example.com")
    assert await visible(calls, who) == ["ext2001", "presales", "sales"]


def test_scope_filter_refuses_an_alias_that_is_not_an_identifier() -> None:
    who = principal("agent", "2001")
    for alias in ("p; DROP TABLE users", "", "1p", "p.q"):
        with pytest.raises(AccessError):
            scope_filter(who, alias, 1)
    with pytest.raises(AccessError):
        scope_filter(who, "p", 0)


def _glob_regex(glob: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in glob.split("*")), re.IGNORECASE)


async def test_aor_globs_match_in_sql_exactly_as_a_glob_would(db_pool: asyncpg.Pool) -> None:
    """Random globs full of LIKE's metacharacters against near-miss AORs: PostgreSQL agrees
    with a plain glob matcher on every pair."""
    rng = random.Random(7866)
    alphabet = "ab1%_\\.*"
    checked = 0
    async with db_pool.acquire() as conn:
        for _ in range(200):
            user = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
            glob = validate_scope(f"tel:{user}@h")
            aor = "tel:" + "".join(
                rng.choice("ab1%_\\.") if ch == "*" else ch for ch in glob[4:]
            )
            if rng.random() < 0.5:  # a near miss
                i = rng.randrange(4, len(aor))
                aor = aor[:i] + rng.choice("ab1%_\\.") + aor[i + 1:]
            expr, params = scope_filter(principal("agent", glob), "p", 1)
            got = await conn.fetchval(
                f"SELECT {expr} FROM (SELECT $2::text AS aor, NULL::text AS number) p",
                *params, aor,
            )
            assert got is bool(_glob_regex(glob).fullmatch(aor)), (glob, aor)
            checked += 1
    assert checked == 200


# --- users and passwords ----------------------------------------------------------------------


def test_usernames_and_passwords_are_checked() -> None:
    assert validate_username("j.smith@cc-1") == "j.smith@cc-1"
    for bad in ("", " alice", "al ice", "a" * 65, "-x", None, 7, "bob\n"):
        with pytest.raises(AccessError):
            validate_username(bad)
    assert validate_password("twelve chars") == "twelve chars"
    for bad_password in ("short", "x" * 1025, None, b"bytes-password", "twelve\x00chars"):
        with pytest.raises(AccessError):
            validate_password(bad_password)


def test_password_hashes_are_argon2id_and_verify_only_the_right_password() -> None:
    stored = CHEAP.hash("correct horse battery")
    assert stored.startswith("$argon2id$")
    assert "correct horse" not in stored
    assert CHEAP.verify(stored, "correct horse battery")
    assert not CHEAP.verify(stored, "correct horse batter")
    assert not CHEAP.verify("not a hash", "correct horse battery")
    assert not CHEAP.verify("", "x")


def test_default_hashing_is_rfc9106_low_memory_and_old_hashes_ask_for_an_upgrade() -> None:
    assert DEFAULT_PASSWORD_HASHING.hash("correct horse battery").startswith(
        "$argon2id$v=19$m=65536,t=3,p=4$"
    )
    assert DEFAULT_PASSWORD_HASHING.needs_rehash(CHEAP.hash("correct horse battery"))
    assert not CHEAP.needs_rehash(CHEAP.hash("correct horse battery"))
    assert DEFAULT_PASSWORD_HASHING.needs_rehash("garbage")


# --- login policy -----------------------------------------------------------------------------


def test_failed_logins_are_slowed_by_doubling_delays_up_to_a_cap() -> None:
    policy = LoginPolicy(delay_base_s=0.25, delay_max_s=4.0)
    assert [policy.failure_delay(n) for n in range(0, 8)] == [0, 0.25, 0.5, 1, 2, 4, 4, 4]
    assert policy.failure_delay(10**6) == 4.0
    assert LoginPolicy(delay_base_s=0).failure_delay(5) == 0


def test_lockout_defaults_meet_pci_dss_and_locks_expire() -> None:
    policy = LoginPolicy()
    assert policy.max_failures <= 10 and policy.lockout >= timedelta(minutes=30)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert policy.is_locked(now + timedelta(seconds=1), now)
    assert not policy.is_locked(now, now)
    assert not policy.is_locked(None, now)


# --- tokens -----------------------------------------------------------------------------------


def test_tokens_are_256_random_bits_and_only_their_digest_is_kept() -> None:
    tokens = {new_api_token() for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    assert re.fullmatch(r"srs_[A-Za-z0-9_\-]{43}", token)
    digest = token_digest(token)
    assert len(digest) == 32 and digest == token_digest(token)
    assert token.encode() not in digest
    for bad in ("", "srs_", token + "x", token[:-1] + "=", "Bearer " + token, "srs_" + "é" * 43):
        with pytest.raises(AccessError):
            token_digest(bad)


@pytest.mark.parametrize("password, why", [
    ("password1234", "commonly used"),
    ("Password123456", "too easy to guess"),
    ("qwertyuiop123", "commonly used"),
    ("111111111111", "too easy to guess"),
    ("ada-lovelace-2026", "user name"),
])
def test_common_weak_or_personal_passwords_are_refused(password: str, why: str) -> None:
    with pytest.raises(AccessError, match=why):
        validate_password(password, username="ada-lovelace")


def test_long_unrelated_passphrases_and_generated_passwords_pass() -> None:
    for password in ("correct horse battery staple", "orbit velvet canal 1987",
                     generate_password()):
        assert validate_password(password, username="ada") == password
