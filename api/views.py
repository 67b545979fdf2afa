"""The JSON shapes of the API: how stored recordings, accounts, audit events and tombstones look
to a client (INTERFACES.md). Storage hands over rows and domain values; only this module decides
field names and formats, and every timestamp goes out through `rfc3339`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from siprec_server.access import ROLES, Permission, Role
from storage.audit import StoredAuditEvent
from storage.erasure import Tombstone
from storage.search import FoundRecording
from storage.users import User

__all__ = [
    "audit_event_view",
    "detail_view",
    "recording_view",
    "rfc3339",
    "tombstone_view",
    "user_view",
]


def rfc3339(value: datetime | None) -> str | None:
    """A timestamp as the API writes every one: RFC 3339, UTC, with a Z."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def _participant_view(p: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": p["participant_id"],
        "aor": p["aor"],
        "name": p["name"],
        "number": p["number"],
        "present": p["present"],
        "joined_at": rfc3339(p["joined_at"]),
        "left_at": rfc3339(p["left_at"]),
    }


def _channel_view(c: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "index": c.get("index"),
        "label": c.get("label"),
        "m_index": c.get("m_index"),
        "participant_ids": list(c.get("participant_ids") or ()),
        "reason": c.get("reason"),
    }


def _stream_view(s: Mapping[str, Any], *, full_stats: bool) -> dict[str, Any]:
    stats: Mapping[str, Any] = s["stats"] or {}
    view = {
        "label": s["label"],
        "m_index": s["m_index"],
        "kind": s["kind"],
        "accepted": s["accepted"],
        "channel": s["channel"],
        "codec": s["codec"],
        "srtp": s["srtp_suite"],
        "packets_received": stats.get("packets_received"),
        "packets_lost": stats.get("packets_lost"),
    }
    if full_stats:
        view["stats"] = dict(stats)
    return view


def _pause_view(p: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "start_s": _seconds(p.get("start_ms")),
        "end_s": _seconds(p.get("end_ms")),
        "source": p.get("source"),
    }


def recording_view(found: FoundRecording, *, full_stats: bool = False) -> dict[str, Any]:
    """A RECORDING as INTERFACES.md defines it (plus a few fields)."""
    row = found.row
    return {
        "id": str(row["id"]),
        "call_id": row["call_id"],
        "session_id": row["session_id"],
        "sip_session_id": row["sip_session_id"],
        "state": row["state"],
        "started_at": rfc3339(row["started_at"]),
        "answered_at": rfc3339(row["answered_at"]),
        "ended_at": rfc3339(row["ended_at"]),
        "end_reason": row["end_reason"],
        "duration_s": _seconds(row["duration_ms"]),
        "participants": [_participant_view(p) for p in found.participants],
        "channels": [_channel_view(c) for c in row["channels"] or ()],
        "streams": [_stream_view(s, full_stats=full_stats) for s in found.streams],
        "pauses": [_pause_view(p) for p in row["pauses"] or ()],
        "dtmf_events": row["dtmf_events"],
        "no_media": row["no_media"],
        "restricted": row.get("restricted", False),
        "recording_mode": row.get("recording_mode", "record"),
        "opted_out_at": rfc3339(row.get("opted_out_at")),
        "erased_at": rfc3339(row["erased_at"]),
        "erased_by": row["erased_by"],
        "erasure_reason": row["erasure_reason"],
    }


def _hex(value: bytes | None) -> str | None:
    return None if value is None else bytes(value).hex()


def detail_view(found: FoundRecording) -> dict[str, Any]:
    """One recording in full (storage.search.find_recording): the RECORDING fields plus sizes,
    hashes, every stream counter and the signature state (not verified; the API verifies on
    request)."""
    row = found.row
    view = recording_view(found, full_stats=True)
    signed = row["signature"] is not None and row["summary"] is not None
    view.update(
        {
            "transport": row["transport"],
            "node_id": row["node_id"],
            "sample_rate": row["sample_rate"],
            "recovered": row["recovered"],
            "has_audio": row["file_path"] is not None,
            "sizes": {
                "plaintext_bytes": row["plaintext_bytes"],
                "ciphertext_bytes": row["ciphertext_bytes"],
            },
            "hashes": {
                "plaintext_sha256": _hex(row["plaintext_sha256"]),
                "ciphertext_sha256": _hex(row["ciphertext_sha256"]),
            },
            "signature": {
                "state": "signed" if signed else "unsigned",
                "key_id": row["signing_key_id"] if signed else None,
                "verified": None,
                "problems": [],
            },
            "metadata_events": row["metadata_events"],
        }
    )
    return view


def tombstone_view(tombstone: Tombstone) -> dict[str, Any]:
    """What DELETE /api/v1/recordings/{id} answers: the tombstone, nothing about the people."""
    return {
        "id": str(tombstone.recording_id),
        "state": "erased",
        "started_at": rfc3339(tombstone.started_at),
        "ended_at": rfc3339(tombstone.ended_at),
        "duration_s": _seconds(tombstone.duration_ms),
        "erased_at": rfc3339(tombstone.erased_at),
        "erased_by": tombstone.erased_by,
        "erasure_reason": tombstone.reason,
    }


def user_view(user: User, now: datetime) -> dict[str, Any]:
    """An API account as the user endpoints show it (never its password hash)."""
    try:
        permissions = sorted(ROLES[Role(user.role)] | {Permission(g) for g in user.grants})
    except ValueError:
        permissions = []
    return {
        "id": str(user.id),
        "username": user.username,
        "role": user.role,
        "permissions": permissions,
        "scopes": list(user.scopes),
        "grants": list(user.grants),
        "disabled": user.disabled,
        "locked": user.locked_until is not None and user.locked_until > now,
        "locked_until": rfc3339(user.locked_until),
        "failed_logins": user.failed_logins,
        "created_at": rfc3339(user.created_at),
        "updated_at": rfc3339(user.updated_at),
        "password_changed_at": rfc3339(user.password_changed_at),
        "last_login_at": rfc3339(user.last_login_at),
    }


def audit_event_view(event: StoredAuditEvent) -> dict[str, Any]:
    """One event of GET /api/v1/audit, with its place in the hash chain."""
    return {
        "seq": event.seq,
        "at": rfc3339(event.at),
        "actor": event.actor,
        "actor_name": event.actor_name,
        "action": event.action,
        "target": event.target,
        "target_name": event.target_name,
        "source": event.source,
        "outcome": event.outcome,
        "details": event.details,
        "prev_hash": event.prev_hash.hex(),
        "hash": event.hash.hex(),
    }
