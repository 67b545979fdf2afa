"""The building blocks the parts of the OpenAPI document share (api/openapi.py and the parts it
merges, api/keys_openapi.py and api/lifecycle_openapi.py): schema references, objects, nullable
values, JSON responses and bodies, error responses, and the common string formats."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["TIME", "TIME_OR_NULL", "UUID", "Schema", "error_responses", "json_body",
           "json_response", "nullable", "object_schema", "ref"]

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(kind: str, **extra: Any) -> Schema:
    return {"type": [kind, "null"], **extra}


def object_schema(required: list[str], properties: dict[str, Schema], **extra: Any) -> Schema:
    return {"type": "object", "required": required, "properties": properties, **extra}


def json_response(schema: str, description: str = "OK") -> Schema:
    return {"description": description,
            "content": {"application/json": {"schema": ref(schema)}}}


def json_body(schema: str) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": ref(schema)}}}


def error_responses(texts: Mapping[int, str], statuses: tuple[int, ...]) -> dict[str, Schema]:
    """The Error responses of these statuses, each described as `texts` says for its part of
    the API."""
    return {str(s): json_response("Error", texts[s]) for s in statuses}


TIME: Schema = {"type": "string", "format": "date-time"}
TIME_OR_NULL = nullable("string", format="date-time")
UUID: Schema = {"type": "string", "format": "uuid"}
