"""The key custody part of the OpenAPI document (api/openapi.py merges it)."""

from __future__ import annotations

from typing import Any

__all__ = ["KEY_PATHS", "KEY_SCHEMAS"]

Schema = dict[str, Any]

_TIME = {"type": "string", "format": "date-time"}
_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_UUID = {"type": "string", "format": "uuid"}
_INT = {"type": "integer"}
_PROGRESS = {"type": "array", "items": _INT, "minItems": 2, "maxItems": 2,
             "description": "[shares submitted, shares needed]"}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: list[str], properties: dict[str, Schema]) -> Schema:
    return {"type": "object", "required": required, "properties": properties}


def _json(schema: str, description: str = "OK") -> Schema:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _errors(*statuses: int) -> dict[str, Schema]:
    text = {400: "Bad request (a refused share: code share_refused)",
            401: "No valid bearer token", 403: "Permission missing, or wrong password",
            404: "Not found", 409: "Conflict: approved twice by one user, ceremony expired or "
            "not pending, wrong state", 413: "Body too large",
            503: "Sealed (code sealed) or database unavailable"}
    return {str(s): _json("Error", text[s]) for s in statuses}


def _body(schema: str) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


_ID = {"name": "id", "in": "path", "required": True, "description": "a UUID", "schema": _UUID}

KEY_SCHEMAS: dict[str, Schema] = {
    "KeyVersion": _object(
        ["id", "state", "created_at", "activated_at", "age_days", "rotation_due_at"], {
            "id": {"type": "string", "description": "the key id wrapped data keys name"},
            "seq": _INT,
            "custody": {"type": "string", "enum": ["local", "shamir", "pkcs11"]},
            "state": {"type": "string", "enum": ["active", "retiring", "retired", "destroyed"]},
            "created_at": _TIME, "activated_at": _TIME_OR_NULL, "retired_at": _TIME_OR_NULL,
            "destroyed_at": _TIME_OR_NULL,
            "age_days": _INT, "cryptoperiod_days": _INT, "rotation_due_at": _TIME,
            "rotation_due": {"type": "boolean",
                             "description": "within keys.reminder_days of its cryptoperiod"},
            "expired": {"type": "boolean", "description": "past its cryptoperiod (it still "
                                                          "works; an alert goes out daily)"},
            "threshold": {"type": ["integer", "null"]}, "shares": {"type": ["integer", "null"]},
        }),
    "KeyStatus": _object(["sealed", "threshold", "shares", "versions"], {
        "custody": {"type": "string", "enum": ["local", "shamir", "pkcs11"]},
        "sealed": {"type": "boolean"}, "initialised": {"type": "boolean"},
        "threshold": _INT, "shares": _INT, "progress": _PROGRESS,
        "versions": {"type": "array", "items": _ref("KeyVersion")},
    }),
    "SealStatus": _object(["sealed", "initialised", "progress"], {
        "sealed": {"type": "boolean"}, "initialised": {"type": "boolean"},
        "custody": {"type": "string"}, "progress": _PROGRESS,
    }),
    "UnsealRequest": _object(["share"], {
        "share": {"type": "string", "description": "one custodian's share (srs-share1:...)"}}),
    "UnsealProgress": _object(["sealed", "progress"], {
        "sealed": {"type": "boolean"}, "progress": _PROGRESS,
        "version": {"type": ["string", "null"]}}),
    "ShareEnvelopes": _object(["shares"], {
        "shares": {"type": "array", "items": _object(["version_id", "x", "envelope"], {
            "version_id": {"type": "string"}, "x": _INT,
            "envelope": {"type": "string", "description": "the share encrypted to the caller "
                                                          "(age or OpenPGP armor); given once"},
        })}}),
    "CeremonyRequest": _object(["kind"], {
        "kind": {"type": "string", "enum": ["init", "rotate", "reencrypt"]},
        "threshold": {"type": "integer", "minimum": 2, "maximum": 10},
        "custodians": {"type": "array", "minItems": 2, "maxItems": 10, "items": _object(
            ["user"], {"user": {"type": "string"}, "age": {"type": "string"},
                       "openpgp": {"type": "string"}, "passphrase": {"type": "string"}})},
        "recording_ids": {"type": "array", "items": _UUID},
        "dry_run": {"type": "boolean", "description": "rotate: only say what would be done"},
    }),
    "Ceremony": _object(["id", "kind", "state", "needed", "approvals", "job_id"], {
        "id": _UUID, "kind": {"type": "string", "enum": ["init", "rotate", "reencrypt"]},
        "state": {"type": "string", "enum": ["pending", "approved", "expired"]},
        "needed": _INT,
        "approvals": {"type": "array", "items": _object(["user", "at"], {
            "user": {"type": "string"}, "user_id": _UUID, "at": _TIME})},
        "job_id": {"type": ["string", "null"], "format": "uuid"},
        "created_by": {"type": "string"}, "created_at": _TIME, "expires_at": _TIME,
        "threshold": {"type": ["integer", "null"]},
        "custodians": {"type": "array", "items": _object(["user", "kind"], {
            "user": {"type": "string"}, "kind": {"type": "string"},
            "fingerprint": {"type": "string"}})},
        "recordings": _INT,
    }),
    "RotationPlan": _object(["dry_run", "data_keys"], {
        "dry_run": {"type": "boolean"}, "custody": {"type": "string"},
        "from_version": {"type": ["string", "null"]}, "data_keys": _INT,
        "signing_keys": _INT, "needed": _INT}),
    "CeremonyCreated": {"oneOf": [_ref("Ceremony"), _ref("RotationPlan")]},
    "Approval": _object(["password"], {
        "password": {"type": "string", "description": "the approver's own password again"}}),
    "Job": _object(["id", "kind", "state", "done", "total"], {
        "id": _UUID, "kind": {"type": "string"},
        "state": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
        "done": _INT, "total": _INT, "created_at": _TIME, "started_at": _TIME_OR_NULL,
        "finished_at": _TIME_OR_NULL, "result": {"type": ["object", "null"]},
        "error": {"type": ["string", "null"]}}),
}

_PUBLIC: list[Schema] = []

KEY_PATHS: dict[str, dict[str, Any]] = {
    "/api/v1/keys": {
        "get": {"summary": "Key custody: sealed or not, threshold, shares, master key versions "
                           "with age and rotation due dates (keys.manage)", "tags": ["keys"],
                "responses": {"200": _json("KeyStatus"), **_errors(401, 403)}},
    },
    "/api/v1/keys/seal": {
        "get": {"summary": "Whether the server is sealed and how many shares it has",
                "security": _PUBLIC, "tags": ["keys"],
                "responses": {"200": _json("SealStatus")}},
    },
    "/api/v1/keys/unseal": {
        "post": {"summary": "Submit one custodian's share; the share is the credential",
                 "security": _PUBLIC, "tags": ["keys"], "requestBody": _body("UnsealRequest"),
                 "responses": {"200": _json("UnsealProgress"), **_errors(400, 409, 413)}},
    },
    "/api/v1/keys/shares": {
        "get": {"summary": "The caller's share envelopes, each handed out once (keys.manage)",
                "tags": ["keys"],
                "responses": {"200": _json("ShareEnvelopes"), **_errors(401, 403)}},
    },
    "/api/v1/keys/ceremonies": {
        "post": {"summary": "Start a dual-control ceremony (init, rotate, reencrypt), or the "
                            "dry run of a rotation (keys.manage)", "tags": ["keys"],
                 "requestBody": _body("CeremonyRequest"),
                 "responses": {"201": _json("Ceremony", "Created"),
                               "200": _json("RotationPlan", "The dry run"),
                               **_errors(400, 401, 403, 409, 413)}},
    },
    "/api/v1/keys/ceremonies/{id}": {
        "parameters": [_ID],
        "get": {"summary": "One ceremony (keys.manage)", "tags": ["keys"],
                "responses": {"200": _json("Ceremony"), **_errors(401, 403, 404)}},
    },
    "/api/v1/keys/ceremonies/{id}/approve": {
        "parameters": [_ID],
        "post": {"summary": "Approve by a distinct user with keys.manage who re-enters their "
                            "password; at the threshold the action runs as a job",
                 "tags": ["keys"], "requestBody": _body("Approval"),
                 "responses": {"200": _json("Ceremony"),
                               **_errors(400, 401, 403, 404, 409, 413)}},
    },
}
