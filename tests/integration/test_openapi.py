"""The OpenAPI document against the running API: every registered route is documented and every
documented operation is registered, and real responses — successes and errors — have a
documented status and validate against the documented schema (a small hand-rolled validator:
types, required fields, properties, items, enums, patterns, uuid and date-time formats)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.lifecycle_api import LIFECYCLE_KEY
from api.openapi import document
from siprec_server.services.accounts import create_account
from storage.audit import verify_audit_chain
from storage.keys import KeyRing
from tests.integration.test_lifecycle_api import (
    FakeClock,
    exercise_lifecycle_endpoints,
    lifecycle_services,
)
from tests.integration.test_recordings_api import (
    AGENT,
    CHEAP,
    PLAINTEXT,
    T0,
    Client,
    make_token,
    recording_app,
    ring_of_one,
    stored_recording,
)

PASSWORD = "a long enough password"
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float), "null": (type(None),),
}


class SchemaMismatch(AssertionError):
    pass


def _resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/components/schemas/"), ref
        schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def _is(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[kind])


def validate(value: Any, schema: dict[str, Any], doc: dict[str, Any], where: str = "$") -> None:
    """Raise SchemaMismatch naming the first place `value` breaks `schema`."""
    schema = _resolve(schema, doc)
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, kind) for kind in kinds):
            raise SchemaMismatch(f"{where}: {value!r} is not {kinds}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaMismatch(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise SchemaMismatch(f"{where}: {value!r} does not match {schema['pattern']}")
        if schema.get("format") == "uuid":
            uuid.UUID(value)
        if schema.get("format") == "date-time":
            parsed = datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                raise SchemaMismatch(f"{where}: {value!r} has no time zone")
    if isinstance(value, dict):
        for name in schema.get("required", ()):
            if name not in value:
                raise SchemaMismatch(f"{where}: missing {name!r}")
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                validate(value[name], sub, doc, f"{where}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            validate(item, schema["items"], doc, f"{where}[{i}]")


def test_the_validator_catches_wrong_shapes() -> None:
    doc = document()
    recording = {"$ref": "#/components/schemas/Recording"}
    with pytest.raises(SchemaMismatch, match="missing 'id'"):
        validate({}, recording, doc)
    with pytest.raises(SchemaMismatch, match="state"):
        validate({"id": str(uuid.uuid4()), "call_id": None, "session_id": None,
                  "state": "lost", "started_at": "2024-01-01T00:00:00Z", "ended_at": None,
                  "duration_s": None, "participants": [], "channels": [], "streams": [],
                  "pauses": []}, recording, doc)
    with pytest.raises(SchemaMismatch, match="not"):
        validate({"error": {"code": 1, "message": "m"}},
                 {"$ref": "#/components/schemas/Error"}, doc)


async def exercise_rules_endpoints(c: Any, live: uuid.UUID, admin: str) -> None:
    rules = "/api/v1/recording-rules"
    created = await c("POST", rules, rules, admin,
                      json={"name": "HR", "action": "record", "restricted": True,
                            "match": {"parties": ["2001"]}})
    await c("POST", rules, rules, admin, json={"name": "HR", "action": "record"})
    await c("POST", rules, rules, admin, json={"name": "x", "action": "maybe"})
    await c("GET", rules, rules, admin)
    one = f"{rules}/{created['id']}"
    await c("GET", rules + "/{id}", one, admin)
    await c("PATCH", rules + "/{id}", one, admin, json={"priority": 5})
    await c("DELETE", rules + "/{id}", one, admin)
    await c("GET", rules + "/{id}", one, admin)
    opt = "/api/v1/calls/{ref}/opt-out"
    await c("POST", opt, f"/api/v1/calls/{live}/opt-out", admin, json={"keep": True})
    await c("POST", opt, "/api/v1/calls/nothing/opt-out", admin, json={})
    await c("POST", opt, f"/api/v1/calls/{live}/opt-out", admin, json={"keep": 1})
    await c("GET", "/api/v1/recordings/{id}/deliveries", f"/api/v1/recordings/{live}/deliveries",
            admin)
    await c("GET", "/api/v1/recordings/{id}/deliveries",
            f"/api/v1/recordings/{uuid.uuid4()}/deliveries", admin)
    await c("POST", "/api/v1/recordings/{id}/deliveries/{destination}/retry",
            f"/api/v1/recordings/{live}/deliveries/nowhere/retry", admin)
    await c("GET", "/api/v1/webhooks/deliveries", "/api/v1/webhooks/deliveries", admin,
            params={"state": "dead"})
    await c("GET", "/api/v1/webhooks/deliveries", "/api/v1/webhooks/deliveries", admin,
            params={"state": "x"})
    await c("POST", "/api/v1/webhooks/deliveries/{id}/retry",
            f"/api/v1/webhooks/deliveries/{uuid.uuid4()}/retry", admin)
    restrict = "/api/v1/recordings/{id}/restricted"
    await c("POST", restrict, f"/api/v1/recordings/{live}/restricted", admin,
            json={"restricted": True})
    await c("POST", restrict, f"/api/v1/recordings/{uuid.uuid4()}/restricted", admin,
            json={"restricted": True})


def test_every_reference_in_the_document_resolves() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1")
    text = repr(doc)
    for name in re.findall(r"#/components/schemas/(\w+)", text):
        assert name in doc["components"]["schemas"], name


def _routes(app: Any) -> set[tuple[str, str]]:
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    methods = {"get", "post", "put", "patch", "delete"}
    return {(m, path) for path, item in doc["paths"].items() for m in item if m in methods}


def test_every_route_is_documented_and_every_documented_operation_exists() -> None:
    # The routes are registered without a running database.
    app = recording_app(None)  # routes need no database
    assert _routes(app) == _documented(document())


class Checker:
    def __init__(self, client: Client, ring: KeyRing, services: Any = None) -> None:
        self.client = client
        self.ring = ring
        self.services = services
        self.doc = document()
        self.checked: set[tuple[str, str, int]] = set()

    async def call(self, method: str, template: str, path: str, token: str | None,
                   **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = await self.client.request(method, path, headers=headers, **kwargs)
        operation = self.doc["paths"][template][method.lower()]
        documented = operation["responses"].get(str(response.status))
        assert documented is not None, f"{method} {template}: {response.status} undocumented"
        self.checked.add((method.lower(), template, response.status))
        if response.status == 204:
            return None
        content_type = response.content_type
        assert content_type in documented["content"], (template, content_type)
        if content_type == "application/json":
            body = await response.json()
            validate(body, documented["content"][content_type]["schema"], self.doc,
                     f"{method} {template} {response.status}")
            return body
        return await response.read()


@pytest.fixture
async def checker(db_pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[Checker]:
    ring = ring_of_one()
    app = recording_app(db_pool, keys=ring)
    services = lifecycle_services(db_pool, ring, tmp_path, FakeClock(datetime.now(UTC)))
    app[LIFECYCLE_KEY] = services
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Checker(client, ring, services)
    finally:
        await client.close()
        assert (await verify_audit_chain(db_pool)).ok


async def test_real_responses_match_the_document(
    checker: Checker, db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    ring = checker.ring
    rid = await stored_recording(db_pool, ring, tmp_path, parties=[AGENT], started_at=T0,
                                 plaintext=PLAINTEXT)
    live = await stored_recording(db_pool, ring, tmp_path, parties=[AGENT], state="recording",
                                  started_at=T0, plaintext=PLAINTEXT)
    admin, _ = await make_token(db_pool, "admin")
    agent, _ = await make_token(db_pool, "agent")
    await create_account(db_pool, actor="test", username="olivia", role="supervisor",
                         password=PASSWORD, hashing=CHEAP)
    c = checker.call

    login = await c("POST", "/api/v1/auth/token", "/api/v1/auth/token", None,
                    json={"username": "olivia", "password": PASSWORD})
    await c("POST", "/api/v1/auth/token", "/api/v1/auth/token", None,
            json={"username": "olivia", "password": "wrong password!"})
    await c("POST", "/api/v1/auth/token", "/api/v1/auth/token", None, data=b"{")
    await c("GET", "/api/v1/users/me", "/api/v1/users/me", login["token"])
    await c("DELETE", "/api/v1/auth/token", "/api/v1/auth/token", login["token"])
    await c("DELETE", "/api/v1/auth/token", "/api/v1/auth/token", login["token"])

    await c("GET", "/api/v1/users", "/api/v1/users", admin)
    await c("GET", "/api/v1/users", "/api/v1/users", agent)
    created = await c("POST", "/api/v1/users", "/api/v1/users", admin,
                      json={"username": "ines", "role": "agent", "scopes": ["2001"]})
    uid = created["user"]["id"]
    await c("GET", "/api/v1/users/{id}", f"/api/v1/users/{uid}", admin)
    await c("GET", "/api/v1/users/{id}", f"/api/v1/users/{uuid.uuid4()}", admin)
    await c("PATCH", "/api/v1/users/{id}", f"/api/v1/users/{uid}", admin,
            json={"scopes": ["2002"]})
    await c("PATCH", "/api/v1/users/{id}", f"/api/v1/users/{uid}", admin, json={"role": "x"})
    await c("DELETE", "/api/v1/users/{id}", f"/api/v1/users/{uid}", admin)
    await c("GET", "/api/v1/audit", "/api/v1/audit", admin, params={"limit": "3"})

    await c("GET", "/api/v1/recordings", "/api/v1/recordings", admin)
    await c("GET", "/api/v1/recordings", "/api/v1/recordings", admin, params={"limit": "x"})
    await c("GET", "/api/v1/recordings", "/api/v1/recordings", None)
    csv_body = await c("GET", "/api/v1/recordings", "/api/v1/recordings", admin,
                       params={"format": "csv"})
    assert csv_body.startswith(b"id,")
    await c("GET", "/api/v1/recordings/{id}", f"/api/v1/recordings/{rid}", admin)
    await c("GET", "/api/v1/recordings/{id}", f"/api/v1/recordings/{rid}", agent)
    await c("GET", "/api/v1/recordings/{id}", f"/api/v1/recordings/{rid}?verify=true", admin)
    await c("GET", "/api/v1/recordings/{id}/audio", f"/api/v1/recordings/{rid}/audio", admin)
    await c("GET", "/api/v1/recordings/{id}/audio", f"/api/v1/recordings/{rid}/audio", admin,
            headers={"Range": "bytes=0-9"})
    await c("GET", "/api/v1/recordings/{id}/audio", f"/api/v1/recordings/{rid}/audio", admin,
            headers={"Range": "bytes=9999-"})
    await c("GET", "/api/v1/recordings/{id}/peaks", f"/api/v1/recordings/{rid}/peaks", admin)
    await c("GET", "/api/v1/recordings/{id}/peaks", f"/api/v1/recordings/{rid}/peaks?points=1",
            admin)
    await c("POST", "/api/v1/calls/{ref}/pause", f"/api/v1/calls/{live}/pause", admin)
    await c("POST", "/api/v1/calls/{ref}/resume", "/api/v1/calls/nothing/resume", admin)
    await c("POST", "/api/v1/calls/{ref}/pause", f"/api/v1/calls/{live}/pause", agent)
    await c("DELETE", "/api/v1/recordings/{id}", f"/api/v1/recordings/{live}", admin,
            json={"reason": "test"})
    await c("DELETE", "/api/v1/recordings/{id}", f"/api/v1/recordings/{rid}", admin,
            json={"reason": "test"})
    await c("GET", "/api/v1/recordings/{id}", f"/api/v1/recordings/{rid}", admin)
    await c("GET", "/api/v1/recordings/{id}/audio", f"/api/v1/recordings/{rid}/audio", admin)
    await c("DELETE", "/api/v1/recordings/{id}", f"/api/v1/recordings/{rid}", admin,
            json={"nope": 1})

    await exercise_lifecycle_endpoints(c, db_pool, ring, tmp_path, checker.services, admin)
    await c("GET", "/api/v1/keys", "/api/v1/keys", admin)
    await c("GET", "/api/v1/keys", "/api/v1/keys", agent)
    await c("GET", "/api/v1/keys/seal", "/api/v1/keys/seal", None)
    await c("POST", "/api/v1/keys/unseal", "/api/v1/keys/unseal", None,
            json={"share": "srs-share1:AAAA"})
    await c("POST", "/api/v1/keys/unseal", "/api/v1/keys/unseal", None, json={"x": 1})
    await c("GET", "/api/v1/keys/shares", "/api/v1/keys/shares", admin)
    await c("POST", "/api/v1/keys/ceremonies", "/api/v1/keys/ceremonies", admin,
            json={"kind": "rotate", "dry_run": True})
    await c("POST", "/api/v1/keys/ceremonies", "/api/v1/keys/ceremonies", admin,
            json={"kind": "destroy-everything"})
    await c("GET", "/api/v1/keys/ceremonies/{id}", f"/api/v1/keys/ceremonies/{uuid.uuid4()}",
            admin)
    await c("POST", "/api/v1/keys/ceremonies/{id}/approve",
            f"/api/v1/keys/ceremonies/{uuid.uuid4()}/approve", admin,
            json={"password": "not the password"})
    await c("GET", "/api/v1/jobs/{id}", f"/api/v1/jobs/{uuid.uuid4()}", admin)
    await exercise_rules_endpoints(c, live, admin)

    await c("GET", "/healthz", "/healthz", None)
    metrics = await c("GET", "/metrics", "/metrics", None)
    assert b"# TYPE siprec_active_calls gauge" in metrics
    spec = await c("GET", "/api/v1/openapi.json", "/api/v1/openapi.json", None)
    assert spec == checker.doc

    # Every documented operation was called at least once.
    assert {(m, t) for m, t, _ in checker.checked} == _documented(checker.doc)
