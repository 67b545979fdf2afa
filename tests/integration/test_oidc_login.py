"""Single sign-on through OpenID Connect against a small provider run by the test (discovery,
authorize, token and JWKS endpoints, RS256 ID tokens): the code flow with PKCE logs an existing
account in as a web session; an unknown account, a forged or foreign token, a wrong nonce and a
state that does not come back are refused and audited."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import asyncpg
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import rsa

from api.app import create_api
from api.auth_api import setup_identity
from api.recordings_api import setup_recordings
from api.ui import OidcSettings, setup_ui
from siprec_server.services.accounts import create_account
from tests.integration.test_recordings_api import CHEAP

CLIENT_ID = "siprec-web"
CLIENT_SECRET = "s3cret-of-the-client"


@dataclass
class Provider:
    """A minimal OpenID provider; `claims` and `signing_key` let a test misbehave."""

    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(
        public_exponent=65537, key_size=2048))
    issuer: str = ""
    username: str = "olivia"
    claims: dict[str, Any] = field(default_factory=dict)
    signing_key: rsa.RSAPrivateKey | None = None
    codes: dict[str, dict[str, str]] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        app.router.add_get("/jwks", self.jwks)
        return app

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks"})

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        assert q["response_type"] == "code" and q["client_id"] == CLIENT_ID
        assert q["code_challenge_method"] == "S256" and "openid" in q["scope"].split()
        code = uuid.uuid4().hex
        self.codes[code] = {"nonce": q["nonce"], "challenge": q["code_challenge"],
                            "redirect_uri": q["redirect_uri"]}
        return web.Response(status=302, headers={
            "Location": f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}"})

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = self.codes.pop(str(form["code"]), None)
        verifier = str(form["code_verifier"]).encode()
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
        if grant is None or challenge.decode() != grant["challenge"] or \
                form["redirect_uri"] != grant["redirect_uri"]:
            return web.json_response({"error": "invalid_grant"}, status=400)
        assert request.headers["Authorization"] == aiohttp.encode_basic_auth(
            CLIENT_ID, CLIENT_SECRET)
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "sub": "u-1", "iat": now,
                  "exp": now + 300, "nonce": grant["nonce"],
                  "preferred_username": self.username, **self.claims}
        token = jwt.encode(claims, self.signing_key or self.key, algorithm="RS256",
                           headers={"kid": "k1"})
        return web.json_response({"access_token": "x", "token_type": "Bearer",
                                  "id_token": token})

    async def jwks(self, request: web.Request) -> web.Response:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return web.json_response({"keys": [{**jwk, "kid": "k1", "use": "sig"}]})


@dataclass
class Sso:
    provider: Provider
    idp: TestClient[web.Request, web.Application]
    client: TestClient[web.Request, web.Application]
    db: asyncpg.Pool

    async def log_in(self, *, tamper_state: bool = False) -> aiohttp.ClientResponse:
        started = await self.client.get("/ui/oidc/start", allow_redirects=False)
        assert started.status == 302
        location = urlsplit(started.headers["Location"])
        assert location.path == "/authorize"
        authorized = await self.idp.get(f"/authorize?{location.query}", allow_redirects=False)
        back = urlsplit(authorized.headers["Location"])
        query = back.query
        if tamper_state:
            params = {k: v[0] for k, v in parse_qs(query).items()}
            query = urlencode({**params, "state": "someone-elses-state"})
        return await self.client.get(f"{back.path}?{query}", allow_redirects=False)

    async def refusals(self) -> list[str]:
        rows = await self.db.fetch(
            "SELECT details FROM audit_events WHERE action = 'auth.login_failed' ORDER BY seq")
        return [json.loads(r["details"])["reason"] if isinstance(r["details"], str)
                else r["details"]["reason"] for r in rows]


@pytest.fixture
async def sso(db_pool: asyncpg.Pool) -> AsyncIterator[Sso]:
    provider = Provider()
    idp = TestClient(TestServer(provider.app()))
    await idp.start_server()
    provider.issuer = str(idp.make_url("")).rstrip("/")
    app = create_api(db=db_pool)
    setup_identity(app, password_hashing=CHEAP)
    setup_recordings(app)
    setup_ui(app, oidc=OidcSettings(provider.issuer, CLIENT_ID, CLIENT_SECRET,
                                    "http://127.0.0.1:8080/ui/oidc/callback",
                                    display_name="Example SSO"))
    client = TestClient(TestServer(app), cookie_jar=aiohttp.CookieJar(unsafe=True))
    await client.start_server()
    await create_account(db_pool, actor="test", username="olivia", role="supervisor",
                         password=None, hashing=CHEAP)
    try:
        yield Sso(provider, idp, client, db_pool)
    finally:
        await client.close()
        await idp.close()


async def test_an_existing_account_logs_in_through_the_provider(sso: Sso) -> None:
    page = await sso.client.get("/ui/login")
    assert "Log in with Example SSO" in await page.text()
    done = await sso.log_in()
    assert done.status == 200 and 'http-equiv="refresh"' in await done.text()
    home = await sso.client.get("/ui/recordings")
    assert home.status == 200 and "olivia" in await home.text()
    row = await sso.db.fetchrow("SELECT actor, details FROM audit_events "
                                "WHERE action = 'auth.login'")
    details = row["details"] if isinstance(row["details"], dict) else json.loads(row["details"])
    assert details["via"] == "oidc" and details["session"] == "web"


@pytest.mark.parametrize(("misbehaviour", "reason"), [
    ("unknown_user", "unknown_user"),
    ("foreign_key", "token_invalid"),
    ("other_audience", "token_invalid"),
    ("expired", "token_invalid"),
    ("wrong_nonce", "nonce_mismatch"),
    ("state", "state_mismatch"),
])
async def test_what_cannot_be_trusted_is_refused_and_audited(sso: Sso, misbehaviour: str,
                                                             reason: str) -> None:
    provider = sso.provider
    if misbehaviour == "unknown_user":
        provider.username = "mallory"
    elif misbehaviour == "foreign_key":
        provider.signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif misbehaviour == "other_audience":
        provider.claims = {"aud": "another-client"}
    elif misbehaviour == "expired":
        provider.claims = {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}
    elif misbehaviour == "wrong_nonce":
        provider.claims = {"nonce": "replayed"}
    answer = await sso.log_in(tamper_state=misbehaviour == "state")
    assert answer.status == 303
    assert answer.headers["Location"] == "/ui/login?sso_failed=1"
    assert (await sso.client.get("/ui/recordings", allow_redirects=False)).status == 303
    assert await sso.refusals() == [reason]
