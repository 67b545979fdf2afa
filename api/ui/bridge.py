"""How the web interface reuses the API instead of copying it.

- Pages get their data by calling the API's own handlers in-process with the page's request
  (`call_api`): the same permission checks (api.security.require), the same scope applied in
  SQL (storage.search), the same audit events (recording.search, recording.view, audit.read,
  ...), the same errors. Whatever the API learns later (restricted recordings, new checks)
  the pages learn with it.
- Scripts of the pages call the API itself, mounted a second time under /ui/api/v1 (`mount_api`)
  where the session cookie and a CSRF token stand in for the bearer token. Audio, waveform
  peaks, CSV export, erasure, annotations, jobs: the very handlers of /api/v1.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import MultiDict

from api.app import ApiInputError
from siprec_server.access import AccessError
from storage.search import SearchError

__all__ = ["ApiAnswer", "call_api", "mount_api", "with_query"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MOUNT = "/ui"
_NOT_MOUNTED = ("/api/v1/auth/", "/api/v1/openapi.json")
"""Log-in and log-out have pages of their own; the API description is public anyway."""


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    status: int
    body: Any = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def code(self) -> str | None:
        err = self.body.get("error") if isinstance(self.body, dict) else None
        return err.get("code") if isinstance(err, dict) else None

    @property
    def message(self) -> str:
        err = self.body.get("error") if isinstance(self.body, dict) else None
        return str(err.get("message", "")) if isinstance(err, dict) else ""


def _failure(status: int, code: str, message: str, **extra: Any) -> ApiAnswer:
    return ApiAnswer(status, {"error": {"code": code, "message": message, **extra}})


async def call_api(handler: Handler, request: web.Request) -> ApiAnswer:
    """Run an API handler for this request and read its JSON answer, errors included (what
    api.app.json_errors would have answered). A database outage propagates: the page says so."""
    try:
        response = await handler(request)
    except ApiInputError as exc:
        return _failure(exc.status, exc.code, str(exc))
    except (AccessError, SearchError) as exc:
        return _failure(400, "bad_request", str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _failure(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    if not isinstance(response, web.Response) or response.body is None:
        return ApiAnswer(response.status)
    body = response.body
    raw = body if isinstance(body, bytes | bytearray) else getattr(body, "_value", b"")
    try:
        return ApiAnswer(response.status, json.loads(raw))
    except ValueError:
        return ApiAnswer(response.status)


def with_query(request: web.Request, params: Mapping[str, str | list[str]]) -> web.Request:
    """The same request (principal, match info) with another query string: what a page hands
    to an API handler when its form fields are not the API's parameters."""
    query: MultiDict[str] = MultiDict()
    for name, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            if item != "":
                query.add(name, item)
    return request.clone(rel_url=request.rel_url.with_query(query))


def mount_api(app: web.Application) -> None:
    """Register every authenticated /api/v1 route again under /ui/api/v1, same handler.
    Call after every API route is added (the composition root does)."""
    for route in list(app.router.routes()):
        resource = route.resource
        if resource is None or route.method == "HEAD":
            continue
        path = resource.canonical
        if not path.startswith("/api/v1/") or path.startswith(_NOT_MOUNTED):
            continue
        # Public API routes (the seal state, unseal) are mounted too: behind the session and
        # CSRF here, which only adds checks.
        app.router.add_route(route.method, MOUNT + path, route.handler)
