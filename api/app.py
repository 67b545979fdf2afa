"""The HTTP API (aiohttp). Health for now; the control API of INTERFACES.md builds on this."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import asyncpg
from aiohttp import web

DB_KEY = web.AppKey("db", asyncpg.Pool)
RECORDER_KEY = web.AppKey("recorder", object)


MAX_JSON_BODY = 64 * 1024


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class ApiInputError(ValueError):
    """A request the API cannot take: answered with `status` and a JSON error."""

    def __init__(self, message: str, *, status: int = 400, code: str = "bad_request",
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = dict(headers or {})


async def read_json_object(
    request: web.Request, allowed: frozenset[str], max_bytes: int = MAX_JSON_BODY
) -> dict[str, Any]:
    """The request body as a JSON object with only `allowed` fields, read within a size cap."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiInputError("the body is too large", status=413, code="payload_too_large")
    body = bytearray()
    while chunk := await request.content.read(max_bytes + 1 - len(body)):
        body += chunk
        if len(body) > max_bytes:
            raise ApiInputError("the body is too large", status=413, code="payload_too_large")
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiInputError("the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ApiInputError("the body must be a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ApiInputError(f"unknown fields: {', '.join(unknown)[:200]}")
    return value


async def healthz(request: web.Request) -> web.Response:
    db = request.app[DB_KEY]
    try:
        await db.fetchval("SELECT 1", timeout=2)
        database = "ok"
    except Exception:  # noqa: BLE001 - any failure means the database is not usable
        database = "unreachable"
    status = 200 if database == "ok" else 503
    return web.json_response({"status": "ok" if status == 200 else "degraded",
                              "database": database}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)


def create_api(*, db: asyncpg.Pool, recorder: object) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=1024 * 1024)
    app[DB_KEY] = db
    app[RECORDER_KEY] = recorder
    app.router.add_get("/healthz", healthz)
    return app
