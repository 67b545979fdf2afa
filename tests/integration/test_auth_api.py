"""The identity part of the control API over real HTTP (aiohttp test server) and a real
database: logins and tokens, lock-out and throttling, users administration per role, the audit
reader, and hostile payloads. Every test ends by verifying the audit hash chain."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_api
from api.auth_api import setup_identity
from siprec_server.access import AccessError, LoginPolicy, PasswordHashing, token_digest
from siprec_server.services.accounts import ensure_bootstrap_admin
from storage import users
from storage.audit import verify_audit_chain

# Real argon2id, cheaper than production so that dozens of logins stay fast.
CHEAP = PasswordHashing(time_cost=1, memory_kib=8 * 1024, parallelism=1)
NO_DELAY = LoginPolicy(delay_base_s=0)
ADMIN_PASSWORD = "bootstrap secret of the tests"
PASSWORD = "a long enough password"

Client = TestClient[web.Request, web.Application]


class Api:
    """A test client plus the admin's token and shortcuts."""

    def __init__(self, client: Client, db: asyncpg.Pool) -> None:
        self.client = client
        self.db = db
        self.admin_token = ""
        self.admin_id = ""

    async def login(self, username: str, password: str) -> tuple[int, dict[str, Any]]:
        response = await self.client.post(
            "/api/v1/auth/token", json={"username": username, "password": password}
        )
        return response.status, await response.json()

    async def token(self, username: str, password: str = PASSWORD) -> str:
        status, body = await self.login(username, password)
        assert status == 200, body
        return str(body["token"])

    async def call(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        response = await self.client.request(method, path, headers=headers, **kwargs)
        if response.status == 204:
            return 204, None
        assert response.content_type == "application/json", (response.status, path)
        return response.status, await response.json()

    async def add_user(self, username: str, role: str, *scopes: str) -> str:
        status, body = await self.call(
            "POST", "/api/v1/users",
            json={"username": username, "role": role, "password": PASSWORD,
                  "scopes": list(scopes)},
        )
        assert status == 201, body
        return str(body["user"]["id"])

    async def audit_rows(self, action: str | None = None) -> list[asyncpg.Record]:
        if action is None:
            rows: list[asyncpg.Record] = await self.db.fetch(
                "SELECT * FROM audit_events ORDER BY seq")
        else:
            rows = await self.db.fetch(
                "SELECT * FROM audit_events WHERE action = $1 ORDER BY seq", action)
        return rows


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_api(db_pool: asyncpg.Pool) -> AsyncIterator[ApiFactory]:
    clients: list[Client] = []

    async def make(policy: LoginPolicy = NO_DELAY, token_ttl_s: int = 28800) -> Api:
        app = create_api(db=db_pool)
        setup_identity(app, token_ttl_s=token_ttl_s, policy=policy, password_hashing=CHEAP)
        client: Client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        api = Api(client, db_pool)
        await ensure_bootstrap_admin(db_pool, "admin", ADMIN_PASSWORD, hashing=CHEAP)
        status, body = await api.login("admin", ADMIN_PASSWORD)
        assert status == 200, body
        api.admin_token = body["token"]
        api.admin_id = body["user"]["id"]
        return api

    try:
        yield make
    finally:
        for client in clients:
            await client.close()
        report = await verify_audit_chain(db_pool)
        assert report.ok, report
        # Firm principle: no password or token in clear anywhere in the audit trail.
        trail = json.dumps([dict(r["details"]) for r in await db_pool.fetch(
            "SELECT details FROM audit_events")])
        for secret in (ADMIN_PASSWORD, PASSWORD, "srs_"):
            assert secret not in trail


@pytest.fixture
async def api(make_api: ApiFactory) -> Api:
    return await make_api()


# --- logins and tokens ------------------------------------------------------------------------


async def test_login_gives_a_token_that_opens_the_api_and_is_stored_only_as_its_digest(
    api: Api,
) -> None:
    before = datetime.now(UTC)
    status, body = await api.login("ADMIN", ADMIN_PASSWORD)  # names compare case-insensitively
    assert status == 200
    token = body["token"]
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(hours=7, minutes=59) < expires - before < timedelta(hours=8, minutes=1)
    assert body["user"]["role"] == "admin" and "users.manage" in body["user"]["permissions"]

    status, me = await api.call("GET", "/api/v1/users/me", token)
    assert status == 200 and me["user"]["username"] == "admin"

    rows = await api.db.fetch("SELECT token_hash, last_used_at, source FROM api_tokens")
    digests = {bytes(r["token_hash"]) for r in rows}
    assert hashlib.sha256(token.encode()).digest() in digests
    dump = repr([dict(r) for r in rows]) + repr(await api.db.fetch("SELECT * FROM users"))
    assert token not in dump and token[4:] not in dump and ADMIN_PASSWORD not in dump
    used = await api.db.fetchval(
        "SELECT last_used_at FROM api_tokens WHERE token_hash = $1", token_digest(token))
    assert used is not None and used >= before

    logins = await api.audit_rows("auth.login")
    assert len(logins) == 2 and logins[-1]["actor"] == api.admin_id
    assert logins[-1]["source"] == "127.0.0.1"


async def test_missing_malformed_and_unknown_tokens_get_401_with_www_authenticate(
    api: Api,
) -> None:
    forged = "srs_" + "A" * 43
    for headers in ({}, {"Authorization": "Basic YWRtaW46eA=="}, {"Authorization": "Bearer"},
                    {"Authorization": "Bearer not-a-token"}, {"Authorization": f"Bearer {forged}"},
                    {"Authorization": f"Bearer {api.admin_token}x"}):
        response = await api.client.get("/api/v1/users", headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        body = await response.json()
        assert body["error"]["code"] in ("unauthenticated", "invalid_token")
    # Unknown /api/ paths do not tell a stranger what exists.
    assert (await api.client.get("/api/v1/nonexistent")).status == 401
    assert (await api.client.get("/healthz")).status == 200


async def test_an_expired_token_is_refused(api: Api) -> None:
    admin = await users.find_user_by_name(api.db, "admin")
    assert admin is not None
    token = "srs_" + "B" * 43
    await users.issue_token(api.db, admin.id, token_digest(token),
                            now=datetime.now(UTC) - timedelta(hours=9),
                            ttl=timedelta(hours=8), source="test")
    status, body = await api.call("GET", "/api/v1/users/me", token)
    assert status == 401 and body["error"]["code"] == "invalid_token"


async def test_token_lifetime_comes_from_the_setting(make_api: ApiFactory) -> None:
    api = await make_api(token_ttl_s=60)
    status, body = await api.login("admin", ADMIN_PASSWORD)
    left = datetime.fromisoformat(body["expires_at"]) - datetime.now(UTC)
    assert status == 200 and timedelta(seconds=50) < left <= timedelta(seconds=60)


async def test_logout_revokes_only_the_callers_token(api: Api) -> None:
    second = await api.token("admin", ADMIN_PASSWORD)
    status, _ = await api.call("DELETE", "/api/v1/auth/token", second)
    assert status == 204
    assert (await api.call("GET", "/api/v1/users/me", second))[0] == 401
    assert (await api.call("GET", "/api/v1/users/me"))[0] == 200
    revoked = await api.audit_rows("auth.token_revoked")
    assert [r["details"]["reason"] for r in revoked] == ["logout"]


# --- failed logins ----------------------------------------------------------------------------


async def test_unknown_user_wrong_password_locked_and_disabled_answer_alike(api: Api) -> None:
    user_id = await api.add_user("dora", "supervisor")
    answers = [await api.login("nobody", PASSWORD), await api.login("dora", "wrong password!")]
    await api.db.execute("UPDATE users SET locked_until = now() + interval '1 hour' "
                         "WHERE username = 'dora'")
    answers.append(await api.login("dora", PASSWORD))  # right password, locked account
    await api.call("DELETE", f"/api/v1/users/{user_id}")
    answers.append(await api.login("dora", PASSWORD))  # right password, disabled account
    assert all(answer == answers[0] for answer in answers), answers
    assert answers[0] == (401, {"error": {"code": "invalid_credentials",
                                          "message": "wrong username or password"}})
    reasons = [r["details"]["reason"] for r in await api.audit_rows("auth.login_failed")]
    assert reasons == ["unknown_user", "bad_password", "locked", "disabled"]


async def test_five_failures_lock_the_account_even_against_the_right_password(
    api: Api,
) -> None:
    user_id = await api.add_user("eve", "agent", "2001")
    for _ in range(5):
        assert (await api.login("eve", "not her password"))[0] == 401
    assert (await api.login("eve", PASSWORD))[0] == 401
    failed = await api.audit_rows("auth.login_failed")
    assert [r["details"]["reason"] for r in failed] == ["bad_password"] * 5 + ["locked"]
    assert all(r["actor"] == user_id and r["outcome"] == "failure" for r in failed)
    assert [r["details"]["failures"] for r in failed] == [1, 2, 3, 4, 5, 5]
    locked = await api.audit_rows("auth.account_locked")
    assert len(locked) == 1 and locked[0]["target"] == user_id
    status, body = await api.call("GET", f"/api/v1/users/{user_id}")
    assert body["user"]["locked"] is True
    until = datetime.fromisoformat(body["user"]["locked_until"])
    assert timedelta(minutes=29) < until - datetime.now(UTC) <= timedelta(minutes=30)

    # The lock runs out: the count starts afresh.
    await api.db.execute("UPDATE users SET locked_until = now() - interval '1 second' "
                         "WHERE id = $1", user_id)
    assert (await api.login("eve", PASSWORD))[0] == 200
    row = await api.db.fetchrow("SELECT failed_logins, locked_until FROM users WHERE id = $1",
                                user_id)
    assert row["failed_logins"] == 0 and row["locked_until"] is None


async def test_parallel_logins_of_one_account_all_succeed(api: Api) -> None:
    # A CRM with many workers sharing its integration account logs them in at once.
    await api.add_user("crm", "integration")
    answers = await asyncio.gather(*(api.login("crm", PASSWORD) for _ in range(10)))
    assert [status for status, _ in answers] == [200] * 10


async def test_a_burst_of_parallel_guesses_cannot_outrun_the_lock(api: Api) -> None:
    await api.add_user("gus", "supervisor")
    answers = await asyncio.gather(*(api.login("gus", f"guess number {n}") for n in range(12)))
    assert {status for status, _ in answers} == {401}
    assert (await api.login("gus", PASSWORD))[0] == 401
    assert len(await api.audit_rows("auth.account_locked")) == 1


async def test_an_administrator_can_unlock_an_account(api: Api) -> None:
    user_id = await api.add_user("finn", "supervisor")
    for _ in range(5):
        await api.login("finn", "not his password")
    status, body = await api.call("PATCH", f"/api/v1/users/{user_id}", json={"unlock": True})
    assert status == 200 and body["user"]["locked"] is False
    assert (await api.login("finn", PASSWORD))[0] == 200
    update = (await api.audit_rows("users.update"))[-1]
    assert update["details"]["changes"] == {"unlocked": True}


async def test_many_failures_from_one_address_are_throttled_whoever_they_aim_at(
    make_api: ApiFactory,
) -> None:
    api = await make_api(LoginPolicy(delay_base_s=0, source_max_failures=3))
    for name in ("x1", "x2", "x3"):
        assert (await api.login(name, PASSWORD))[0] == 401
    response = await api.client.post("/api/v1/auth/token",
                                     json={"username": "admin", "password": ADMIN_PASSWORD})
    assert response.status == 429
    assert 14 * 60 < int(response.headers["Retry-After"]) <= 15 * 60 + 1
    assert (await response.json())["error"]["code"] == "too_many_attempts"
    blocked = await api.audit_rows("auth.source_blocked")
    assert len(blocked) == 1 and blocked[0]["source"] == "127.0.0.1"
    reasons = [r["details"]["reason"] for r in await api.audit_rows("auth.login_failed")]
    assert reasons == ["unknown_user"] * 3 + ["source_blocked"]
    # Tokens already issued keep working, and other addresses are not affected.
    assert (await api.call("GET", "/api/v1/users/me"))[0] == 200
    now = datetime.now(UTC)
    assert await users.source_blocked_until(api.db, "127.0.0.1", now) is not None
    assert await users.source_blocked_until(api.db, "192.0.2.7", now) is None


async def test_failed_logins_are_answered_ever_more_slowly(make_api: ApiFactory) -> None:
    api = await make_api(LoginPolicy(delay_base_s=0.1, delay_max_s=0.4))
    elapsed = []
    for _ in range(3):
        start = time.monotonic()
        await api.login("admin", "wrong password!!")
        elapsed.append(time.monotonic() - start)
    assert elapsed[0] >= 0.1 and elapsed[1] >= 0.2 and elapsed[2] >= 0.4


# --- roles and users --------------------------------------------------------------------------


NON_ADMIN_ROLES = ["supervisor", "auditor", "agent", "integration"]


@pytest.mark.parametrize("role", NON_ADMIN_ROLES)
async def test_users_endpoints_refuse_every_role_but_admin_and_audit_the_refusal(
    api: Api, role: str
) -> None:
    user_id = await api.add_user(f"{role}1", role, "2001")
    token = await api.token(f"{role}1")
    target = api.admin_id
    for method, path, payload in [
        ("GET", "/api/v1/users", None),
        ("POST", "/api/v1/users", {"username": "mallory", "role": "admin"}),
        ("GET", f"/api/v1/users/{target}", None),
        ("PATCH", f"/api/v1/users/{target}", {"password": "taken over by me"}),
        ("PATCH", f"/api/v1/users/{user_id}", {"role": "admin"}),
        ("DELETE", f"/api/v1/users/{target}", None),
    ]:
        status, body = await api.call(method, path, token, json=payload)
        assert status == 403, (method, path)
        assert body["error"]["code"] == "forbidden"
    status, me = await api.call("GET", "/api/v1/users/me", token)
    assert status == 200 and me["user"]["role"] == role
    denied = await api.db.fetch("SELECT * FROM audit_events WHERE outcome = 'denied'")
    assert [r["action"] for r in denied] == ["users.list", "users.create", "users.read",
                                             "users.update", "users.update", "users.disable"]
    assert all(r["actor"] == user_id and r["details"]["permission"] == "users.manage"
               for r in denied)
    assert await users.find_user_by_name(api.db, "mallory") is None


async def test_admin_manages_users_and_every_change_is_audited(api: Api) -> None:
    status, body = await api.call("POST", "/api/v1/users",
                                  json={"username": "gina", "role": "agent",
                                        "scopes": ["0044 20 7946 00*", "sip:*@sales.example.com"]})
    assert status == 201
    user = body["user"]
    generated = body["password"]
    assert user["scopes"] == ["+4420794600*", "sip:*@sales.example.com"]
    assert user["permissions"] == ["play", "search"]
    assert (await api.login("gina", generated))[0] == 200

    status, listing = await api.call("GET", "/api/v1/users")
    assert [u["username"] for u in listing["items"]] == ["admin", "gina"]
    assert "password_hash" not in json.dumps(listing)

    status, body = await api.call("PATCH", f"/api/v1/users/{user['id']}",
                                  json={"role": "supervisor", "scopes": []})
    assert status == 200 and body["user"]["role"] == "supervisor" and body["user"]["scopes"] == []
    create = (await api.audit_rows("users.create"))[-1]
    assert create["actor"] == api.admin_id and create["target"] == user["id"]
    assert create["details"]["password"] == "generated" and generated not in json.dumps(
        dict(create["details"]))
    update = (await api.audit_rows("users.update"))[-1]
    assert update["details"]["changes"] == {
        "role": {"from": "agent", "to": "supervisor"},
        "scopes": {"from": ["+4420794600*", "sip:*@sales.example.com"], "to": []},
    }


async def test_a_role_change_takes_effect_on_the_very_next_request(api: Api) -> None:
    user_id = await api.add_user("hana", "supervisor")
    token = await api.token("hana")
    assert (await api.call("GET", "/api/v1/audit", token))[0] == 403
    await api.call("PATCH", f"/api/v1/users/{user_id}", json={"role": "auditor"})
    assert (await api.call("GET", "/api/v1/audit", token))[0] == 200
    await api.call("PATCH", f"/api/v1/users/{user_id}", json={"scopes": ["2001"]})
    status, me = await api.call("GET", "/api/v1/users/me", token)
    assert me["user"]["scopes"] == ["2001"] and me["user"]["role"] == "auditor"


async def test_password_reset_and_disabling_end_every_session_of_the_user(api: Api) -> None:
    user_id = await api.add_user("ivan", "supervisor")
    first, second = await api.token("ivan"), await api.token("ivan")
    status, _ = await api.call("PATCH", f"/api/v1/users/{user_id}",
                               json={"password": "a brand new password"})
    assert status == 200
    assert (await api.call("GET", "/api/v1/users/me", first))[0] == 401
    assert (await api.call("GET", "/api/v1/users/me", second))[0] == 401
    assert (await api.login("ivan", PASSWORD))[0] == 401
    third = await api.token("ivan", "a brand new password")

    status, body = await api.call("DELETE", f"/api/v1/users/{user_id}")
    assert status == 200 and body["user"]["disabled"] is True
    assert (await api.call("GET", "/api/v1/users/me", third))[0] == 401
    assert (await api.login("ivan", "a brand new password"))[0] == 401
    # The account stays for the audit trail.
    status, body = await api.call("GET", f"/api/v1/users/{user_id}")
    assert status == 200 and body["user"]["disabled"] is True
    revoked = await api.audit_rows("auth.token_revoked")
    assert [(r["details"]["reason"], r["details"]["count"]) for r in revoked] == [
        ("password_reset", 2), ("user_disabled", 1)]
    assert (await api.audit_rows("users.disable"))[0]["target"] == user_id
    assert (await api.audit_rows("users.update"))[0]["details"]["changes"] == {
        "password": "reset"}


async def test_the_last_enabled_administrator_cannot_be_demoted_or_disabled(api: Api) -> None:
    for method, payload in (("PATCH", {"role": "auditor"}), ("PATCH", {"disabled": True}),
                            ("DELETE", None)):
        status, body = await api.call(method, f"/api/v1/users/{api.admin_id}", json=payload)
        assert status == 409 and body["error"]["code"] == "last_admin"
    other = await api.add_user("root2", "admin")
    status, _ = await api.call("PATCH", f"/api/v1/users/{api.admin_id}", json={"role": "auditor"})
    assert status == 200
    other_token = await api.token("root2")
    status, _ = await api.call("DELETE", f"/api/v1/users/{other}", other_token)
    assert status == 409


async def test_account_creation_refuses_bad_values_and_taken_names(api: Api) -> None:
    await api.add_user("jo", "agent", "2001")
    cases = [
        ({"username": "JO", "role": "agent", "password": PASSWORD}, 409),
        ({"username": "kim", "role": "root", "password": PASSWORD}, 400),
        ({"username": "kim", "role": "agent", "scopes": ["20*01"]}, 400),
        ({"username": "kim", "role": "agent", "scopes": "2001"}, 400),
        ({"username": "kim", "role": "agent", "password": "short"}, 400),
        ({"username": "k m", "role": "agent"}, 400),
        ({"username": "kim"}, 400),
        ({"username": "kim", "role": "agent", "is_admin": True}, 400),
    ]
    for payload, expected in cases:
        status, body = await api.call("POST", "/api/v1/users", json=payload)
        assert status == expected, payload
        assert set(body["error"]) == {"code", "message"}
    assert [u.username for u in await users.list_users(api.db)] == ["admin", "jo"]
    status, _ = await api.call("GET", "/api/v1/users/not-a-uuid")
    assert status == 404
    status, _ = await api.call("PATCH", "/api/v1/users/00000000-0000-0000-0000-000000000000",
                               json={"disabled": True})
    assert status == 404


# --- audit reader -----------------------------------------------------------------------------


async def test_audit_listing_filters_and_pages_by_cursor(api: Api) -> None:
    auditor = await api.add_user("lena", "auditor")
    token = await api.token("lena")
    await api.login("lena", "wrong password!!")
    await api.login("nobody", "wrong password!!")
    all_rows = await api.audit_rows()

    async def listing(**query: str) -> dict[str, Any]:
        status, body = await api.call("GET", "/api/v1/audit", token, params=query)
        assert status == 200, body
        return dict(body)

    page = await listing(actor=auditor)
    assert {i["action"] for i in page["items"]} == {"auth.login", "auth.login_failed"}
    assert [i["seq"] for i in page["items"]] == sorted(
        (i["seq"] for i in page["items"]), reverse=True)
    page = await listing(action="auth.*", outcome="failure")
    assert [i["details"]["reason"] for i in page["items"]] == ["unknown_user", "bad_password"]
    page = await listing(target=auditor, action="users.create")
    assert len(page["items"]) == 1 and page["items"][0]["details"]["username"] == "lena"
    item = page["items"][0]
    assert set(item) == {"seq", "at", "actor", "actor_name", "action", "target", "target_name",
                         "source", "outcome", "details", "prev_hash", "hash"}
    # The trail names users, not only their ids.
    assert item["target_name"] == "lena" and item["actor_name"] == "admin"
    page = await listing(actor=auditor)
    assert {i["actor_name"] for i in page["items"]} == {"lena"}
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await listing(**{"from": future}))["items"] == []
    assert len((await listing(to=future, limit="500"))["items"]) >= len(all_rows)

    # Walk everything two at a time, newest first, then oldest first.
    for order in ("desc", "asc"):
        seen: list[int] = []
        cursor: str | None = None
        while True:
            query = {"limit": "2", "order": order, **({"cursor": cursor} if cursor else {})}
            page = await listing(**query)
            seen += [i["seq"] for i in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen))
        expected = [r["seq"] for r in all_rows]
        if order == "desc":
            assert seen[-len(expected):] == expected[::-1]
        else:
            assert seen[:len(expected)] == expected

    reads = await api.audit_rows("audit.read")
    assert reads and all(r["actor"] == auditor for r in reads)
    assert reads[0]["details"]["filters"] == {"actor": auditor}

    for bad in ({"limit": "0"}, {"limit": "501"}, {"limit": "x"}, {"cursor": "abc"},
                {"from": "yesterday"}, {"from": "2025-01-01T00:00:00"}, {"order": "up"},
                {"actr": auditor}, {"actor": "x" * 300}):
        status, body = await api.call("GET", "/api/v1/audit", token, params=bad)
        assert status == 400 and body["error"]["code"] == "bad_request", bad
    status, _ = await api.call("GET", "/api/v1/audit?actor=a&actor=b", token)
    assert status == 400


# --- hostile input ----------------------------------------------------------------------------


BAD_BODIES: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not json", b"username=admin&password=x"),
    ("not utf-8", b'{"username": "\xff\xfe"}'),
    ("array", b'["admin", "password"]'),
    ("string", b'"admin"'),
    ("null", b"null"),
    ("nan", b'{"username": NaN}'),
    ("deep", b"[" * 30_000 + b"]" * 30_000),
    ("huge number", b'{"username": 1' + b"0" * 5000 + b"}"),
    ("wrong types", b'{"username": 5, "password": null}'),
    ("nested types", b'{"username": {"$ne": ""}, "password": ["x"]}'),
]


async def test_bad_login_payloads_get_400_json_never_500(api: Api) -> None:
    for name, payload in BAD_BODIES:
        response = await api.client.post("/api/v1/auth/token", data=payload,
                                         headers={"Content-Type": "application/json"})
        assert response.status == 400, name
        assert (await response.json())["error"]["code"] == "bad_request", name
    # Bad payloads are not login attempts: nothing was counted against anyone.
    assert await api.audit_rows("auth.login_failed") == []


async def test_bad_payloads_on_every_endpoint_are_refused_cleanly(api: Api) -> None:
    target = f"/api/v1/users/{api.admin_id}"
    for method, path in (("POST", "/api/v1/users"), ("PATCH", target)):
        for _name, payload in BAD_BODIES:
            status, body = await api.call(method, path, data=payload)
            assert status == 400, (method, path, _name)
    for change in ({}, {"disabled": "yes"}, {"unlock": False}, {"role": 7},
                   {"scopes": [None]}, {"password": 123456789012}):
        status, body = await api.call("PATCH", target, json=change)
        assert status == 400, change
    huge = b'{"username": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    for method, path in (("POST", "/api/v1/auth/token"), ("POST", "/api/v1/users"),
                         ("PATCH", target)):
        status, body = await api.call(method, path, data=huge)
        assert status == 413 and body["error"]["code"] == "payload_too_large"
    response = await api.client.post(
        "/api/v1/auth/token", json={"username": "a" * 300, "password": "x" * 5000})
    assert response.status == 400


# --- bootstrap --------------------------------------------------------------------------------


async def test_bootstrap_admin_is_created_once_with_a_generated_password(
    db_pool: asyncpg.Pool,
) -> None:
    with pytest.raises(AccessError):
        await ensure_bootstrap_admin(db_pool, "admin", "short", hashing=CHEAP)
    generated = await ensure_bootstrap_admin(db_pool, "admin", None, hashing=CHEAP)
    assert generated is not None and len(generated) >= 20
    assert await ensure_bootstrap_admin(db_pool, "admin", None, hashing=CHEAP) is None
    assert await ensure_bootstrap_admin(db_pool, "other", "another password", hashing=CHEAP) is None
    admins = await users.list_users(db_pool)
    assert [(u.username, u.role) for u in admins] == [("admin", "admin")]
    assert CHEAP.verify(admins[0].password_hash, generated)
    events = await db_pool.fetch("SELECT * FROM audit_events WHERE action = 'users.create'")
    assert len(events) == 1 and events[0]["actor"] == "system"
    assert events[0]["details"]["bootstrap"] is True
    assert generated not in json.dumps(dict(events[0]["details"]))
    assert (await verify_audit_chain(db_pool)).ok


async def test_bootstrap_admin_takes_the_given_password(api: Api) -> None:
    # The fixture bootstrapped "admin" with ADMIN_PASSWORD (as from SIPREC_BOOTSTRAP_PASSWORD).
    user = await users.find_user_by_name(api.db, "admin")
    assert user is not None and user.role == "admin" and user.scopes == ()
    assert CHEAP.verify(user.password_hash, ADMIN_PASSWORD)
    event = (await api.audit_rows("users.create"))[0]
    assert event["actor"] == "system" and event["details"]["password"] == "given"


# --- PCI DSS 8: idle sessions, unknown routes, login floods -----------------------------------


async def test_a_token_idle_longer_than_the_idle_timeout_is_dead(api: Api) -> None:
    await api.add_user("idris", "auditor")
    token = await api.token("idris")
    status, _ = await api.call("GET", "/api/v1/users/me", token)
    assert status == 200
    # Fourteen minutes without use: still alive (and its use renews it).
    await api.db.execute("UPDATE api_tokens SET last_used_at = now() - interval '14 minutes'")
    assert (await api.call("GET", "/api/v1/users/me", token))[0] == 200
    # Sixteen: dead, although far from its expiry.
    await api.db.execute("UPDATE api_tokens SET last_used_at = now() - interval '16 minutes'")
    status, body = await api.call("GET", "/api/v1/users/me", token)
    assert status == 401 and body["error"]["code"] == "invalid_token"


async def test_an_unknown_route_is_401_without_a_token_and_404_with_one(api: Api) -> None:
    response = await api.client.get("/api/v1/no-such-thing")
    assert response.status == 401
    status, body = await api.call("GET", "/api/v1/no-such-thing", api.admin_token)
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_a_login_flood_is_answered_busy_instead_of_queueing_without_bound(
    make_api: ApiFactory,
) -> None:
    from siprec_server.access import PasswordHashing

    api = await make_api()
    await api.add_user("flo", "auditor")
    # Real argon2 cost for the flood: each verify takes tens of milliseconds.
    from api.auth_api import IDENTITY_KEY

    identity = api.client.app[IDENTITY_KEY]
    identity.hashing = PasswordHashing()
    answers = await asyncio.gather(*(api.login("flo", f"guess number {i:04d}")
                                     for i in range(200)))
    statuses = [status for status, _ in answers]
    busy = [body for status, body in answers if status == 503]
    assert busy and all(b["error"]["code"] == "busy" for b in busy)
    # Wrong guesses are 401, or 429 once the address is throttled; the rest were turned away.
    assert set(statuses) <= {401, 429, 503} and statuses.count(401) >= 2
    assert identity.refused == len(busy)
    # Afterwards the real user logs in (the lock-out counts only the failures that were heard).
    await api.db.execute("UPDATE users SET failed_logins = 0, locked_until = NULL")
    await api.db.execute("DELETE FROM login_failures")
    status, _ = await api.login("flo", PASSWORD)
    assert status == 200
