"""``GET /openapi.json``: the service's OpenAPI 3.1 description, kept as data.

Each module documents its own routes beside this file's, so the document lists what is mounted::

    from app.api import openapi

    openapi.add_operation("/v1/reconcile", "post", {
        "operationId": "reconcile",
        "summary": "...",
        "security": openapi.BEARER,
        "responses": {
            "202": openapi.json_response("Started", {"$ref": "#/components/schemas/X"}),
            **openapi.error_responses(401, 403, 503),
        },
    })
    openapi.add_schema("X", {...})

``tests/api/test_openapi.py`` fails when a mounted route is not described, and runs schemathesis
against every described operation, so a response off its schema fails the suite.
"""

from __future__ import annotations

import copy
from typing import Any

from starlette.requests import Request

from app.api.schemas import DEFAULT_LIMIT, MAX_LIMIT, MAX_VALUE_LENGTH, STATUSES
from app.responses import JSONResponse

JSON = "application/json"
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]

_ERRORS = {
    400: ("BadRequest", "Invalid input; `error.details.parameter` names the query parameter"),
    401: ("Unauthorized", "Missing or wrong credentials"),
    403: ("Forbidden", "The API key is read-only"),
    404: ("NotFound", "Not found"),
    409: ("Conflict", "Conflict, e.g. an ambiguous legacy connection ID"),
    413: ("PayloadTooLarge", "The body is too large"),
    502: ("UpstreamError", "Nango answered with an error"),
    503: ("ServiceUnavailable", "The database (or a required setting) is unavailable"),
}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "examples": ["invalid_parameter"]},
                    "message": {"type": "string"},
                    "details": {"type": "object"},
                },
            }
        },
    },
    "Connection": {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "connection_id",
            "integration_id",
            "provider",
            "environment",
            "auth_mode",
            "end_user",
            "organization",
            "tags",
            "status",
            "error",
            "last_sync",
            "created_at",
            "updated_at",
            "deleted_at",
        ],
        "properties": {
            "connection_id": {"type": "string"},
            "integration_id": {"type": "string", "description": "Nango's providerConfigKey"},
            "provider": _nullable("string"),
            "environment": {"type": "string"},
            "auth_mode": _nullable("string"),
            "end_user": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "email", "display_name"],
                "properties": {
                    "id": _nullable("string"),
                    "email": _nullable("string"),
                    "display_name": _nullable("string"),
                },
            },
            "organization": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "display_name"],
                "properties": {"id": _nullable("string"), "display_name": _nullable("string")},
            },
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "status": {"type": "string", "enum": list(STATUSES)},
            "error": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "description", "since"],
                        "properties": {
                            "type": _nullable("string"),
                            "description": _nullable("string"),
                            "since": _NULLABLE_TIME,
                        },
                    },
                ]
            },
            "last_sync": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "model", "success", "at", "error"],
                        "properties": {
                            "name": _nullable("string"),
                            "model": _nullable("string"),
                            "success": _nullable("boolean"),
                            "at": _NULLABLE_TIME,
                            "error": _nullable("string"),
                        },
                    },
                ]
            },
            "created_at": _TIME,
            "updated_at": _TIME,
            "deleted_at": _NULLABLE_TIME,
        },
    },
    "ConnectionList": {
        "type": "object",
        "additionalProperties": False,
        "required": ["data", "next_cursor"],
        "properties": {
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Connection"}},
            "next_cursor": _nullable("string", description="Pass as `cursor` for the next page"),
        },
    },
    "ConnectionResponse": {
        "type": "object",
        "additionalProperties": False,
        "required": ["data"],
        "properties": {"data": {"$ref": "#/components/schemas/Connection"}},
    },
    "ConnectionEvent": {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "id",
            "source",
            "action",
            "success",
            "from_status",
            "to_status",
            "detail",
            "delivery",
            "created_at",
        ],
        "properties": {
            "id": {"type": "integer"},
            "source": {"type": "string", "examples": ["webhook", "reconcile", "api"]},
            "action": {"type": "string", "examples": ["creation", "refresh", "deletion"]},
            "success": _nullable("boolean"),
            "from_status": _nullable("string"),
            "to_status": _nullable("string"),
            "detail": {"type": "object"},
            "delivery": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": [
                            "id",
                            "received_at",
                            "webhook_type",
                            "operation",
                            "success",
                            "outcome",
                        ],
                        "properties": {
                            "id": {"type": "integer"},
                            "received_at": _TIME,
                            "webhook_type": _nullable("string"),
                            "operation": _nullable("string"),
                            "success": _nullable("boolean"),
                            "outcome": {"type": "string"},
                        },
                    },
                ]
            },
            "created_at": _TIME,
        },
    },
    "ConnectionEventList": {
        "type": "object",
        "additionalProperties": False,
        "required": ["data", "next_cursor"],
        "properties": {
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/ConnectionEvent"}},
            "next_cursor": _nullable("string"),
        },
    },
    "EndUserSummary": {
        "type": "object",
        "additionalProperties": False,
        "required": ["data"],
        "properties": {
            "data": {
                "type": "object",
                "additionalProperties": False,
                "required": ["end_user_id", "integrations"],
                "properties": {
                    "end_user_id": {"type": "string"},
                    "integrations": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": [
                                "integration_id",
                                "environment",
                                "connected",
                                "needs_reauthorization",
                                "connection_count",
                                "connection",
                            ],
                            "properties": {
                                "integration_id": {"type": "string"},
                                "environment": {"type": "string"},
                                "connected": {
                                    "type": "boolean",
                                    "description": "an active connection exists",
                                },
                                "needs_reauthorization": {
                                    "type": "boolean",
                                    "description": "no active connection; the newest is broken",
                                },
                                "connection_count": {"type": "integer", "minimum": 1},
                                "connection": {"$ref": "#/components/schemas/Connection"},
                            },
                        },
                    },
                },
            }
        },
    },
    "Health": {
        "type": "object",
        "additionalProperties": False,
        "required": ["status"],
        "properties": {"status": {"type": "string", "const": "ok"}},
    },
    "Readiness": {
        "type": "object",
        "additionalProperties": False,
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "schema_revision": {"type": "string"},
            "reason": {"type": "string"},
        },
    },
}


def json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def error_responses(*status_codes: int) -> dict[str, Any]:
    """``{"401": {"$ref": ...}, ...}`` for the shared error responses."""
    return {
        str(code): {"$ref": f"#/components/responses/{_ERRORS[code][0]}"} for code in status_codes
    }


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _query(name: str, description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema, **extra}


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


# Postgres text cannot hold NUL, so no stored value has one; a NUL in a filter is a 400.
_NO_NUL = "^[^\\x00]*$"


_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_VALUE_LENGTH, "pattern": _NO_NUL}
_LIMIT = _query(
    "limit",
    f"page size, 1 to {MAX_LIMIT}",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
)
_CURSOR = _query(
    "cursor", "`next_cursor` of the previous page (opaque, signed)", {"type": "string"}
)
_SELECTORS = [
    _query("integration_id", "choose among connections sharing a legacy ID", _TEXT),
    _query("environment", "choose among connections sharing a legacy ID", _TEXT),
]

PATHS: dict[str, dict[str, Any]] = {
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "summary": "The process is up",
            "responses": {"200": json_response("Up", ref("Health"))},
        }
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "summary": "The database answers and its schema is current",
            "responses": {
                "200": json_response("Ready", ref("Readiness")),
                "503": json_response("Not ready", ref("Readiness")),
            },
        }
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {"200": json_response("OpenAPI 3.1", {"type": "object"})},
        }
    },
    "/webhooks/nango": {
        "post": {
            "operationId": "receiveNangoWebhook",
            "summary": "Nango's webhooks, verified over the raw body and stored before the answer",
            "parameters": [
                {
                    "name": "X-Nango-Hmac-Sha256",
                    "in": "header",
                    "required": False,
                    "description": "hex HMAC-SHA256 of the raw body with a webhook signing key",
                    "schema": {"type": "string"},
                },
                {
                    "name": "X-Nango-Signature",
                    "in": "header",
                    "required": False,
                    "description": "legacy sha256(key + body); only with "
                    "NANGO_ACCEPT_LEGACY_SIGNATURE",
                    "schema": {"type": "string"},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": {"type": "object"}}},
            },
            "responses": {
                "200": json_response(
                    "Stored (`status` is the outcome: applied, recorded, duplicate, ...)",
                    {
                        "type": "object",
                        "required": ["status", "delivery_id"],
                        "properties": {
                            "status": {"type": "string"},
                            "delivery_id": {"type": ["integer", "null"]},
                        },
                    },
                ),
                **error_responses(400, 401, 413, 503),
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (404 when METRICS_ENABLED=false)",
            "security": BEARER,
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **error_responses(401, 404),
            },
        }
    },
    "/v1/connections": {
        "get": {
            "operationId": "listConnections",
            "summary": "Connections, newest first; every filter given must match",
            "security": BEARER,
            "parameters": [
                _query("end_user_id", "owner's user ID", _TEXT),
                _query("organization_id", "owner's organization ID", _TEXT),
                _query("integration_id", "Nango integration (providerConfigKey)", _TEXT),
                _query("environment", "Nango environment, e.g. prod", _TEXT),
                _query(
                    "status",
                    "comma-separated; default active,auth_error (deleted left out)",
                    {"type": "array", "items": {"type": "string", "enum": list(STATUSES)}},
                    style="form",
                    explode=False,
                ),
                _query(
                    "tag",
                    "tag[KEY]=VALUE; several must all match",
                    {
                        "type": "object",
                        "propertyNames": {"pattern": "^[a-z][a-z0-9_\\-./]{0,63}$"},
                        "additionalProperties": _TEXT,
                    },
                    style="deepObject",
                    explode=True,
                ),
                _query(
                    "attributed",
                    "false: connections with neither an end user nor an organization",
                    {"type": "boolean"},
                ),
                _LIMIT,
                _CURSOR,
            ],
            "responses": {
                "200": json_response("A page of connections", ref("ConnectionList")),
                **error_responses(400, 401, 503),
            },
        }
    },
    "/v1/connections/{connection_id}": {
        "get": {
            "operationId": "getConnection",
            "summary": "One connection, deleted ones included",
            "security": BEARER,
            "parameters": [_path("connection_id", "Nango connection ID"), *_SELECTORS],
            "responses": {
                "200": json_response("The connection", ref("ConnectionResponse")),
                **error_responses(400, 401, 404, 409, 503),
            },
        }
    },
    "/v1/connections/{connection_id}/events": {
        "get": {
            "operationId": "listConnectionEvents",
            "summary": "A connection's delivery and state history, newest first",
            "security": BEARER,
            "parameters": [
                _path("connection_id", "Nango connection ID"),
                *_SELECTORS,
                _LIMIT,
                _CURSOR,
            ],
            "responses": {
                "200": json_response("A page of events", ref("ConnectionEventList")),
                **error_responses(400, 401, 404, 409, 503),
            },
        }
    },
    "/v1/end-users/{end_user_id}/summary": {
        "get": {
            "operationId": "endUserSummary",
            "summary": "Per integration: connected? which connection? needs re-authorization?",
            "security": BEARER,
            "parameters": [
                _path("end_user_id", "your user ID (the end_user_id tag)"),
                _query("environment", "only this Nango environment", _TEXT),
            ],
            "responses": {
                "200": json_response("The summary", ref("EndUserSummary")),
                **error_responses(400, 401, 404, 503),
            },
        }
    },
}


def add_operation(path: str, method: str, operation: dict[str, Any]) -> None:
    """Describe one route; a path may carry several methods from several modules."""
    PATHS.setdefault(path, {})[method.lower()] = operation


def add_schema(name: str, schema: dict[str, Any]) -> None:
    SCHEMAS[name] = schema


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nango-registry",
            "version": "1",
            "description": "Nango connections, stored against your users and organizations.",
        },
        "paths": copy.deepcopy(PATHS),
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "responses": {
                name: json_response(description, ref("Error"))
                for name, description in _ERRORS.values()
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "REGISTRY_API_KEYS or a key from `nango-registry api-keys`",
                }
            },
        },
    }


async def openapi_json(request: Request) -> JSONResponse:
    return JSONResponse(document())
