"""The HTTP API (aiohttp). Health for now; the control API of INTERFACES.md builds on this."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

DB_KEY = web.AppKey("db", asyncpg.Pool)
RECORDER_KEY = web.AppKey("recorder", object)


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


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
