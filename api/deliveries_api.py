"""Deliveries and webhooks at the HTTP edge.

    GET   /api/v1/recordings/{id}/deliveries                       search (the recording visible)
    POST  /api/v1/recordings/{id}/deliveries/{destination}/retry   deliveries.manage
    GET   /api/v1/webhooks/deliveries        ?state=dead|pending|delivered|running
                                             deliveries.manage: the dead letters and the rest
    POST  /api/v1/webhooks/deliveries/{id}/retry                   deliveries.manage
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from aiohttp import web

from api.app import DB_KEY, ApiInputError
from api.security import principal_of, require
from api.views import rfc3339
from siprec_server.access import Permission
from siprec_server.services.deliveries import DeliveryService
from storage import deliveries as store
from storage.audit import AuditEvent, record_audit
from storage.search import visible_recording_ids

__all__ = ["DELIVERIES_KEY", "delivery_view", "setup_deliveries", "webhook_view"]

DELIVERIES_KEY = web.AppKey("deliveries", DeliveryService)
WEBHOOK_STATES = ("pending", "running", "delivered", "dead")


def delivery_view(delivery: store.Delivery, service: DeliveryService | None) -> dict[str, Any]:
    dest = None if service is None else service.destination(delivery.destination)
    return {
        "destination": delivery.destination,
        "kind": None if dest is None else dest.kind,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "next_attempt_at": (rfc3339(delivery.next_attempt_at)
                            if delivery.state in ("pending", "running") else None),
        "last_error": delivery.last_error,
        "recipient_fingerprint": delivery.recipient_fingerprint,
        "files": delivery.files,
        "created_at": rfc3339(delivery.created_at),
        "delivered_at": rfc3339(delivery.delivered_at),
    }


def webhook_view(hook: store.WebhookDelivery) -> dict[str, Any]:
    return {
        "id": str(hook.id), "endpoint": hook.endpoint, "event": hook.event,
        "event_id": f"evt-{hook.event_seq}",
        "recording_id": None if hook.recording_id is None else str(hook.recording_id),
        "state": hook.state, "attempts": hook.attempts,
        "next_attempt_at": (rfc3339(hook.next_attempt_at)
                            if hook.state in ("pending", "running") else None),
        "last_status": hook.last_status, "last_error": hook.last_error,
        "created_at": rfc3339(hook.created_at), "delivered_at": rfc3339(hook.delivered_at),
    }


def _uuid(text: str, what: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise ApiInputError(f"no such {what}", status=404, code="not_found") from None


async def _visible(request: web.Request) -> UUID:
    rid = _uuid(request.match_info["id"], "recording")
    if not await visible_recording_ids(request.app[DB_KEY], [rid],
                                       principal_of(request).recording_scope()):
        raise ApiInputError("no such recording", status=404, code="not_found")
    return rid


async def _audit(request: web.Request, action: str, target: str,
                 details: dict[str, Any]) -> None:
    await record_audit(request.app[DB_KEY], AuditEvent(
        actor=str(principal_of(request).user_id), action=action, target=target,
        source=request.remote or "unknown", details=details))


@require(Permission.SEARCH, action="recording.deliveries")
async def list_deliveries(request: web.Request) -> web.StreamResponse:
    rid = await _visible(request)
    service = request.app.get(DELIVERIES_KEY)
    found = await store.deliveries_of(request.app[DB_KEY], rid)
    return web.json_response({"items": [delivery_view(d, service) for d in found]})


@require(Permission.DELIVERIES_MANAGE, action="delivery.retry")
async def retry_delivery(request: web.Request) -> web.StreamResponse:
    rid = await _visible(request)
    destination = request.match_info["destination"]
    retried = await store.retry_delivery(request.app[DB_KEY], rid, destination,
                                         now=datetime.now(UTC))
    if retried is None:
        raise ApiInputError("no failed delivery of this recording to that destination",
                            status=409, code="nothing_to_retry")
    await _audit(request, "delivery.retry", str(rid), {"destination": destination})
    service = request.app.get(DELIVERIES_KEY)
    if service is not None:
        service.wake()
    return web.json_response(delivery_view(retried, service), status=202)


@require(Permission.DELIVERIES_MANAGE, action="webhook.list")
async def list_webhooks(request: web.Request) -> web.StreamResponse:
    state = request.query.get("state")
    if state is not None and state not in WEBHOOK_STATES:
        raise ApiInputError(f"state: one of {', '.join(WEBHOOK_STATES)}")
    found = await store.list_webhook_deliveries(request.app[DB_KEY], state=state)
    return web.json_response({"items": [webhook_view(h) for h in found]})


@require(Permission.DELIVERIES_MANAGE, action="webhook.retry")
async def retry_webhook(request: web.Request) -> web.StreamResponse:
    hook_id = _uuid(request.match_info["id"], "webhook delivery")
    retried = await store.retry_webhook(request.app[DB_KEY], hook_id, now=datetime.now(UTC))
    if retried is None:
        raise ApiInputError("no dead webhook delivery with this id", status=409,
                            code="nothing_to_retry")
    await _audit(request, "webhook.retry", str(hook_id), {"endpoint": retried.endpoint})
    service = request.app.get(DELIVERIES_KEY)
    if service is not None:
        service.wake()
    return web.json_response(webhook_view(retried), status=202)


def setup_deliveries(app: web.Application) -> None:
    router = app.router
    router.add_get("/api/v1/recordings/{id}/deliveries", list_deliveries, allow_head=False)
    router.add_post("/api/v1/recordings/{id}/deliveries/{destination}/retry", retry_delivery)
    router.add_get("/api/v1/webhooks/deliveries", list_webhooks, allow_head=False)
    router.add_post("/api/v1/webhooks/deliveries/{id}/retry", retry_webhook)
