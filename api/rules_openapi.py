"""The OpenAPI entries of recording rules, opt-out and restriction (api/rules_api.py), merged
into the one document by api/openapi.py."""

from __future__ import annotations

from api.lifecycle_openapi import _errors, _path
from api.openapi_schema import UUID as _UUID
from api.openapi_schema import Schema
from api.openapi_schema import json_body as _body
from api.openapi_schema import json_response as _json
from api.openapi_schema import object_schema as _object
from api.openapi_schema import ref as _ref

__all__ = ["RULES_PATHS", "RULES_SCHEMAS"]

_ACTION = {"type": "string", "enum": ["record", "metadata_only", "do_not_record"],
           "description": "record: audio and metadata; metadata_only: who and when, no audio "
                          "(every m-line declined); do_not_record: nothing kept (the SRC still "
                          "gets 200 OK with every m-line declined, so it does not fail over)"}
_OPT_OUT = {"type": ["string", "null"], "enum": ["keep", "discard", None],
            "description": "what an opt-out does to what was recorded; null: the configured "
                           "rules.opt_out_default"}
_RULE_PROPERTIES: dict[str, Schema] = {
    "id": _UUID, "name": {"type": "string"}, "action": _ACTION,
    "restricted": {"type": "boolean",
                   "description": "recordings it matches are seen only by users with the "
                                  "restricted permission (any matching rule restricts)"},
    "opt_out": _OPT_OUT,
    "priority": {"type": "integer", "description": "lower first; the first match decides the "
                                                   "action"},
    "match": _ref("RetentionMatch"),
}

RULES_SCHEMAS: dict[str, Schema] = {
    "RecordingRule": _object(["id", "name", "action", "restricted", "opt_out", "priority",
                              "match"], _RULE_PROPERTIES),
    "NewRecordingRule": _object([], {k: v for k, v in _RULE_PROPERTIES.items() if k != "id"}),
    "RecordingRuleList": _object(["items", "default_action", "opt_out_default"], {
        "items": {"type": "array", "items": _ref("RecordingRule")},
        "default_action": _ACTION, "opt_out_default": {"type": "string"}}),
    "OptOutRequest": _object([], {"keep": {"type": "boolean",
                                           "description": "false: erase what was recorded "
                                                          "(crypto-shredding); absent: the "
                                                          "deciding rule's choice"}}),
    "OptOutResult": _object(["opted_out", "recordings"], {
        "opted_out": {"type": "boolean"},
        "recordings": {"type": "array", "items": _object(["id", "already", "keep", "erased"], {
            "id": _UUID, "already": {"type": "boolean"}, "keep": {"type": "boolean"},
            "erased": {"type": "boolean"},
            "erasure_refused": {"type": "string", "enum": ["legal_hold", "legal_obligation"]},
            "matter": {"type": "string"},
            "retained_until": {"type": "string", "format": "date-time"}})}}),
    "RestrictRequest": _object(["restricted"], {"restricted": {"type": "boolean"}}),
    "RestrictResult": _object(["id", "restricted", "changed"], {
        "id": _UUID, "restricted": {"type": "boolean"}, "changed": {"type": "boolean"}}),
}

_STR_OR_NULL = {"type": ["string", "null"]}
_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
RULES_SCHEMAS.update({
    "Delivery": _object(["destination", "state", "attempts", "last_error", "files"], {
        "destination": {"type": "string"}, "kind": {"type": ["string", "null"]},
        "state": {"type": "string",
                  "enum": ["pending", "running", "delivered", "failed", "cancelled"]},
        "attempts": {"type": "integer"}, "next_attempt_at": _TIME_OR_NULL,
        "last_error": _STR_OR_NULL, "recipient_fingerprint": _STR_OR_NULL,
        "files": {"type": ["array", "null"], "items": {"type": "object"}},
        "created_at": {"type": "string", "format": "date-time"},
        "delivered_at": _TIME_OR_NULL}),
    "DeliveryList": _object(["items"], {"items": {"type": "array",
                                                  "items": _ref("Delivery")}}),
    "WebhookDelivery": _object(["id", "endpoint", "event", "state", "attempts"], {
        "id": _UUID, "endpoint": {"type": "string"}, "event": {"type": "string"},
        "event_id": {"type": "string"}, "recording_id": _STR_OR_NULL,
        "state": {"type": "string", "enum": ["pending", "running", "delivered", "dead"]},
        "attempts": {"type": "integer"}, "next_attempt_at": _TIME_OR_NULL,
        "last_status": {"type": ["integer", "null"]}, "last_error": _STR_OR_NULL,
        "created_at": {"type": "string", "format": "date-time"},
        "delivered_at": _TIME_OR_NULL}),
    "WebhookDeliveryList": _object(["items"], {"items": {"type": "array",
                                                         "items": _ref("WebhookDelivery")}}),
})

_RULE_ID = _path("id", "recording rule id")

RULES_PATHS: dict[str, Schema] = {
    "/api/v1/recording-rules": {
        "get": {"summary": "Recording rules in the order they are tried (rules.manage)",
                "tags": ["rules"],
                "responses": {"200": _json("RecordingRuleList"), **_errors(401, 403, 503)}},
        "post": {"summary": "A new rule; applies to the next INVITE on every node "
                            "(rules.manage)", "tags": ["rules"],
                 "requestBody": _body("NewRecordingRule"),
                 "responses": {"201": _json("RecordingRule", "Created"),
                               **_errors(400, 401, 403, 409, 413, 503)}},
    },
    "/api/v1/recording-rules/{id}": {
        "parameters": [_RULE_ID],
        "get": {"summary": "One rule (rules.manage)", "tags": ["rules"],
                "responses": {"200": _json("RecordingRule"), **_errors(401, 403, 404, 503)}},
        "patch": {"summary": "Change a rule (rules.manage)", "tags": ["rules"],
                  "requestBody": _body("NewRecordingRule"),
                  "responses": {"200": _json("RecordingRule"),
                                **_errors(400, 401, 403, 404, 409, 413, 503)}},
        "delete": {"summary": "Delete a rule (rules.manage)", "tags": ["rules"],
                   "responses": {"200": _json("RecordingRule"),
                                 **_errors(401, 403, 404, 503)}},
    },
    "/api/v1/calls/{ref}/opt-out": {
        "parameters": [{"name": "ref", "in": "path", "required": True,
                        "description": "SIP Call-ID, SIPREC session id or recording id",
                        "schema": {"type": "string"}}],
        "post": {"summary": "The caller withdrew consent: stop recording now; keep or "
                            "crypto-shred what was recorded (opt_out)", "tags": ["calls"],
                 "requestBody": _body("OptOutRequest"),
                 "responses": {"200": _json("OptOutResult"),
                               **_errors(400, 401, 403, 404, 409, 413, 503)}},
    },
    "/api/v1/recordings/{id}/deliveries": {
        "parameters": [_path("id", "recording id")],
        "get": {"summary": "Where the sealed recording was delivered, encrypted to each "
                           "destination's recipient: state, attempts, last error (search)",
                "tags": ["deliveries"],
                "responses": {"200": _json("DeliveryList"), **_errors(401, 403, 404)}},
    },
    "/api/v1/recordings/{id}/deliveries/{destination}/retry": {
        "parameters": [_path("id", "recording id"),
                       {"name": "destination", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "post": {"summary": "Queue a failed delivery again, attempts reset "
                            "(deliveries.manage)", "tags": ["deliveries"],
                 "responses": {"202": _json("Delivery", "queued"),
                               **_errors(401, 403, 404, 409)}},
    },
    "/api/v1/webhooks/deliveries": {
        "get": {"summary": "Webhook deliveries, newest first; ?state=dead lists the dead "
                           "letters (deliveries.manage)", "tags": ["deliveries"],
                "parameters": [{"name": "state", "in": "query", "required": False,
                                "schema": {"type": "string", "enum": [
                                    "pending", "running", "delivered", "dead"]}}],
                "responses": {"200": _json("WebhookDeliveryList"), **_errors(400, 401, 403)}},
    },
    "/api/v1/webhooks/deliveries/{id}/retry": {
        "parameters": [_path("id", "webhook delivery id")],
        "post": {"summary": "Send a dead webhook again (deliveries.manage)",
                 "tags": ["deliveries"],
                 "responses": {"202": _json("WebhookDelivery", "queued"),
                               **_errors(401, 403, 404, 409)}},
    },
    "/api/v1/recordings/{id}/restricted": {
        "parameters": [_path("id", "recording id")],
        "post": {"summary": "Mark a recording restricted or not (rules.manage and restricted)",
                 "tags": ["recordings"], "requestBody": _body("RestrictRequest"),
                 "responses": {"200": _json("RestrictResult"),
                               **_errors(400, 401, 403, 404, 413, 503)}},
    },
}
