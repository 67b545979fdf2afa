"""The HTTP API (aiohttp). Health for now; the control API of INTERFACES.md builds on this."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from siprec_server.access import AccessError
from siprec_server.logs import get_logger
from storage.database import reachable
from storage.errors import StorageUnavailable, is_unavailable
from storage.search import SearchError
from storage.write_behind import WriteBehind

log = get_logger("api")

DB_KEY = web.AppKey("db", asyncpg.Pool)
WRITES_KEY = web.AppKey("writes", object)
DATABASE_RETRY_AFTER_S = 5


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
    if not _storable(value):
        raise ApiInputError("text must be valid Unicode without NUL characters")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ApiInputError(f"unknown fields: {', '.join(unknown)[:200]}")
    return value


async def healthz(request: web.Request) -> web.Response:
    """Liveness and readiness: 200 when the database answers and no write waits for it; 503
    and "degraded" otherwise (recording goes on; new calls are refused until it is back)."""
    database = "ok" if await reachable(request.app[DB_KEY]) else "unreachable"
    body: dict[str, Any] = {"database": database}
    writes = request.app.get(WRITES_KEY)
    waiting = 0
    if isinstance(writes, WriteBehind):
        waiting = writes.pending
        body["waiting_writes"] = waiting
    healthy = database == "ok" and waiting == 0
    body = {"status": "ok" if healthy else "degraded", **body}
    return web.json_response(body, status=200 if healthy else 503)


def storable_text(text: str) -> bool:
    """Text PostgreSQL, argon2 and the logs can take: no NUL, no lone surrogates (JSON's \\ud800
    escapes and percent-decoding can produce both)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _storable(value: object) -> bool:
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    return True


_TIMESTAMP_RANGE = (datetime(1970, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC))


def parse_timestamp(name: str, text: str) -> datetime:
    """An RFC 3339 timestamp from a query parameter, with a zone, within what is storable."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ApiInputError(f"{name}: expected an RFC 3339 timestamp") from None
    if value.tzinfo is None:
        raise ApiInputError(f"{name}: the timestamp needs a time zone (Z or +hh:mm)")
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ApiInputError(f"{name}: out of range") from None
    if not _TIMESTAMP_RANGE[0] <= value < _TIMESTAMP_RANGE[1]:
        raise ApiInputError(f"{name}: out of range (1970 to 8999)")
    return value


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error is JSON, and this is the one place that writes it: bad text in the path or
    query is refused before any handler; handlers raise ApiInputError (or let AccessError and
    SearchError through, both a 400); an unavailable database is a 503 with Retry-After, and
    any other failure is logged (without the request's values) and answered 500."""
    if not all(storable_text(v) for v in request.match_info.values()):
        # No recording, user or call has such an id.
        return error(404, "not_found", "no such resource")
    if not all(storable_text(v) for v in request.query.values()):
        return error(400, "bad_request", "text must be valid Unicode without NUL characters")
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except ApiInputError as exc:
        response = error(exc.status, exc.code, str(exc))
        response.headers.update(exc.headers)
        return response
    except (AccessError, SearchError) as exc:
        # A value the access rules or the search refuse: the request's fault.
        return error(400, "bad_request", str(exc))
    except Exception as exc:  # noqa: BLE001 - the client gets JSON, the log gets the kind
        if isinstance(exc, StorageUnavailable) or is_unavailable(exc):
            response = error(503, "database_unavailable",
                             "the recordings database is unavailable; retry shortly")
            response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
            return response
        log.error("api_request_failed", route=request.match_info.route.resource.canonical
                  if request.match_info.route.resource else "?", error=type(exc).__name__)
        return error(500, "internal_error", "the request could not be completed")


def create_api(*, db: asyncpg.Pool, writes: object | None = None) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=1024 * 1024)
    app[DB_KEY] = db
    app[WRITES_KEY] = writes
    app.router.add_get("/healthz", healthz)
    return app
