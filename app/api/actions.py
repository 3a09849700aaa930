"""Routes that act on Nango: Connect sessions, reconnects, deletes, reconcile, legacy HMAC.

All of them change state at Nango or here, so all need a full-access API key. Input is checked
here, before Nango is called, with Nango's own rules (FACTS.md section 5). Nango's refusals
become 502 ``{"error": {"code": "nango_<Nango's code>"}}`` (``nango_invalid_body``,
``nango_unknown_account``...), prefixed so a caller can tell Nango's codes from this service's;
Nango unreachable (after retries) is 502 ``nango_unavailable``; ``NANGO_SECRET_KEY`` unset is 503
``nango_not_configured``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from app.api import openapi
from app.api.auth import require_api_key
from app.api.schemas import connection_to_json, reject_unknown_parameters
from app.connections import store
from app.connections.model import (
    ATTRIBUTION_FIELDS,
    Connection,
    ConnectionStatus,
    clean_text,
)
from app.connections.queries import get_connection
from app.connections.reconcile import ReconcileBusy, reconcile
from app.errors import (
    BadRequest,
    Conflict,
    NotFound,
    ServiceUnavailable,
    UpstreamError,
)
from app.logs import get_logger
from app.nango.client import (
    NangoClient,
    NangoError,
    NangoNotConfigured,
    NangoRejected,
)
from app.responses import JSONResponse
from app.state import app_state

log = get_logger(__name__)

TAG_KEY = re.compile(r"^[a-zA-Z][a-zA-Z0-9_\-./]*$")
MAX_TAGS = 10
# Deliberately loose: one "@", no spaces, a dot in the domain. Deliverability is not ours to judge.
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_JSON_BODY = 64 * 1024

# Taken as sent (no stripping), so the limits are the ones /openapi.json states; not blank.
Text = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"\S")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ConnectSessionRequest(_Strict):
    end_user_id: Text
    end_user_email: Text | None = None
    end_user_display_name: Text | None = None
    organization_id: Text | None = None
    organization_display_name: Text | None = None
    allowed_integrations: list[Text] | None = Field(default=None, min_length=1, max_length=100)
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("end_user_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not EMAIL.match(value):
            raise ValueError("not an email address")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        tags: dict[str, str] = {}
        for key, tag in value.items():
            if not TAG_KEY.match(key) or len(key) > 64:
                raise ValueError(
                    f"tag key {key!r} must start with a letter, use only letters, digits and"
                    " _-./, and be at most 64 characters"
                )
            if not 1 <= len(tag) <= 255:
                raise ValueError(f"tag {key!r} must be 1 to 255 characters")
            # Nango reports tag keys in lowercase; two keys differing in case would collide.
            lowered = key.lower()
            if lowered in tags:
                raise ValueError(f"tag key {key!r} repeats another key that differs only in case")
            if lowered in ATTRIBUTION_FIELDS:
                raise ValueError(f"set {lowered} as a field of its own, not as a tag")
            tags[lowered] = tag
        return tags

    @model_validator(mode="after")
    def _tag_count(self) -> ConnectSessionRequest:
        if len(self.nango_tags()) > MAX_TAGS:
            raise ValueError(
                f"at most {MAX_TAGS} tags in all, counting end_user_* and organization_* fields"
            )
        return self

    def nango_tags(self) -> dict[str, str]:
        built = {name: getattr(self, name) for name in ATTRIBUTION_FIELDS}
        return {**{k: v for k, v in built.items() if v is not None}, **self.tags}


class ReconnectRequest(_Strict):
    integration_id: Text | None = None


class LegacyHmacRequest(_Strict):
    integration_id: Text
    connection_id: Text


def _nango(request: Request) -> NangoClient:
    return app_state(request).nango


@contextmanager
def nango_errors() -> Iterator[None]:
    """Turn a failed call to Nango into this service's JSON error."""
    try:
        yield
    except NangoNotConfigured as error:
        raise ServiceUnavailable(error.message, code="nango_not_configured") from None
    except NangoRejected as error:
        raise UpstreamError(
            error.message,
            code=f"nango_{error.code}",
            details={"nango_status": error.status, "nango_code": error.code},
        ) from None
    except NangoError as error:
        raise UpstreamError(error.message, code="nango_unavailable") from None


async def _json_body(request: Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_JSON_BODY:
        raise BadRequest("request body too large", code="body_too_large")
    if not raw.strip() and optional:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("the body must be a JSON object", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    return body


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], body: dict[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as error:
        problems = [
            {
                "field": ".".join(str(part) for part in item["loc"]) or "body",
                "message": item["msg"].removeprefix("Value error, "),
            }
            for item in error.errors(include_url=False, include_input=False)
        ]
        first = problems[0]
        raise BadRequest(
            f"{first['field']}: {first['message']}",
            code="invalid_body",
            details={"errors": problems},
        ) from None


async def _write_request(request: Request, *, query: tuple[str, ...] | None = ()) -> None:
    """A full-access key, and no query parameter the route does not know (as on lookups).

    ``query=None``: the route checks its parameters once it has found the connection, because
    with ``{connection_id:path}`` a path like ``.../x/events`` may name connection ``x/events``;
    an unknown connection must answer 404 before its parameters are judged.
    """
    await require_api_key(request, write=True)
    if query is not None:
        reject_unknown_parameters(request.query_params, query)


def _integration_id(request: Request, from_body: str | None = None) -> str | None:
    from_query = clean_text(request.query_params.get("integration_id"))
    if from_query and from_body and from_query != from_body:
        raise BadRequest("integration_id differs between the query and the body")
    return from_body or from_query


async def create_connect_session(request: Request) -> JSONResponse:
    await _write_request(request, query=())
    payload = _validate(ConnectSessionRequest, await _json_body(request))
    body: dict[str, Any] = {"tags": payload.nango_tags()}
    if payload.allowed_integrations:
        body["allowed_integrations"] = payload.allowed_integrations
    with nango_errors():
        session = await _nango(request).create_connect_session(body)
    log.info("connect_session_created", end_user_id=payload.end_user_id)
    return JSONResponse(session, status_code=201)


def _reconnect_tags(connection: Connection) -> dict[str, str]:
    """The stored tags that Nango accepts, with the owner filled in: Nango may clear them."""
    tags = {
        key: value
        for key, value in (connection.tags or {}).items()
        if TAG_KEY.match(key) and len(key) <= 64 and 1 <= len(value) <= 255
    }
    for name in ATTRIBUTION_FIELDS:
        value = getattr(connection, name)
        if value and name not in tags:
            tags[name] = value
    # Nango takes at most ten; the owner's keys are kept first.
    ordered = sorted(tags.items(), key=lambda item: item[0] not in ATTRIBUTION_FIELDS)
    return dict(ordered[:MAX_TAGS])


async def create_reconnect_session(request: Request) -> JSONResponse:
    await _write_request(request, query=None)
    payload = _validate(ReconnectRequest, await _json_body(request, optional=True))
    state = app_state(request)
    async with state.database.reader() as tx:
        connection = await get_connection(
            tx,
            environment=state.settings.nango_environment,
            connection_id=request.path_params["connection_id"],
            integration_id=_integration_id(request, payload.integration_id),
        )
    reject_unknown_parameters(request.query_params, ("integration_id",))
    if connection.status == ConnectionStatus.DELETED:
        raise Conflict("the connection is deleted: start a new Connect session", code="deleted")
    nango_body: dict[str, Any] = {
        "connection_id": connection.connection_id,
        "integration_id": connection.integration_id,
    }
    tags = _reconnect_tags(connection)
    if tags:
        nango_body["tags"] = tags
    else:
        # Without tags Nango would clear nothing, but the new session would still carry no owner:
        # better to say so than to re-authorize a connection nobody here can attribute.
        raise Conflict(
            "the connection has no owner or tags to send again; import or reconcile it first",
            code="unattributed",
        )
    with nango_errors():
        try:
            session_data = await _nango(request).create_reconnect_session(nango_body)
        except NangoRejected as error:
            if error.code != "unknown_connection":
                raise
            # Stored here but gone at Nango (a deletion whose webhook was lost): not a gateway
            # failure, and not something a retry fixes.
            raise NotFound(
                "Nango no longer has this connection; `reconcile` marks it deleted",
                code="unknown_at_nango",
            ) from None
    return JSONResponse(session_data, status_code=201)


async def delete_connection(request: Request) -> JSONResponse:
    await _write_request(request, query=None)
    state = app_state(request)
    environment = state.settings.nango_environment
    connection_id = request.path_params["connection_id"]
    async with state.database.reader() as tx:
        connection = await get_connection(
            tx,
            environment=environment,
            connection_id=connection_id,
            integration_id=_integration_id(request),
        )
    reject_unknown_parameters(request.query_params, ("integration_id",))
    with nango_errors():
        try:
            await _nango(request).delete_connection(
                connection.connection_id, connection.integration_id
            )
        except NangoRejected as error:
            if error.code != "unknown_connection":
                raise
            # Nango no longer has it: deleted already, the outcome the caller asked for.
    async with state.database.transaction() as tx:
        locked, created = await store.lock_connection(
            tx,
            store.new_connection_values(
                environment=environment,
                integration_id=connection.integration_id,
                connection_id=connection.connection_id,
                status=ConnectionStatus.DELETED,
            ),
        )
        if created or locked.status != ConnectionStatus.DELETED:
            await store.change_status(
                tx,
                locked,
                ConnectionStatus.DELETED,
                source="api",
                action="deletion",
                success=True,
            )
    log.info("connection_deleted", integration_id=locked.integration_id)
    return JSONResponse({"data": connection_to_json(locked)})


async def run_reconcile(request: Request) -> JSONResponse:
    await _write_request(request, query=())
    state = app_state(request)
    with nango_errors():
        try:
            counts = await reconcile(
                database=state.database,
                nango=_nango(request),
                environment=state.settings.nango_environment,
                trigger="api",
            )
        except ReconcileBusy as error:
            raise Conflict(str(error), code="reconcile_running") from None
    assert counts is not None
    return JSONResponse(
        {"environment": state.settings.nango_environment, "counts": counts.as_dict()}
    )


def legacy_hmac(key: str, *, integration_id: str, connection_id: str) -> str:
    """The digest the old ``nango.auth()`` flow checks (FACTS.md section 1)."""
    message = f"{integration_id}:{connection_id}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


async def create_legacy_auth_hmac(request: Request) -> JSONResponse:
    await _write_request(request, query=())
    key = app_state(request).settings.nango_legacy_hmac_key
    if key is None or not key.get_secret_value():
        raise NotFound("NANGO_LEGACY_HMAC_KEY is not set: the legacy flow is off")
    payload = _validate(LegacyHmacRequest, await _json_body(request))
    digest = legacy_hmac(
        key.get_secret_value(),
        integration_id=payload.integration_id,
        connection_id=payload.connection_id,
    )
    return JSONResponse({"hmac": digest})


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/connect-sessions", create_connect_session, methods=["POST"]),
        Route(
            "/v1/connections/{connection_id:path}/reconnect-session",
            create_reconnect_session,
            methods=["POST"],
        ),
        Route("/v1/connections/{connection_id:path}", delete_connection, methods=["DELETE"]),
        Route("/v1/reconcile", run_reconcile, methods=["POST"]),
        Route("/v1/legacy/auth-hmac", create_legacy_auth_hmac, methods=["POST"]),
    ]


def _describe() -> None:
    """Describe these routes in /openapi.json; request bodies come from the models above."""
    session = {
        "type": "object",
        "required": ["token", "connect_link", "expires_at"],
        "properties": {
            "token": {"type": "string"},
            "connect_link": {"type": "string"},
            "expires_at": {"type": "string", "format": "date-time"},
        },
    }
    openapi.add_schema("ConnectSession", session)
    selector = {
        "name": "integration_id",
        "in": "query",
        "description": "choose among connections sharing a legacy ID",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    }
    connection_id = {
        "name": "connection_id",
        "in": "path",
        "required": True,
        "description": "Nango connection ID",
        "schema": {"type": "string", "minLength": 1},
    }

    def body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
        schema = model.model_json_schema()
        return {"required": required, "content": {"application/json": {"schema": schema}}}

    write = openapi.error_responses(400, 401, 403, 502, 503)
    openapi.add_operation(
        "/v1/connect-sessions",
        "post",
        {
            "operationId": "createConnectSession",
            "summary": "A Nango Connect session for one of your users (tags carry the owner)",
            "security": openapi.BEARER,
            "requestBody": body(ConnectSessionRequest),
            "responses": {
                "201": openapi.json_response("The session", openapi.ref("ConnectSession")),
                **write,
            },
        },
    )
    openapi.add_operation(
        "/v1/connections/{connection_id}/reconnect-session",
        "post",
        {
            "operationId": "createReconnectSession",
            "summary": "A reconnect session for a stored connection, its tags sent again",
            "security": openapi.BEARER,
            "parameters": [connection_id, selector],
            "requestBody": body(ReconnectRequest, required=False),
            "responses": {
                "201": openapi.json_response("The session", openapi.ref("ConnectSession")),
                **write,
                **openapi.error_responses(404, 409),
            },
        },
    )
    openapi.add_operation(
        "/v1/connections/{connection_id}",
        "delete",
        {
            "operationId": "deleteConnection",
            "summary": "Delete at Nango, then mark deleted here (idempotent)",
            "security": openapi.BEARER,
            "parameters": [connection_id, selector],
            "responses": {
                "200": openapi.json_response(
                    "The deleted connection", openapi.ref("ConnectionResponse")
                ),
                **write,
                **openapi.error_responses(404, 409),
            },
        },
    )
    counts = {"type": "integer", "minimum": 0}
    openapi.add_operation(
        "/v1/reconcile",
        "post",
        {
            "operationId": "reconcile",
            "summary": "Bring the registry in line with Nango's connections API",
            "security": openapi.BEARER,
            "responses": {
                "200": openapi.json_response(
                    "What changed",
                    {
                        "type": "object",
                        "required": ["environment", "counts"],
                        "properties": {
                            "environment": {"type": "string"},
                            "counts": {
                                "type": "object",
                                "required": [
                                    "seen",
                                    "created",
                                    "updated",
                                    "deleted",
                                    "unattributed",
                                ],
                                "properties": dict.fromkeys(
                                    ("seen", "created", "updated", "deleted", "unattributed"),
                                    counts,
                                ),
                            },
                        },
                    },
                ),
                **write,
                **openapi.error_responses(409),
            },
        },
    )
    openapi.add_operation(
        "/v1/legacy/auth-hmac",
        "post",
        {
            "operationId": "legacyAuthHmac",
            "summary": "The HMAC the legacy public-key flow checks (404 when not configured)",
            "security": openapi.BEARER,
            "requestBody": body(LegacyHmacRequest),
            "responses": {
                "200": openapi.json_response(
                    "The digest",
                    {
                        "type": "object",
                        "required": ["hmac"],
                        "properties": {"hmac": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
                    },
                ),
                **openapi.error_responses(400, 401, 403, 404, 503),
            },
        },
    )


_describe()
