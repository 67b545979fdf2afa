"""The OpenAPI entries of the lifecycle endpoints (api/lifecycle_api.py, api/jobs_api.py),
merged into the one document by api/openapi.py."""

from __future__ import annotations

from typing import Any

from api.openapi_schema import TIME as _TIME
from api.openapi_schema import TIME_OR_NULL as _TIME_OR_NULL
from api.openapi_schema import UUID as _UUID
from api.openapi_schema import Schema, error_responses
from api.openapi_schema import json_body as _body
from api.openapi_schema import json_response as _json
from api.openapi_schema import nullable as _nullable
from api.openapi_schema import object_schema as _object
from api.openapi_schema import ref as _ref

__all__ = ["LIFECYCLE_PATHS", "LIFECYCLE_SCHEMAS"]

_ERRORS = {400: "Bad request", 401: "No valid bearer token", 403: "Permission missing",
           404: "Not found", 409: "Conflict (a second user is needed, a change is pending, "
           "or the bundle is on another node)", 410: "Erased", 413: "Body too large",
           503: "Lifecycle services not running here"}


def _errors(*statuses: int) -> dict[str, Schema]:
    return error_responses(_ERRORS, statuses)


def _path(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": _UUID}


_STRINGS = {"type": "array", "items": {"type": "string"}}

_MATCH = _object([], {
    "parties": {**_STRINGS, "description": "number patterns (+4420*, 2001) or AOR globs "
                                           "(sip:*@trading.example.com); any party matches"},
    "direction": {"type": "string", "enum": ["inbound", "outbound"]},
    "metadata": {"type": "object", "description": "SRC extension-data leaf -> value or "
                                                  "values, case-insensitive "
                                                  "({\"groupID\": \"Trading\"})"},
})

_PENDING = _nullable("object", required=["id", "action", "change", "requested_by",
                                         "requested_at"], properties={
    "id": _UUID, "action": {"type": "string", "enum": ["update", "delete"]},
    "change": {"type": "object"}, "requested_by": {"type": "string"}, "requested_at": _TIME})

_SEARCH_FILTERS = _object([], {
    "participant": {"description": "number in any spelling, or AOR"},
    "number": {}, "aor": {}, "name": {}, "call_id": {"type": "string"},
    "session_id": {"type": "string"}, "from": _TIME, "to": _TIME, "tag": {},
})

LIFECYCLE_SCHEMAS: dict[str, Schema] = {
    "RetentionMatch": _MATCH,
    "RetentionPolicy": _object(
        ["id", "name", "days", "match", "legal_obligation", "pending_change"], {
            "id": _UUID, "name": {"type": "string"},
            "days": {"type": "integer", "minimum": 1},
            "match": _ref("RetentionMatch"),
            "legal_obligation": {"type": "boolean",
                                 "description": "a duty to keep: refuses Art. 17 erasure "
                                                "until the end (Art. 17(3)(b))"},
            "basis": _nullable("string"), "preset": _nullable("string"),
            "pending_change": _PENDING,
        }),
    "RetentionPolicyList": _object(["items", "default_days", "floor_days", "ceiling_days"], {
        "items": {"type": "array", "items": _ref("RetentionPolicy")},
        "default_days": {"type": "integer"}, "floor_days": {"type": "integer"},
        "ceiling_days": {"type": "integer"},
    }),
    "NewRetentionPolicy": _object([], {
        "name": {"type": "string"}, "days": {"type": "integer"},
        "match": _ref("RetentionMatch"), "legal_obligation": {"type": "boolean"},
        "basis": {"type": "string"},
        "preset": {"type": "string", "enum": ["mifid2", "mifid2-extended"],
                   "description": "MiFID II: 5 years, or 7 at the authority's request"},
    }),
    "PolicyDeleted": _object(["id", "deleted"], {"id": _UUID, "deleted": {"type": "boolean"}}),
    "RetentionRunRequest": _object([], {"dry_run": {"type": "boolean", "default": True}}),
    "Job": _object(["id", "kind", "state", "done", "total"], {
        "id": _UUID, "kind": {"type": "string"},
        "state": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
        "done": {"type": "integer"}, "total": _nullable("integer"),
        "created_at": _TIME, "updated_at": _TIME,
        "result": _nullable("object", description="retention runs: recordings per policy "
                                                   "(default, policies[], held, total); key "
                                                   "rotations: versions and data keys "
                                                   "re-wrapped; re-encryptions: outcomes"),
        "error": _nullable("string"),
    }),
    "Hold": _object(["id", "matter", "reason", "state", "query", "recordings", "created_by",
                     "created_at"], {
        "id": _UUID, "matter": {"type": "string"}, "reason": {"type": "string"},
        "state": {"type": "string", "enum": ["active", "release_pending", "released"]},
        "query": _nullable("object"), "recordings": {"type": "integer",
                                                     "description": "explicit members"},
        "created_by": {"type": "string"}, "created_at": _TIME,
        "release_requested_by": _nullable("string"), "released_by": _nullable("string"),
        "released_at": _TIME_OR_NULL,
        "unknown_recording_ids": _STRINGS,
    }),
    "HoldList": _object(["items"], {"items": {"type": "array", "items": _ref("Hold")}}),
    "NewHold": _object(["matter", "reason"], {
        "matter": {"type": "string"}, "reason": {"type": "string"},
        "recording_ids": {"type": "array", "items": _UUID},
        "query": _SEARCH_FILTERS,
    }),
    "SubjectDecision": _object(["recording_id", "outcome", "reason"], {
        "recording_id": _UUID,
        "outcome": {"type": "string", "enum": ["included", "erased", "refused", "failed"]},
        "reason": _nullable("string", description="legal_hold | legal_obligation | "
                                                  "recording_active | already_erased"),
        "matter": {"type": "string"}, "retained_until": _TIME, "basis": {"type": "string"},
    }),
    "SubjectRequest": _object(["id", "kind", "state", "job_id", "subject", "created_at"], {
        "id": _UUID, "kind": {"type": "string", "enum": ["access", "erasure"]},
        "state": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
        "job_id": _nullable("string", format="uuid"),
        "subject": _object(["numbers", "aors", "names"], {
            "numbers": _STRINGS, "aors": _STRINGS, "names": _STRINGS}),
        "recipient": _nullable("string", enum=["passphrase", "openpgp", "cms", None]),
        "found": _nullable("integer"), "erased": _nullable("integer"),
        "refused": _nullable("integer"), "error": _nullable("string"),
        "created_by": {"type": "string"}, "created_at": _TIME,
        "finished_at": _TIME_OR_NULL,
        "bundle": _nullable("object", properties={
            "href": {"type": "string"}, "bytes": {"type": "integer"},
            "sha256": {"type": "string"}, "encryption": {"type": "string"}}),
        "recordings": {"type": "array", "items": _ref("SubjectDecision")},
    }),
    "SubjectRequestList": _object(["items"], {
        "items": {"type": "array", "items": _ref("SubjectRequest")}}),
    "NewSubjectRequest": _object(["kind"], {
        "kind": {"type": "string", "enum": ["access", "erasure"]},
        "participant": {"description": "number (any spelling) or AOR; string or list"},
        "name": {"description": "name substring; string or list"},
        "recipient": _object([], {
            "passphrase": {"type": "string", "description": "age (scrypt), 8+ characters"},
            "public_key": {"type": "string", "description": "armored OpenPGP public key or "
                                                            "PEM X.509 certificate (CMS)"}}),
    }),
    "Annotation": _object(["id", "recording_id", "kind", "value", "created_by", "created_at"], {
        "id": _UUID, "recording_id": _UUID,
        "kind": {"type": "string", "enum": ["tag", "comment", "flag"]},
        "value": {"type": "string"}, "created_by": {"type": "string"}, "created_at": _TIME,
    }),
    "AnnotationList": _object(["items"], {"items": {"type": "array",
                                                    "items": _ref("Annotation")}}),
    "NewAnnotation": _object(["kind", "value"], {
        "kind": {"type": "string", "enum": ["tag", "comment", "flag"]},
        "value": {"type": "string"}}),
    "AnnotationRef": _object(["id"], {"id": _UUID}),
}

_POLICY_ID = _path("id", "retention policy id")
_HOLD_ID = _path("id", "legal hold id")
_REQUEST_ID = _path("id", "subject request id")
_RECORDING_ID = _path("id", "recording id")

LIFECYCLE_PATHS: dict[str, dict[str, Any]] = {
    "/api/v1/retention-policies": {
        "get": {"summary": "Retention policies, the default, floor and ceiling "
                           "(retention.manage)", "tags": ["lifecycle"],
                "responses": {"200": _json("RetentionPolicyList"), **_errors(401, 403, 503)}},
        "post": {"summary": "A new policy (applies at once: retention may only grow); a "
                            "preset (mifid2, mifid2-extended) or name + days (retention.manage)",
                 "tags": ["lifecycle"], "requestBody": _body("NewRetentionPolicy"),
                 "responses": {"201": _json("RetentionPolicy", "Created"),
                               **_errors(400, 401, 403, 409, 413, 503)}},
    },
    "/api/v1/retention-policies/{id}": {
        "parameters": [_POLICY_ID],
        "get": {"summary": "One policy and its pending change (retention.manage)",
                "tags": ["lifecycle"],
                "responses": {"200": _json("RetentionPolicy"), **_errors(401, 403, 404, 503)}},
        "patch": {"summary": "Change a policy: applied at once when it only lengthens "
                             "retention (200), else waits for a second user (202)",
                  "tags": ["lifecycle"], "requestBody": _body("NewRetentionPolicy"),
                  "responses": {"200": _json("RetentionPolicy"),
                                "202": _json("RetentionPolicy", "waits for approval"),
                                **_errors(400, 401, 403, 404, 409, 413, 503)}},
        "delete": {"summary": "Delete a policy: always waits for a second user (202)",
                   "tags": ["lifecycle"],
                   "responses": {"202": _json("RetentionPolicy", "waits for approval"),
                                 **_errors(401, 403, 404, 409, 503)}},
    },
    "/api/v1/retention-policies/{id}/approve": {
        "parameters": [_POLICY_ID],
        "post": {"summary": "A second user approves the pending change (retention.manage)",
                 "tags": ["lifecycle"],
                 "responses": {"200": {"description": "applied", "content": {
                     "application/json": {"schema": {"oneOf": [
                         _ref("RetentionPolicy"), _ref("PolicyDeleted")]}}}},
                     **_errors(401, 403, 404, 409, 503)}},
    },
    "/api/v1/retention/run": {
        "post": {"summary": "Start a retention run as a job; a dry run only counts "
                            "(retention.manage)", "tags": ["lifecycle"],
                 "requestBody": _body("RetentionRunRequest"),
                 "responses": {"202": _json("Job", "queued"),
                               **_errors(400, 401, 403, 413, 503)}},
    },
    "/api/v1/jobs/{id}": {
        "parameters": [_path("id", "job id")],
        "get": {"summary": "A background job: state, progress, result", "tags": ["jobs"],
                "responses": {"200": _json("Job"), **_errors(401, 404)}},
    },
    "/api/v1/holds": {
        "get": {"summary": "Legal holds (holds.manage)", "tags": ["lifecycle"],
                "responses": {"200": _json("HoldList"), **_errors(401, 403)}},
        "post": {"summary": "Put recordings (ids, or a saved search whose future matches are "
                            "held too) under a legal hold (holds.manage)",
                 "tags": ["lifecycle"], "requestBody": _body("NewHold"),
                 "responses": {"201": _json("Hold", "Created"),
                               **_errors(400, 401, 403, 413)}},
    },
    "/api/v1/holds/{id}": {
        "parameters": [_HOLD_ID],
        "get": {"summary": "One legal hold (holds.manage)", "tags": ["lifecycle"],
                "responses": {"200": _json("Hold"), **_errors(401, 403, 404)}},
    },
    "/api/v1/holds/{id}/release": {
        "parameters": [_HOLD_ID],
        "post": {"summary": "Ask to release (202), or as a second user release (200)",
                 "tags": ["lifecycle"],
                 "responses": {"200": _json("Hold", "released"),
                               "202": _json("Hold", "waits for a second user"),
                               **_errors(401, 403, 404, 409)}},
    },
    "/api/v1/subject-requests": {
        "get": {"summary": "Data-subject requests and their state (subjects.manage)",
                "tags": ["lifecycle"],
                "responses": {"200": _json("SubjectRequestList"), **_errors(401, 403)}},
        "post": {"summary": "A GDPR access (encrypted bundle) or erasure request, carried out "
                            "as a job (subjects.manage, unrestricted accounts)",
                 "tags": ["lifecycle"], "requestBody": _body("NewSubjectRequest"),
                 "responses": {"202": _json("SubjectRequest", "queued"),
                               **_errors(400, 401, 403, 413, 503)}},
    },
    "/api/v1/subject-requests/{id}": {
        "parameters": [_REQUEST_ID],
        "get": {"summary": "A request: state, outcome per recording, the bundle's link",
                "tags": ["lifecycle"],
                "responses": {"200": _json("SubjectRequest"), **_errors(401, 403, 404)}},
    },
    "/api/v1/subject-requests/{id}/bundle": {
        "parameters": [_REQUEST_ID],
        "get": {"summary": "The access bundle, encrypted to the requester (age, OpenPGP or "
                           "CMS)", "tags": ["lifecycle"],
                "responses": {"200": {"description": "the encrypted ZIP", "content": {
                    "application/octet-stream": {"schema": {"type": "string",
                                                            "format": "binary"}}}},
                              **_errors(401, 403, 404, 409)}},
    },
    "/api/v1/recordings/{id}/annotations": {
        "parameters": [_RECORDING_ID],
        "get": {"summary": "Tags, comments and flags of a recording (search)",
                "tags": ["recordings"],
                "responses": {"200": _json("AnnotationList"), **_errors(401, 403, 404)}},
        "post": {"summary": "Add a tag, comment or flag (annotate)", "tags": ["recordings"],
                 "requestBody": _body("NewAnnotation"),
                 "responses": {"201": _json("Annotation", "Created"),
                               **_errors(400, 401, 403, 404, 410, 413)}},
        "delete": {"summary": "Remove one annotation, named by id in the body (annotate)",
                   "tags": ["recordings"], "requestBody": _body("AnnotationRef"),
                   "responses": {"200": _json("Annotation"),
                                 **_errors(400, 401, 403, 404, 413)}},
    },
}
