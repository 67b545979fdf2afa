"""GET /api/v1/jobs/{id}: a background job's state and progress (INTERFACES.md: {"id", "kind",
"state", "done", "total"}, plus its result or error once finished).

Visible to the user who started it and to holders of the permission its kind needs: key
custody's jobs (init, rotate, reencrypt), retention runs and subject requests alike."""

from __future__ import annotations

from uuid import UUID

from aiohttp import web

from api.app import ApiInputError
from api.lifecycle_api import LIFECYCLE_KEY, job_view
from api.security import principal_of
from siprec_server.access import Permission

__all__ = ["setup_jobs"]

_KIND_PERMISSION = {
    "retention": Permission.RETENTION_MANAGE,
    "subject": Permission.SUBJECTS_MANAGE,
    "init": Permission.KEYS_MANAGE,
    "rotate": Permission.KEYS_MANAGE,
    "reencrypt": Permission.KEYS_MANAGE,
}


async def show_job(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    lifecycle = request.app.get(LIFECYCLE_KEY)
    try:
        job_id = UUID(request.match_info["id"])
    except ValueError:
        raise ApiInputError("no such job", status=404, code="not_found") from None
    job = None if lifecycle is None else await lifecycle.jobs.get(job_id)
    if job is None:
        raise ApiInputError("no such job", status=404, code="not_found")
    needed = _KIND_PERMISSION.get(job.kind.split(".", 1)[0])
    if job.created_by != str(principal.user_id) and (
            needed is None or not principal.can(needed)):
        raise ApiInputError("no such job", status=404, code="not_found")
    return web.json_response(job_view(job))


def setup_jobs(app: web.Application) -> None:
    app.router.add_get("/api/v1/jobs/{id}", show_job, allow_head=False)
