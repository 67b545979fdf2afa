"""Key custody endpoints (INTERFACES.md "Key custody (v2)"), and the gate that keeps a sealed
server to health, login and unseal.

    GET    /api/v1/keys                          keys.manage: custody, sealed, threshold, shares,
                                                 versions (age, rotation due, expired)
    GET    /api/v1/keys/seal                     public: {"sealed", "initialised", "progress"}
    POST   /api/v1/keys/unseal                   public: {"share"} -> {"sealed", "progress"}; the
                                                 share is the credential (checked against the
                                                 digest kept for it) and names its custodian
    GET    /api/v1/keys/shares                   keys.manage: the caller's share envelopes, once
    POST   /api/v1/keys/ceremonies               keys.manage: {"kind": "init" | "rotate" |
                                                 "reencrypt", ...} -> CEREMONY (201);
                                                 {"kind": "rotate", "dry_run": true} -> the plan
    GET    /api/v1/keys/ceremonies/{id}          keys.manage
    POST   /api/v1/keys/ceremonies/{id}/approve  keys.manage: {"password"} -> CEREMONY
    GET    /api/v1/jobs/{id}                     keys.manage: {"id", "kind", "state", "done",
                                                 "total", ...}

While the server is sealed (or has no master key yet), every other route under /api/ answers
503 `sealed` with Retry-After, before authentication.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from aiohttp import web

from api.app import ApiInputError, error, read_json_object
from api.security import PUBLIC_API_ROUTES, principal_of, require
from siprec_server.services.keys import CeremonyError, KeyService
from storage import key_versions as kv
from storage.custody import CustodyError, ShareRefused

__all__ = ["KEY_SERVICE", "SEALED_ROUTES", "setup_keys"]

KEY_SERVICE = web.AppKey("key_service", KeyService)
SEALED_RETRY_AFTER_S = 10

SEALED_ROUTES: frozenset[tuple[str, str]] = frozenset({
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("POST", "/api/v1/auth/token"),
    ("DELETE", "/api/v1/auth/token"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/keys"),
    ("GET", "/api/v1/keys/seal"),
    ("POST", "/api/v1/keys/unseal"),
    ("GET", "/api/v1/keys/shares"),
    ("POST", "/api/v1/keys/ceremonies"),
    ("GET", "/api/v1/keys/ceremonies/{id}"),
    ("POST", "/api/v1/keys/ceremonies/{id}/approve"),
    ("GET", "/api/v1/jobs/{id}"),
})
"""What a sealed server serves: health, login, unseal, and what custodians need to get there
(the init ceremony of a server without a master key, their share envelopes, job progress)."""

PUBLIC_KEY_ROUTES = frozenset({("GET", "/api/v1/keys/seal"), ("POST", "/api/v1/keys/unseal")})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _rfc3339(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _source(request: web.Request) -> str:
    return request.remote or "unknown"


def _id(request: web.Request) -> UUID:
    try:
        return UUID(request.match_info["id"])
    except ValueError:
        raise ApiInputError("no such resource", status=404, code="not_found") from None


def ceremony_json(ceremony: kv.Ceremony, now: datetime) -> dict[str, Any]:
    state = ceremony.state
    if state == "pending" and now >= ceremony.expires_at:
        state = "expired"
    params = ceremony.params
    return {
        "id": str(ceremony.id),
        "kind": ceremony.kind,
        "state": state,
        "needed": ceremony.needed,
        "approvals": [{"user": a.username, "user_id": str(a.user_id), "at": _rfc3339(a.at)}
                      for a in ceremony.approvals],
        "job_id": str(ceremony.job_id) if ceremony.job_id else None,
        "created_by": ceremony.created_by,
        "created_at": _rfc3339(ceremony.created_at),
        "expires_at": _rfc3339(ceremony.expires_at),
        "threshold": params.get("threshold"),
        "custodians": [{"user": c["username"], "kind": c["kind"],
                        "fingerprint": c["fingerprint"]} for c in params.get("custodians", [])],
        "recordings": len(params.get("recording_ids", [])),
    }


def _ceremony_error(exc: CeremonyError) -> web.Response:
    return error(exc.status, exc.code, str(exc))


@require("keys.manage", action="key.status")
async def keys_status(request: web.Request) -> web.StreamResponse:
    return web.json_response(await request.app[KEY_SERVICE].status())


async def seal_status(request: web.Request) -> web.StreamResponse:
    service = request.app[KEY_SERVICE]
    progress = service.custody.progress()
    return web.json_response({"sealed": service.custody.sealed or not service.ready,
                              "initialised": not service.custody.needs_init,
                              "custody": service.custody.mode,
                              "progress": [progress.submitted, progress.threshold]})


async def unseal(request: web.Request) -> web.StreamResponse:
    body = await read_json_object(request, frozenset({"share"}), max_bytes=4096)
    share = body.get("share")
    if not isinstance(share, str) or not share.strip():
        raise ApiInputError("share: the share's text is required")
    service = request.app[KEY_SERVICE]
    try:
        progress = await service.unseal(share, _source(request))
    except ShareRefused as exc:
        return error(400, "share_refused", str(exc))
    except CustodyError as exc:
        return error(409, "conflict", str(exc))
    return web.json_response({"sealed": progress.sealed or not service.ready,
                              "progress": [progress.submitted, progress.threshold],
                              "version": progress.version_id})


@require("keys.manage", action="key.share_fetch")
async def my_shares(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    shares = await request.app[KEY_SERVICE].take_shares(principal.user_id, _source(request))
    response = web.json_response({"shares": shares})
    response.headers["Cache-Control"] = "no-store"
    return response


_CEREMONY_FIELDS = frozenset({"kind", "threshold", "custodians", "recording_ids", "dry_run"})


@require("keys.manage", action="key.ceremony_create")
async def create_ceremony(request: web.Request) -> web.StreamResponse:
    body = await read_json_object(request, _CEREMONY_FIELDS)
    service = request.app[KEY_SERVICE]
    if body.get("dry_run") is True:
        if body.get("kind") != "rotate":
            raise ApiInputError("dry_run is for kind rotate")
        return web.json_response(await service.rotation_plan())
    principal = principal_of(request)
    try:
        ceremony = await service.create_ceremony(str(principal.user_id), body, _source(request))
    except CeremonyError as exc:
        return _ceremony_error(exc)
    return web.json_response(ceremony_json(ceremony, service.clock()), status=201)


@require("keys.manage", action="key.ceremony_read")
async def show_ceremony(request: web.Request) -> web.StreamResponse:
    service = request.app[KEY_SERVICE]
    ceremony = await kv.get_ceremony(service.db, _id(request))
    if ceremony is None:
        raise ApiInputError("no such ceremony", status=404, code="not_found")
    return web.json_response(ceremony_json(ceremony, service.clock()))


@require("keys.manage", action="key.ceremony_approve")
async def approve_ceremony(request: web.Request) -> web.StreamResponse:
    ceremony_id = _id(request)
    body = await read_json_object(request, frozenset({"password"}))
    password = body.get("password")
    if not isinstance(password, str) or not password:
        raise ApiInputError("password: re-enter your password to approve")
    service = request.app[KEY_SERVICE]
    try:
        ceremony = await service.approve(ceremony_id, principal_of(request).user_id, password,
                                         _source(request))
    except CeremonyError as exc:
        return _ceremony_error(exc)
    return web.json_response(ceremony_json(ceremony, service.clock()))


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


@web.middleware
async def sealed_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    service = request.app.get(KEY_SERVICE)
    if service is None or service.ready:
        return await handler(request)
    route = _route(request)
    if route.startswith("/ui/api/"):
        route = route.removeprefix("/ui")  # the web interface's mount: judged as the API route
    elif route == "/ui" or route.startswith("/ui/"):
        return await handler(request)  # pages: api/ui shows a sealed server's page itself
    if (request.method, route) in SEALED_ROUTES or (
            request.method == "HEAD" and ("GET", route) in SEALED_ROUTES):
        return await handler(request)
    response = error(503, "sealed", "the server is sealed: its key custodians must unseal it "
                     "(siprec-server keys unseal)")
    response.headers["Retry-After"] = str(SEALED_RETRY_AFTER_S)
    return response


def setup_keys(app: web.Application, service: KeyService) -> None:
    """Key routes, and the sealed gate right after the JSON error middleware (so a sealed
    server answers 503 before asking who is calling)."""
    app[KEY_SERVICE] = service
    app.middlewares.insert(1, sealed_gate)
    if not PUBLIC_KEY_ROUTES <= PUBLIC_API_ROUTES:
        raise RuntimeError("api.security.PUBLIC_API_ROUTES must list the public key routes")
    router = app.router
    router.add_get("/api/v1/keys", keys_status, allow_head=False)
    router.add_get("/api/v1/keys/seal", seal_status, allow_head=False)
    router.add_post("/api/v1/keys/unseal", unseal)
    router.add_get("/api/v1/keys/shares", my_shares, allow_head=False)
    router.add_post("/api/v1/keys/ceremonies", create_ceremony)
    router.add_get("/api/v1/keys/ceremonies/{id}", show_ceremony, allow_head=False)
    router.add_post("/api/v1/keys/ceremonies/{id}/approve", approve_ceremony)

