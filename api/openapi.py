"""The OpenAPI 3.1 document of the whole HTTP API, as data, served at /api/v1/openapi.json.

It is kept honest by tests/integration/test_openapi.py: every route the running application
registers is documented here and every documented operation exists, and real responses are
checked against the schemas below.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from api.keys_openapi import KEY_PATHS, KEY_SCHEMAS
from api.lifecycle_openapi import LIFECYCLE_PATHS, LIFECYCLE_SCHEMAS
from api.openapi_schema import TIME as _TIME
from api.openapi_schema import TIME_OR_NULL as _TIME_OR_NULL
from api.openapi_schema import UUID as _UUID
from api.openapi_schema import Schema, error_responses
from api.openapi_schema import json_response as _json
from api.openapi_schema import nullable as _nullable
from api.openapi_schema import object_schema as _object
from api.openapi_schema import ref as _ref
from api.rules_openapi import RULES_PATHS, RULES_SCHEMAS

__all__ = ["OPENAPI_VERSION", "document", "setup_openapi"]

OPENAPI_VERSION = "3.1.0"

_RECORDING_PROPERTIES: dict[str, Schema] = {
    "id": _UUID,
    "call_id": _nullable("string", description="SIP Call-ID of the SIPREC session (null once "
                                               "erased)"),
    "session_id": _nullable("string", description="SIPREC recording session id (RFC 7865)"),
    "sip_session_id": _nullable("string", description="Session-ID header (RFC 7989)"),
    "state": {"type": "string", "enum": ["offered", "recording", "complete", "interrupted",
                                         "failed", "erased"]},
    "started_at": _TIME,
    "answered_at": _TIME_OR_NULL,
    "ended_at": _TIME_OR_NULL,
    "end_reason": _nullable("string"),
    "duration_s": _nullable("number", description="Seconds of audio; null until finished"),
    "no_media": {"type": "boolean",
                 "description": "No stream delivered a packet: the audio is silence as long as "
                                "the session, not a recording of anyone"},
    "participants": {"type": "array", "items": _ref("Participant")},
    "channels": {"type": "array", "items": _ref("Channel")},
    "streams": {"type": "array", "items": _ref("Stream")},
    "pauses": {"type": "array", "items": _ref("Pause")},
    "dtmf_events": {"type": "integer", "description": "Key presses seen (never the digits)"},
    "restricted": {"type": "boolean", "description": "Seen only by users with the restricted "
                                                     "permission"},
    "recording_mode": {"type": "string", "enum": ["record", "metadata_only"],
                       "description": "What the recording rules kept: audio and metadata, or "
                                      "metadata only"},
    "opted_out_at": _TIME_OR_NULL,
    "erased_at": _TIME_OR_NULL,
    "erased_by": _nullable("string"),
    "erasure_reason": _nullable("string"),
}
_RECORDING_REQUIRED = ["id", "call_id", "session_id", "state", "started_at", "ended_at",
                       "duration_s", "participants", "channels", "streams", "pauses"]

SCHEMAS: dict[str, Schema] = {
    "Error": _object(["error"], {
        "error": _object(["code", "message"], {"code": {"type": "string"},
                                               "message": {"type": "string"}}),
    }),
    "Participant": _object(["id", "aor", "name"], {
        "id": {"type": "string", "description": "participant id from the metadata"},
        "aor": _nullable("string"),
        "name": _nullable("string"),
        "number": _nullable("string", description="normalised number of the AOR"),
        "present": {"type": "boolean"},
        "joined_at": _TIME_OR_NULL,
        "left_at": _TIME_OR_NULL,
    }),
    "Channel": _object(["index", "label", "participant_ids", "reason"], {
        "index": {"type": "integer", "description": "channel number in the Ogg Opus file"},
        "label": _nullable("string", description="SDP a=label of the stream on it"),
        "m_index": _nullable("integer"),
        "participant_ids": {"type": "array", "items": {"type": "string"}},
        "reason": _nullable("string", description="why this stream is on this channel"),
    }),
    "Stream": _object(["label", "codec", "srtp", "packets_received", "packets_lost"], {
        "label": _nullable("string"),
        "m_index": {"type": "integer"},
        "kind": {"type": "string"},
        "accepted": {"type": "boolean"},
        "channel": _nullable("integer"),
        "codec": _nullable("string", examples=["PCMU/8000"]),
        "srtp": _nullable("string", examples=["AES_CM_128_HMAC_SHA1_80"]),
        "packets_received": _nullable("integer"),
        "packets_lost": _nullable("integer"),
        "stats": {"type": "object", "description": "every receive counter (detail view)"},
    }),
    "Pause": _object(["start_s", "end_s", "source"], {
        "start_s": _nullable("number"),
        "end_s": _nullable("number"),
        "source": _nullable("string", enum=["api", "dtmf", "hold", None]),
    }),
    "Recording": _object(_RECORDING_REQUIRED, _RECORDING_PROPERTIES),
    "Peaks": _object(["recording_id", "available", "channels", "key_presses"], {
        "recording_id": _UUID,
        "available": {"type": "boolean",
                      "description": "false for recordings made before peaks were computed "
                                     "(draw the lanes without a waveform)"},
        "interval_ms": {"type": "number", "description": "time each level covers"},
        "channels": {"type": "array", "items": _object(["index", "levels"], {
            "index": {"type": "integer", "description": "channel of the Ogg Opus file"},
            "levels": {"type": "array", "items": {"type": "integer", "minimum": 0,
                                                  "maximum": 255},
                       "description": "loudest sample per interval, 0-255, from time 0"},
        })},
        "key_presses": {"type": "array", "items": _object(["start_s", "channel"], {
            "start_s": {"type": "number"}, "channel": {"type": "integer"},
        }), "description": "DTMF key presses (the digits are never stored)"},
    }),
    "RecordingDetail": _object(
        [*_RECORDING_REQUIRED, "sizes", "hashes", "signature", "dtmf_events"],
        {
            **_RECORDING_PROPERTIES,
            "transport": {"type": "string"},
            "node_id": {"type": "string"},
            "sample_rate": _nullable("integer"),
            "recovered": {"type": "boolean"},
            "has_audio": {"type": "boolean"},
            "metadata_events": {"type": "integer"},
            "sizes": _object(["plaintext_bytes", "ciphertext_bytes"], {
                "plaintext_bytes": _nullable("integer"),
                "ciphertext_bytes": _nullable("integer"),
            }),
            "hashes": _object(["plaintext_sha256", "ciphertext_sha256"], {
                "plaintext_sha256": _nullable("string", pattern="^[0-9a-f]{64}$"),
                "ciphertext_sha256": _nullable("string", pattern="^[0-9a-f]{64}$"),
            }),
            "signature": _object(["state", "key_id", "verified", "problems"], {
                "state": {"type": "string",
                          "enum": ["signed", "unsigned", "verified", "failed"]},
                "key_id": _nullable("string"),
                "verified": _nullable("boolean", description="null unless ?verify=true"),
                "problems": {"type": "array", "items": {"type": "string"}},
                "skipped": {"type": "string", "description": "why it was not verified"},
            }),
        },
    ),
    "SearchPage": _object(["items", "next_cursor"], {
        "items": {"type": "array", "items": _ref("Recording")},
        "next_cursor": _nullable("string"),
    }),
    "Tombstone": _object(
        ["id", "state", "started_at", "ended_at", "duration_s", "erased_at", "erased_by",
         "erasure_reason"],
        {
            "id": _UUID,
            "state": {"type": "string", "enum": ["erased"]},
            "started_at": _TIME,
            "ended_at": _TIME_OR_NULL,
            "duration_s": _nullable("number"),
            "erased_at": _TIME,
            "erased_by": {"type": "string"},
            "erasure_reason": {"type": "string"},
        },
    ),
    "Erasure": _object(["recording", "already_erased"], {
        "recording": _ref("Tombstone"),
        "already_erased": {"type": "boolean"},
    }),
    "CallControl": _object(["paused", "status", "recordings"], {
        "paused": {"type": "boolean", "description": "the state asked for"},
        "status": {"type": "string",
                   "enum": ["paused", "already paused", "resumed", "not paused"]},
        "recordings": {"type": "array", "items": _object(["id", "changed"], {
            "id": _UUID, "changed": {"type": "boolean"}})},
    }),
    "TokenRequest": _object(["username", "password"], {
        "username": {"type": "string"}, "password": {"type": "string"}}),
    "Token": _object(["token", "token_type", "expires_at", "user"], {
        "token": {"type": "string"},
        "token_type": {"type": "string", "enum": ["Bearer"]},
        "expires_at": _TIME,
        "user": _object(["id", "username", "role", "permissions", "scopes"], {
            "id": _UUID,
            "username": {"type": "string"},
            "role": {"type": "string"},
            "permissions": {"type": "array", "items": {"type": "string"}},
            "scopes": {"type": "array", "items": {"type": "string"}},
        }),
    }),
    "User": _object(
        ["id", "username", "role", "permissions", "scopes", "disabled", "locked",
         "created_at"],
        {
            "id": _UUID,
            "username": {"type": "string"},
            "role": {"type": "string",
                     "enum": ["admin", "supervisor", "auditor", "agent", "integration"]},
            "permissions": {"type": "array", "items": {"type": "string"}},
            "scopes": {"type": "array", "items": {"type": "string"}},
            "disabled": {"type": "boolean"},
            "locked": {"type": "boolean"},
            "locked_until": _TIME_OR_NULL,
            "failed_logins": {"type": "integer"},
            "created_at": _TIME,
            "updated_at": _TIME,
            "password_changed_at": _TIME,
        },
    ),
    "UserEnvelope": _object(["user"], {"user": _ref("User")}),
    "UserCreated": _object(["user"], {
        "user": _ref("User"),
        "password": {"type": "string", "description": "generated password, shown once"},
    }),
    "UserList": _object(["items", "next_cursor"], {
        "items": {"type": "array", "items": _ref("User")},
        "next_cursor": _nullable("string"),
    }),
    "NewUser": _object(["username", "role"], {
        "username": {"type": "string"},
        "role": {"type": "string"},
        "password": {"type": "string"},
        "scopes": {"type": "array", "items": {"type": "string"}},
    }),
    "UserChange": _object([], {
        "role": {"type": "string"},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "disabled": {"type": "boolean"},
        "password": {"type": "string"},
        "unlock": {"type": "boolean", "enum": [True]},
    }),
    "AuditEvent": _object(
        ["seq", "at", "actor", "action", "target", "source", "outcome", "details",
         "prev_hash", "hash"],
        {
            "seq": {"type": "integer"},
            "at": _TIME,
            "actor": {"type": "string"},
            "actor_name": {**_nullable("string"),
                           "description": "the user name when the actor is an account"},
            "action": {"type": "string"},
            "target": _nullable("string"),
            "target_name": {**_nullable("string"),
                            "description": "the user name when the target is an account"},
            "source": _nullable("string"),
            "outcome": {"type": "string"},
            "details": {"type": "object"},
            "prev_hash": {"type": "string"},
            "hash": {"type": "string"},
        },
    ),
    "AuditPage": _object(["items", "next_cursor"], {
        "items": {"type": "array", "items": _ref("AuditEvent")},
        "next_cursor": _nullable("string"),
    }),
    "Health": _object(["status", "database"], {
        "status": {"type": "string", "enum": ["ok", "degraded"]},
        "database": {"type": "string", "enum": ["ok", "unreachable"]},
        "waiting_writes": {"type": "integer", "minimum": 0,
                           "description": "writes of recordings waiting for the database"},
    }),
    "ErasureRequest": _object(["reason"], {
        "reason": {"type": "string", "minLength": 1, "maxLength": 500,
                   "description": "why (a ticket reference; no personal data)"},
    }),
}


_ERRORS = {400: "Bad request", 401: "No valid bearer token", 403: "Permission missing",
           404: "Not found (or outside the caller's scope)", 409: "Conflict",
           410: "Erased", 413: "Body too large", 416: "Range not satisfiable",
           429: "Too many failed logins", 500: "Recording damaged", 503: "Unavailable"}


def _errors(*statuses: int) -> dict[str, Schema]:
    return error_responses(_ERRORS, statuses)


def _query(name: str, description: str, *, schema: Schema | None = None,
           repeat: bool = False) -> Schema:
    param: Schema = {"name": name, "in": "query", "required": False,
                     "description": description, "schema": schema or {"type": "string"}}
    if repeat:
        param["schema"] = {"type": "array", "items": schema or {"type": "string"}}
        param["style"] = "form"
        param["explode"] = True
    return param


def _path(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema or {"type": "string"}}


_RECORDING_ID = _path("id", "recording id (a UUID; anything else is 404)", _UUID)
_CALL_REF = _path("ref", "SIP Call-ID, SIPREC session id or recording id")
_PUBLIC: list[Schema] = []

PATHS: dict[str, dict[str, Any]] = {
    "/api/v1/auth/token": {
        "post": {
            "summary": "Log in: a bearer token for username and password",
            "security": _PUBLIC, "tags": ["identity"],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("TokenRequest")}}},
            "responses": {"200": _json("Token"), **_errors(400, 401, 413, 429)},
        },
        "delete": {
            "summary": "Log out: revoke the token used", "tags": ["identity"],
            "responses": {"204": {"description": "revoked"}, **_errors(401)},
        },
    },
    "/api/v1/users": {
        "get": {"summary": "List users (users.manage)", "tags": ["identity"],
                "responses": {"200": _json("UserList"), **_errors(401, 403)}},
        "post": {"summary": "Create a user (users.manage)", "tags": ["identity"],
                 "requestBody": {"required": True, "content": {
                     "application/json": {"schema": _ref("NewUser")}}},
                 "responses": {"201": _json("UserCreated", "Created"),
                               **_errors(400, 401, 403, 409, 413)}},
    },
    "/api/v1/users/me": {
        "get": {"summary": "The caller's own account", "tags": ["identity"],
                "responses": {"200": _json("UserEnvelope"), **_errors(401, 404)}},
    },
    "/api/v1/users/{id}": {
        "parameters": [_path("id", "user id", _UUID)],
        "get": {"summary": "One user (users.manage)", "tags": ["identity"],
                "responses": {"200": _json("UserEnvelope"), **_errors(401, 403, 404)}},
        "patch": {"summary": "Change role, scopes, password, disabled, or unlock "
                             "(users.manage)", "tags": ["identity"],
                  "requestBody": {"required": True, "content": {
                      "application/json": {"schema": _ref("UserChange")}}},
                  "responses": {"200": _json("UserEnvelope"),
                                **_errors(400, 401, 403, 404, 409, 413)}},
        "delete": {"summary": "Disable a user and revoke its tokens (users.manage)",
                   "tags": ["identity"],
                   "responses": {"200": _json("UserEnvelope"), **_errors(401, 403, 404, 409)}},
    },
    "/api/v1/audit": {
        "get": {
            "summary": "Audit events, filterable (audit.read)", "tags": ["audit"],
            "parameters": [
                _query("actor", "user id, system or node:<id>"),
                _query("action", "exact, or a prefix ending in * (auth.*)"),
                _query("target", "e.g. a recording id"),
                _query("outcome", "success, failure or denied"),
                _query("from", "at >= (RFC 3339)", schema=_TIME),
                _query("to", "at < (RFC 3339)", schema=_TIME),
                _query("limit", "1 to 500", schema={"type": "integer", "minimum": 1,
                                                    "maximum": 500}),
                _query("cursor", "next_cursor of the previous page"),
                _query("order", "desc (default) or asc",
                       schema={"type": "string", "enum": ["desc", "asc"]}),
            ],
            "responses": {"200": _json("AuditPage"), **_errors(400, 401, 403)},
        },
    },
    "/api/v1/recordings": {
        "get": {
            "summary": "Search recordings (search); ?format=csv exports every match (export)",
            "tags": ["recordings"],
            "description": "Filters combine with AND; each participant filter may be met by "
                           "a different party. Results are newest first and only within the "
                           "caller's scope.",
            "parameters": [
                _query("participant", "a number in any spelling (+44 20 7946 0000, "
                                      "00442079460000, sip:+442079460000@host) or an AOR; "
                                      "any party", repeat=True),
                _query("number", "a phone number in any spelling; any party", repeat=True),
                _query("aor", "an address of record, case-insensitive; any party",
                       repeat=True),
                _query("name", "case-insensitive substring of a party's name (3+ chars)",
                       repeat=True),
                _query("call_id", "SIP Call-ID"),
                _query("session_id", "SIPREC recording session id"),
                _query("state", "one or more states (repeat or comma-separate)",
                       repeat=True),
                _query("from", "started_at >= (RFC 3339)", schema=_TIME),
                _query("to", "started_at < (RFC 3339)", schema=_TIME),
                _query("limit", "page size, 1 to 500 (default 50)",
                       schema={"type": "integer", "minimum": 1, "maximum": 500}),
                _query("cursor", "next_cursor of the previous page (opaque)"),
                _query("tag", "annotation tag (case-insensitive); all given must be on the "
                              "recording", repeat=True),
                _query("format", "json (default) or csv; Accept: text/csv also asks for CSV",
                       schema={"type": "string", "enum": ["json", "csv"]}),
            ],
            "responses": {
                "200": {"description": "a page of recordings, or the CSV export",
                        "content": {
                            "application/json": {"schema": _ref("SearchPage")},
                            "text/csv": {"schema": {"type": "string"}},
                        }},
                **_errors(400, 401, 403),
            },
        },
    },
    "/api/v1/recordings/{id}": {
        "parameters": [_RECORDING_ID],
        "get": {
            "summary": "A recording's metadata: parties, channel map, streams and packet "
                       "counters, pauses, DTMF count, sizes, hashes, signature (search)",
            "tags": ["recordings"],
            "parameters": [_query("verify", "true: check the signature and the file now",
                                  schema={"type": "boolean"})],
            "responses": {"200": _json("RecordingDetail"), **_errors(400, 401, 403, 404, 503)},
        },
        "delete": {
            "summary": "Erase a recording: its data key first (every copy of the file "
                       "becomes unreadable), then the file and the personal metadata; a "
                       "tombstone stays (delete). 409 legal_hold while a legal hold keeps it "
                       "(error.matters names the matters), 409 recording_active mid-call",
            "tags": ["recordings"],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("ErasureRequest")}}},
            "responses": {"200": _json("Erasure"), **_errors(400, 401, 403, 404, 409, 413)},
        },
    },
    "/api/v1/recordings/{id}/audio": {
        "parameters": [_RECORDING_ID],
        "get": {
            "summary": "The decrypted Ogg Opus audio, streamed (play)",
            "tags": ["recordings"],
            "parameters": [{"name": "Range", "in": "header", "required": False,
                            "description": "one byte range: bytes=a-b, bytes=a- or bytes=-n "
                                           "(finished recordings)",
                            "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "the whole recording",
                        "content": {"audio/ogg": {"schema": {"type": "string",
                                                             "format": "binary"}}}},
                "206": {"description": "the range asked for",
                        "content": {"audio/ogg": {"schema": {"type": "string",
                                                             "format": "binary"}}}},
                **_errors(401, 403, 404, 410, 416, 500, 503),
            },
        },
    },
    "/api/v1/recordings/{id}/peaks": {
        "parameters": [_RECORDING_ID],
        "get": {
            "summary": "Waveform peaks per channel and key-press times, computed while "
                       "recording (play)",
            "tags": ["recordings"],
            "parameters": [_query("points", "at most this many levels per channel (10 to "
                                            "100000; default 20000): max-pooled",
                                  schema={"type": "integer"})],
            "responses": {"200": _json("Peaks"), **_errors(400, 401, 403, 404, 410, 503)},
        },
    },
    "/api/v1/calls/{ref}/pause": {
        "parameters": [_CALL_REF],
        "post": {
            "summary": "Pause recording a live call from its next packet; idempotent (pause)",
            "tags": ["calls"],
            "responses": {"200": _json("CallControl"), **_errors(401, 403, 404, 409)},
        },
    },
    "/api/v1/calls/{ref}/resume": {
        "parameters": [_CALL_REF],
        "post": {
            "summary": "Resume recording a live call paused through the API (pause)",
            "tags": ["calls"],
            "responses": {"200": _json("CallControl"), **_errors(401, 403, 404, 409)},
        },
    },
    "/api/v1/openapi.json": {
        "get": {"summary": "This document", "security": _PUBLIC, "tags": ["meta"],
                "responses": {"200": {"description": "OpenAPI 3.1",
                                      "content": {"application/json": {
                                          "schema": {"type": "object"}}}}}},
    },
    "/healthz": {
        "get": {"summary": "Liveness and database reachability", "security": _PUBLIC,
                "tags": ["meta"],
                "responses": {"200": _json("Health"),
                              "503": _json("Health", "database unreachable, or writes still wait for it")}},
    },
    "/metrics": {
        "get": {"summary": "Prometheus text exposition format", "security": _PUBLIC,
                "tags": ["meta"],
                "responses": {"200": {"description": "metrics",
                                      "content": {"text/plain": {
                                          "schema": {"type": "string"}}}}}},
    },
}


SCHEMAS.update(KEY_SCHEMAS)
PATHS.update(KEY_PATHS)


def document() -> dict[str, Any]:
    """A fresh copy of the document (callers may not change the shared one)."""
    return copy.deepcopy({
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "SIPREC recording server API",
            "version": "1",
            "description": "Search, play, export, erase and control call recordings. "
                           "Errors are {\"error\": {\"code\", \"message\"}}; times are RFC "
                           "3339 UTC; recording ids are UUIDs.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {**PATHS, **LIFECYCLE_PATHS, **RULES_PATHS},
        "components": {
            "schemas": {**SCHEMAS, **LIFECYCLE_SCHEMAS, **RULES_SCHEMAS},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "POST /api/v1/auth/token"}},
        },
    })


async def openapi_endpoint(request: web.Request) -> web.Response:
    return web.json_response(document())


def setup_openapi(app: web.Application) -> None:
    app.router.add_get("/api/v1/openapi.json", openapi_endpoint)
