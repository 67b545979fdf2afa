"""Lifecycle endpoints: retention policies and runs, legal holds, data-subject requests and
annotations (INTERFACES.md "Lifecycle (v2)").

    GET|POST   /api/v1/retention-policies                retention.manage
    GET|PATCH|DELETE /api/v1/retention-policies/{id}     retention.manage; a change that could
                                                         shorten retention answers 202 and
    POST       /api/v1/retention-policies/{id}/approve   waits for a second user's approval
    POST       /api/v1/retention/run                     retention.manage  {"dry_run"} -> JOB
    GET|POST   /api/v1/holds                             holds.manage
    GET        /api/v1/holds/{id}                        holds.manage
    POST       /api/v1/holds/{id}/release                holds.manage, two distinct users
    GET|POST   /api/v1/subject-requests                  subjects.manage (unrestricted users)
    GET        /api/v1/subject-requests/{id}             subjects.manage
    GET        /api/v1/subject-requests/{id}/bundle      subjects.manage: the encrypted file
    GET|POST|DELETE /api/v1/recordings/{id}/annotations  search to read, annotate to change
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from aiohttp import web

from api.app import DB_KEY, ApiInputError, read_json_object
from api.security import principal_of, require
from api.views import rfc3339
from siprec_server.access import Permission, Principal
from siprec_server.compliance import ComplianceError
from siprec_server.compliance.holds import parse_hold_query, parse_text
from siprec_server.services.lifecycle import LifecycleServices
from siprec_server.services.retention import PolicyNotFound, RetentionService, policy_view
from siprec_server.services.subjects import request_view
from storage import annotations as notes
from storage import holds
from storage import subjects as subject_store
from storage.audit import AuditEvent, record_audit
from storage.jobs import Job
from storage.retention import PolicyConflict
from storage.search import visible_recording_ids

__all__ = ["LIFECYCLE_KEY", "Lifecycle", "hold_view", "job_view", "setup_lifecycle"]

MAX_BODY = 64 * 1024
MAX_HOLD_RECORDINGS = 10_000
MAX_ANNOTATION = 2000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


Lifecycle = LifecycleServices
LIFECYCLE_KEY = web.AppKey("lifecycle", LifecycleServices)
"""app[LIFECYCLE_KEY]: the node's lifecycle services (siprec_server/app.py builds them)."""


def _lifecycle(request: web.Request) -> Lifecycle:
    lifecycle = request.app.get(LIFECYCLE_KEY)
    if lifecycle is None:
        raise ApiInputError("lifecycle services are not running on this server", status=503,
                            code="unavailable")
    return lifecycle


def _compliance_errors(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def answering(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ComplianceError as exc:
            raise ApiInputError(str(exc)) from None
        except PolicyConflict as exc:
            raise ApiInputError(str(exc), status=409, code="conflict") from None

    return answering


def _uuid(request: web.Request, name: str = "id", what: str = "resource") -> UUID:
    try:
        return UUID(request.match_info[name])
    except ValueError:
        raise ApiInputError(f"no such {what}", status=404, code="not_found") from None


def _actor(request: web.Request) -> str:
    return str(principal_of(request).user_id)


async def _audit(request: web.Request, action: str, *, target: str | None = None,
                 outcome: str = "success", details: Mapping[str, Any] | None = None) -> None:
    await record_audit(request.app[DB_KEY], AuditEvent(
        actor=_actor(request), action=action, outcome=outcome, target=target,
        source=request.remote or "unknown", details=details))


def job_view(job: Job) -> dict[str, Any]:
    return {"id": str(job.id), "kind": job.kind, "state": job.state, "done": job.done,
            "total": job.total, "created_at": rfc3339(job.created_at),
            "updated_at": rfc3339(job.updated_at), "result": job.result, "error": job.error}


# ------------------------------------------------------------------------------ retention


@require(Permission.RETENTION_MANAGE, action="retention.policy_list")
@_compliance_errors
async def list_policies(request: web.Request) -> web.StreamResponse:
    service = _lifecycle(request).retention
    items = [policy_view(p, pending) for p, pending in await service.policies()]
    limits = service.limits
    return web.json_response({"items": items, "default_days": limits.default_days,
                              "floor_days": limits.floor_days,
                              "ceiling_days": limits.ceiling_days})


@require(Permission.RETENTION_MANAGE, action="retention.policy_create")
@_compliance_errors
async def create_policy(request: web.Request) -> web.StreamResponse:
    body = await read_json_object(request, frozenset({"name", "days", "match",
                                                      "legal_obligation", "basis", "preset"}),
                                  MAX_BODY)
    policy = await _lifecycle(request).retention.create_policy(
        body, actor=_actor(request), source=request.remote)
    return web.json_response(policy_view(policy), status=201)


async def _policy_or_404(service: RetentionService, policy_id: UUID) -> Any:
    try:
        return await service.policy(policy_id)
    except PolicyNotFound:
        raise ApiInputError("no such policy", status=404, code="not_found") from None


@require(Permission.RETENTION_MANAGE, action="retention.policy_view")
@_compliance_errors
async def show_policy(request: web.Request) -> web.StreamResponse:
    policy, pending = await _policy_or_404(_lifecycle(request).retention,
                                           _uuid(request, what="policy"))
    return web.json_response(policy_view(policy, pending))


async def _change(request: web.Request, body: Mapping[str, Any] | None) -> web.StreamResponse:
    service = _lifecycle(request).retention
    policy_id = _uuid(request, what="policy")
    await _policy_or_404(service, policy_id)
    policy, pending, applied = await service.change_policy(
        policy_id, body, actor=_actor(request), source=request.remote)
    # 202: parked until a second user approves it (POST .../approve).
    return web.json_response(policy_view(policy, pending), status=200 if applied else 202)


@require(Permission.RETENTION_MANAGE, action="retention.policy_change")
@_compliance_errors
async def patch_policy(request: web.Request) -> web.StreamResponse:
    body = await read_json_object(request, frozenset({"name", "days", "match",
                                                      "legal_obligation", "basis", "preset"}),
                                  MAX_BODY)
    return await _change(request, body)


@require(Permission.RETENTION_MANAGE, action="retention.policy_delete")
@_compliance_errors
async def delete_policy(request: web.Request) -> web.StreamResponse:
    return await _change(request, None)


@require(Permission.RETENTION_MANAGE, action="retention.policy_change_approved")
@_compliance_errors
async def approve_policy(request: web.Request) -> web.StreamResponse:
    service = _lifecycle(request).retention
    policy_id = _uuid(request, what="policy")
    await _policy_or_404(service, policy_id)
    try:
        policy = await service.approve_change(policy_id, actor=_actor(request),
                                              source=request.remote)
    except LookupError:
        raise ApiInputError("no change of this policy waits for approval", status=409,
                            code="nothing_pending") from None
    if policy is None:
        return web.json_response({"id": str(policy_id), "deleted": True})
    return web.json_response(policy_view(policy))


@require(Permission.RETENTION_MANAGE, action="retention.run")
@_compliance_errors
async def run_retention(request: web.Request) -> web.StreamResponse:
    body = await read_json_object(request, frozenset({"dry_run"}), MAX_BODY)
    dry_run = body.get("dry_run", True)
    if not isinstance(dry_run, bool):
        raise ApiInputError("dry_run: true or false")
    lifecycle = _lifecycle(request)
    job = await lifecycle.retention.start_run(dry_run=dry_run, actor=_actor(request))
    assert job is not None
    await _audit(request, "retention.run_requested", target=str(job.id),
                 details={"dry_run": dry_run})
    if lifecycle.runner is not None:
        lifecycle.runner.wake()
    return web.json_response(job_view(job), status=202)


# ------------------------------------------------------------------------------ holds


def hold_view(hold: holds.Hold) -> dict[str, Any]:
    return {
        "id": str(hold.id), "matter": hold.matter, "reason": hold.reason,
        "state": hold.state, "query": None if hold.query is None else hold.query.as_dict(),
        "recordings": hold.recordings, "created_by": hold.created_by,
        "created_at": rfc3339(hold.created_at),
        "release_requested_by": hold.release_requested_by,
        "released_by": hold.released_by, "released_at": rfc3339(hold.released_at),
    }


@require(Permission.HOLDS_MANAGE, action="hold.list")
@_compliance_errors
async def list_holds(request: web.Request) -> web.StreamResponse:
    found = await holds.list_holds(request.app[DB_KEY])
    return web.json_response({"items": [hold_view(h) for h in found]})


@require(Permission.HOLDS_MANAGE, action="hold.create")
@_compliance_errors
async def create_hold(request: web.Request) -> web.StreamResponse:
    body = await read_json_object(request, frozenset({"matter", "reason", "recording_ids",
                                                      "query"}), MAX_BODY * 16)
    matter = parse_text("matter", body.get("matter"), 200)
    reason = parse_text("reason", body.get("reason"), 1000)
    raw_ids = body.get("recording_ids", [])
    if not isinstance(raw_ids, list) or len(raw_ids) > MAX_HOLD_RECORDINGS:
        raise ApiInputError(f"recording_ids: a list of at most {MAX_HOLD_RECORDINGS} ids")
    try:
        ids = list(dict.fromkeys(UUID(str(v)) for v in raw_ids))
    except ValueError:
        raise ApiInputError("recording_ids: recording ids (UUIDs)") from None
    query = parse_hold_query(body["query"]) if body.get("query") is not None else None
    if not ids and query is None:
        raise ApiInputError("recording_ids or query: what the hold keeps")
    hold, unknown = await holds.create_hold(
        request.app[DB_KEY], matter=matter, reason=reason, recording_ids=ids, query=query,
        created_by=_actor(request), now=datetime.now(UTC))
    await _audit(request, "hold.create", target=str(hold.id),
                 details={"recordings": hold.recordings, "query": query is not None,
                          "unknown_ids": len(unknown)})
    view = hold_view(hold)
    view["unknown_recording_ids"] = [str(u) for u in unknown]
    return web.json_response(view, status=201)


@require(Permission.HOLDS_MANAGE, action="hold.view")
@_compliance_errors
async def show_hold(request: web.Request) -> web.StreamResponse:
    hold = await holds.get_hold(request.app[DB_KEY], _uuid(request, what="hold"))
    if hold is None:
        raise ApiInputError("no such hold", status=404, code="not_found")
    return web.json_response(hold_view(hold))


@require(Permission.HOLDS_MANAGE, action="hold.release")
@_compliance_errors
async def release_hold(request: web.Request) -> web.StreamResponse:
    hold_id = _uuid(request, what="hold")
    try:
        hold = await holds.release_hold(request.app[DB_KEY], hold_id, actor=_actor(request),
                                        now=datetime.now(UTC))
    except holds.HoldNotFound:
        raise ApiInputError("no such hold", status=404, code="not_found") from None
    except holds.ReleaseRefused as exc:
        await _audit(request, "hold.release", target=str(hold_id), outcome="failure",
                     details={"refused": str(exc)})
        raise ApiInputError(str(exc), status=409, code="second_user_required") from None
    released = hold.state == "released"
    await _audit(request, "hold.release" if released else "hold.release_requested",
                 target=str(hold_id))
    return web.json_response(hold_view(hold), status=200 if released else 202)


# ------------------------------------------------------------------------------ subjects


def _unrestricted(principal: Principal) -> None:
    if not principal.unrestricted:
        raise ApiInputError("a data-subject request covers every recording: it needs an "
                            "account without scope restrictions", status=403, code="forbidden")


@require(Permission.SUBJECTS_MANAGE, action="subject.request")
@_compliance_errors
async def create_subject_request(request: web.Request) -> web.StreamResponse:
    _unrestricted(principal_of(request))
    body = await read_json_object(request, frozenset({"kind", "participant", "name",
                                                      "recipient"}), MAX_BODY)
    lifecycle = _lifecycle(request)
    created = await lifecycle.subjects.create(
        body, actor=_actor(request), source=request.remote,
        include_restricted=principal_of(request).sees_restricted)
    if lifecycle.runner is not None:
        lifecycle.runner.wake()
    view = request_view(created)
    return web.json_response(view, status=202)


@require(Permission.SUBJECTS_MANAGE, action="subject.list")
@_compliance_errors
async def list_subject_requests(request: web.Request) -> web.StreamResponse:
    _unrestricted(principal_of(request))
    found = await subject_store.list_requests(request.app[DB_KEY])
    return web.json_response({"items": [request_view(r) for r in found]})


async def _request_or_404(request: web.Request) -> subject_store.SubjectRequest:
    found = await subject_store.get_request(request.app[DB_KEY],
                                            _uuid(request, what="subject request"))
    if found is None:
        raise ApiInputError("no such subject request", status=404, code="not_found")
    return found


@require(Permission.SUBJECTS_MANAGE, action="subject.view")
@_compliance_errors
async def show_subject_request(request: web.Request) -> web.StreamResponse:
    _unrestricted(principal_of(request))
    found = await _request_or_404(request)
    items = await subject_store.list_items(request.app[DB_KEY], found.id)
    return web.json_response(request_view(found, items))


@require(Permission.SUBJECTS_MANAGE, action="subject.bundle_download")
@_compliance_errors
async def download_bundle(request: web.Request) -> web.StreamResponse:
    _unrestricted(principal_of(request))
    found = await _request_or_404(request)
    if found.kind != "access" or found.state != "done" or found.bundle_path is None:
        raise ApiInputError("no bundle (not an access request, not finished, or expired)",
                            status=404, code="no_bundle")
    path = Path(found.bundle_path)
    if not path.is_file():
        raise ApiInputError(f"the bundle is on node {found.bundle_node!r}, not this one",
                            status=409, code="other_node")
    await _audit(request, "subject.bundle_download", target=str(found.id),
                 details={"bytes": found.bundle_bytes})
    return web.FileResponse(path, headers={
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f'attachment; filename="{path.name}"',
        "Cache-Control": "no-store",
    })


# ------------------------------------------------------------------------------ annotations


def _scope(principal: Principal) -> Any:
    return principal.recording_scope()


async def _visible_recording(request: web.Request) -> UUID:
    rid = _uuid(request, what="recording")
    if not await visible_recording_ids(request.app[DB_KEY], [rid],
                                       _scope(principal_of(request))):
        raise ApiInputError("no such recording", status=404, code="not_found")
    return rid


@require(Permission.SEARCH, action="annotation.list")
@_compliance_errors
async def list_annotations(request: web.Request) -> web.StreamResponse:
    rid = await _visible_recording(request)
    found = (await notes.annotations_of(request.app[DB_KEY], [rid]))[rid]
    await _audit(request, "annotation.list", target=str(rid), details={"count": len(found)})
    return web.json_response({"items": [a.as_dict() for a in found]})


@require(Permission.ANNOTATE, action="annotation.add")
@_compliance_errors
async def add_annotation(request: web.Request) -> web.StreamResponse:
    rid = await _visible_recording(request)
    body = await read_json_object(request, frozenset({"kind", "value"}), MAX_BODY)
    kind = body.get("kind")
    if kind not in notes.KINDS:
        raise ApiInputError(f"kind: one of {', '.join(notes.KINDS)}")
    limit = MAX_ANNOTATION if kind == "comment" else 100
    value = parse_text("value", body.get("value"), limit)
    if kind == "tag":
        value = value.lower()
    added = await notes.add_annotation(request.app[DB_KEY], rid, kind, value,
                                       actor=_actor(request), now=datetime.now(UTC))
    if added is None:
        raise ApiInputError("the recording was erased", status=410, code="erased")
    await _audit(request, "annotation.add", target=str(rid),
                 details={"annotation": str(added.id), "kind": kind})
    return web.json_response(added.as_dict(), status=201)


@require(Permission.ANNOTATE, action="annotation.delete")
@_compliance_errors
async def delete_annotation(request: web.Request) -> web.StreamResponse:
    rid = await _visible_recording(request)
    body = await read_json_object(request, frozenset({"id"}), MAX_BODY)
    try:
        annotation_id = UUID(str(body.get("id")))
    except ValueError:
        raise ApiInputError("id: the annotation's id") from None
    removed = await notes.delete_annotation(request.app[DB_KEY], rid, annotation_id)
    if removed is None:
        raise ApiInputError("no such annotation", status=404, code="not_found")
    await _audit(request, "annotation.delete", target=str(rid),
                 details={"annotation": str(annotation_id), "kind": removed.kind})
    return web.json_response(removed.as_dict())


# ------------------------------------------------------------------------------ wiring


def setup_lifecycle(app: web.Application) -> None:
    """Add the lifecycle routes; set LIFECYCLE_KEY on the app for them to work (503 before)."""
    router = app.router
    router.add_get("/api/v1/retention-policies", list_policies, allow_head=False)
    router.add_post("/api/v1/retention-policies", create_policy)
    router.add_get("/api/v1/retention-policies/{id}", show_policy, allow_head=False)
    router.add_patch("/api/v1/retention-policies/{id}", patch_policy)
    router.add_delete("/api/v1/retention-policies/{id}", delete_policy)
    router.add_post("/api/v1/retention-policies/{id}/approve", approve_policy)
    router.add_post("/api/v1/retention/run", run_retention)
    router.add_get("/api/v1/holds", list_holds, allow_head=False)
    router.add_post("/api/v1/holds", create_hold)
    router.add_get("/api/v1/holds/{id}", show_hold, allow_head=False)
    router.add_post("/api/v1/holds/{id}/release", release_hold)
    router.add_get("/api/v1/subject-requests", list_subject_requests, allow_head=False)
    router.add_post("/api/v1/subject-requests", create_subject_request)
    router.add_get("/api/v1/subject-requests/{id}", show_subject_request, allow_head=False)
    router.add_get("/api/v1/subject-requests/{id}/bundle", download_bundle, allow_head=False)
    router.add_get("/api/v1/recordings/{id}/annotations", list_annotations, allow_head=False)
    router.add_post("/api/v1/recordings/{id}/annotations", add_annotation)
    router.add_delete("/api/v1/recordings/{id}/annotations", delete_annotation)
