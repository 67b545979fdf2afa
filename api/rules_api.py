"""Recording rules, opt-out and restriction (INTERFACES.md "Lifecycle (v2)").

    GET|POST          /api/v1/recording-rules          rules.manage
    GET|PATCH|DELETE  /api/v1/recording-rules/{id}     rules.manage
    POST              /api/v1/calls/{ref}/opt-out      opt_out   {"keep": true|false} (optional:
                                                       the deciding rule's choice, else the
                                                       configured default)
    POST              /api/v1/recordings/{id}/restricted   rules.manage + restricted
                                                       {"restricted": true|false}

An opt-out finds the call by Call-ID, SIPREC session id or recording id within the caller's
scope, restricted calls included: withdrawing consent must never fail because the integration
that relays it may not see the recording (the answer tells it nothing it did not send).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from aiohttp import web

from api.app import DB_KEY, ApiInputError, read_json_object
from api.lifecycle_api import LIFECYCLE_KEY
from api.security import principal_of, require
from api.views import rfc3339
from siprec_server.access import Permission, RecordingScope
from siprec_server.compliance import ComplianceError
from siprec_server.services.recording_rules import (
    CallControl,
    OptOutError,
    OptOutResult,
    RecordingRulesService,
    RuleNotFound,
    rule_view,
)
from storage import search
from storage.rules import RuleConflict

__all__ = ["CALLS_KEY", "setup_rules"]

CALLS_KEY = web.AppKey("calls", CallControl)
"""app[CALLS_KEY]: this node's live calls (the recorder), for opt-out."""

MAX_BODY = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _service(request: web.Request) -> RecordingRulesService:
    lifecycle = request.app.get(LIFECYCLE_KEY)
    if lifecycle is None or lifecycle.rules is None:
        raise ApiInputError("recording rules are not running on this server", status=503,
                            code="unavailable")
    return lifecycle.rules


def _errors(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def answering(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ComplianceError as exc:
            raise ApiInputError(str(exc)) from None
        except RuleConflict as exc:
            raise ApiInputError(str(exc), status=409, code="conflict") from None
        except RuleNotFound:
            raise ApiInputError("no such rule", status=404, code="not_found") from None
        except OptOutError as exc:
            raise ApiInputError(str(exc), status=exc.status, code=exc.code) from None

    return answering


def _uuid(request: web.Request, what: str) -> UUID:
    try:
        return UUID(request.match_info["id"])
    except ValueError:
        raise ApiInputError(f"no such {what}", status=404, code="not_found") from None


def _actor(request: web.Request) -> str:
    return str(principal_of(request).user_id)


@require(Permission.RULES_MANAGE, action="rule.list")
@_errors
async def list_rules(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    return web.json_response({"items": [rule_view(r) for r in await service.rules()],
                              "default_action": service.default_action,
                              "opt_out_default": service.default_opt_out})


@require(Permission.RULES_MANAGE, action="rule.create")
@_errors
async def create_rule(request: web.Request) -> web.StreamResponse:
    body = await read_json_object(request, frozenset({"name", "action", "restricted", "opt_out",
                                                      "priority", "match"}), MAX_BODY)
    rule = await _service(request).create_rule(body, actor=_actor(request),
                                               source=request.remote)
    return web.json_response(rule_view(rule), status=201)


@require(Permission.RULES_MANAGE, action="rule.view")
@_errors
async def show_rule(request: web.Request) -> web.StreamResponse:
    return web.json_response(rule_view(await _service(request).rule(_uuid(request, "rule"))))


@require(Permission.RULES_MANAGE, action="rule.change")
@_errors
async def patch_rule(request: web.Request) -> web.StreamResponse:
    body = await read_json_object(request, frozenset({"name", "action", "restricted", "opt_out",
                                                      "priority", "match"}), MAX_BODY)
    rule = await _service(request).change_rule(_uuid(request, "rule"), body,
                                               actor=_actor(request), source=request.remote)
    return web.json_response(rule_view(rule))


@require(Permission.RULES_MANAGE, action="rule.delete")
@_errors
async def delete_rule(request: web.Request) -> web.StreamResponse:
    rule = await _service(request).delete_rule(_uuid(request, "rule"), actor=_actor(request),
                                               source=request.remote)
    return web.json_response({**rule_view(rule), "deleted": True})


def _opt_out_view(result: OptOutResult) -> dict[str, Any]:
    view: dict[str, Any] = {"id": str(result.recording_id), "already": result.already,
                            "keep": result.keep, "erased": result.erased}
    if result.refused is not None:
        view["erasure_refused"] = result.refused
        if result.matter is not None:
            view["matter"] = result.matter
        if result.until is not None:
            view["retained_until"] = rfc3339(result.until)
    return view


@require(Permission.OPT_OUT, action="recording.opt_out")
@_errors
async def opt_out(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    ref = request.match_info["ref"]
    if not ref or len(ref) > 256 or "\x00" in ref:
        raise ApiInputError("no such call", status=404, code="not_found")
    body = await read_json_object(request, frozenset({"keep"}), MAX_BODY)
    keep = body.get("keep")
    if keep is not None and not isinstance(keep, bool):
        raise ApiInputError("keep: true (stop recording, keep what was recorded) or false "
                            "(stop and erase it)")
    scope = _WithRestricted(principal.recording_scope())
    matches = await search.find_by_reference(request.app[DB_KEY], ref, scope)
    if not matches:
        raise ApiInputError("no such call", status=404, code="not_found")
    live = [m for m in matches if m["state"] in ("offered", "recording")]
    targets = live or matches[:1]
    service = _service(request)
    results = []
    for match in targets:
        result = await service.opt_out(match["id"], keep=keep, actor=_actor(request),
                                       source=request.remote,
                                       calls=request.app.get(CALLS_KEY))
        results.append(_opt_out_view(result))
    return web.json_response({"opted_out": True, "recordings": results})


class _WithRestricted:
    """A principal's scope that also finds restricted recordings (opt-out only)."""

    sees_restricted = True

    def __init__(self, scope: RecordingScope) -> None:
        self._scope = scope

    def __call__(self, alias: str, first_param: int) -> tuple[str, list[object]]:
        return self._scope(alias, first_param)


@require(Permission.RULES_MANAGE, action="recording.restrict")
@_errors
async def restrict(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    recording_id = _uuid(request, "recording")
    body = await read_json_object(request, frozenset({"restricted"}), MAX_BODY)
    restricted = body.get("restricted")
    if not isinstance(restricted, bool):
        raise ApiInputError("restricted: true or false")
    # Only someone who may see restricted recordings may change the flag (un-restricting one
    # would otherwise reveal it; restricting one they cannot find is a 404 like any other).
    if not principal.sees_restricted:
        raise ApiInputError("this needs the restricted permission", status=403,
                            code="forbidden")
    if not await search.visible_recording_ids(request.app[DB_KEY], [recording_id],
                                              principal.recording_scope()):
        raise ApiInputError("no such recording", status=404, code="not_found")
    before = await _service(request).set_restricted(recording_id, restricted,
                                                    actor=_actor(request),
                                                    source=request.remote)
    return web.json_response({"id": str(recording_id), "restricted": restricted,
                              "changed": before != restricted})


def setup_rules(app: web.Application) -> None:
    router = app.router
    router.add_get("/api/v1/recording-rules", list_rules, allow_head=False)
    router.add_post("/api/v1/recording-rules", create_rule)
    router.add_get("/api/v1/recording-rules/{id}", show_rule, allow_head=False)
    router.add_patch("/api/v1/recording-rules/{id}", patch_rule)
    router.add_delete("/api/v1/recording-rules/{id}", delete_rule)
    router.add_post("/api/v1/calls/{ref}/opt-out", opt_out)
    router.add_post("/api/v1/recordings/{id}/restricted", restrict)
