"""An in-process fake of Nango's API, written from docs/nango.md sections 5 and 6.

It validates request bodies as strictly as Nango (unknown keys → 400 ``invalid_body``, the tag
rules), keeps connections in memory, pages ``GET /connections`` newest first by ``limit``/``page``,
checks the bearer secret key, records every request, and can be told to fail. The real
``NangoClient`` reaches it through ``httpx2.ASGITransport(app=fake.app)``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TAG_KEY = re.compile(r"^[a-zA-Z][a-zA-Z0-9_\-./]*$")
SESSION_KEYS = {
    "tags",
    "end_user",
    "organization",
    "allowed_integrations",
    "integrations_config_defaults",
    "overrides",
    "webhook_url_override",
}
RECONNECT_KEYS = {
    "connection_id",
    "integration_id",
    "tags",
    "end_user",
    "organization",
    "integrations_config_defaults",
    "overrides",
    "webhook_url_override",
}
END_USER_KEYS = {"id", "email", "display_name", "tags"}
ORGANIZATION_KEYS = {"id", "display_name"}
LIST_PARAMS = {"limit", "page", "integrationId", "search", "connectionId"}


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class Failure:
    status: int = 500
    code: str = "server_error"
    delay: float = 0.0  # seconds to stall before answering (longer than the client's deadline)


@dataclass
class FakeConnection:
    id: int
    connection_id: str
    provider_config_key: str
    provider: str
    created: datetime
    tags: dict[str, str] = field(default_factory=dict)
    end_user: dict[str, Any] | None = None
    errors: list[dict[str, str]] = field(default_factory=list)
    metadata: dict[str, Any] | None = None

    def listed(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "connection_id": self.connection_id,
            "provider_config_key": self.provider_config_key,
            "provider": self.provider,
            "errors": list(self.errors),
            "end_user": self.end_user,
            "tags": dict(self.tags),
            "metadata": self.metadata,
            "created": self.created.isoformat().replace("+00:00", "Z"),
        }


def _invalid(message: str, path: str = "") -> JSONResponse:
    issue = {"code": "custom", "message": message, "path": [path] if path else []}
    return JSONResponse(
        {"error": {"code": "invalid_body", "message": message, "errors": [issue]}}, status_code=400
    )


def _tag_problem(tags: object) -> str | None:
    if not isinstance(tags, dict):
        return "tags must be an object"
    if len(tags) > 10:
        return "at most 10 tags"
    for key, value in tags.items():
        if not TAG_KEY.match(key) or len(key) > 64:
            return f"invalid tag key {key!r}"
        if not isinstance(value, str) or not 1 <= len(value) <= 255:
            return f"tag {key!r} must be a string of 1 to 255 characters"
    return None


def _session_body_problem(body: object, allowed: set[str]) -> str | None:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    unknown = set(body) - allowed
    if unknown:
        return f"unrecognized keys: {sorted(unknown)}"
    if "tags" in body and (problem := _tag_problem(body["tags"])):
        return problem
    if "end_user" in body:
        end_user = body["end_user"]
        if not isinstance(end_user, dict) or set(end_user) - END_USER_KEYS:
            return "end_user: unrecognized keys or not an object"
        if not isinstance(end_user.get("id"), str) or not end_user["id"]:
            return "end_user.id is required"
    if "organization" in body:
        organization = body["organization"]
        if not isinstance(organization, dict) or set(organization) - ORGANIZATION_KEYS:
            return "organization: unrecognized keys or not an object"
        if not isinstance(organization.get("id"), str):
            return "organization.id is required"
    if "allowed_integrations" in body:
        allowed_integrations = body["allowed_integrations"]
        if not isinstance(allowed_integrations, list) or not all(
            isinstance(item, str) and item for item in allowed_integrations
        ):
            return "allowed_integrations must be a list of integration IDs"
    return None


# The test settings' NANGO_SECRET_KEY (tests/conftest.py make_settings).
DEFAULT_SECRET = "test-nango-secret-key"


class FakeNango:
    def __init__(self, *, secret_key: str = DEFAULT_SECRET) -> None:
        self.secret_key = secret_key
        self.connections: list[FakeConnection] = []
        self.sessions: dict[str, dict[str, Any]] = {}
        self.requests: list[RecordedRequest] = []
        self.failures: list[Failure] = []
        # Called after a GET /connections page is built and before it is answered: lets a test
        # change the world (the database, Nango's connections) in the middle of a listing.
        self.on_list_page: Callable[[int], Awaitable[None] | None] | None = None
        self._next_id = 1
        self._clock = datetime(2026, 1, 1, tzinfo=UTC)
        self.app = Starlette(
            routes=[
                Route("/connect/sessions", self._connect_session, methods=["POST"]),
                Route("/connect/sessions/reconnect", self._reconnect_session, methods=["POST"]),
                Route("/connections", self._list, methods=["GET"]),
                Route("/connections/{connection_id:path}", self._get, methods=["GET"]),
                Route("/connections/{connection_id:path}", self._delete, methods=["DELETE"]),
            ]
        )

    def transport(self) -> httpx2.ASGITransport:
        return httpx2.ASGITransport(app=self.app)

    # Arranging -----------------------------------------------------------------------------

    def add_connection(
        self,
        *,
        connection_id: str | None = None,
        integration_id: str = "github",
        provider: str | None = None,
        tags: dict[str, str] | None = None,
        end_user: dict[str, Any] | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> FakeConnection:
        self._clock += timedelta(seconds=1)
        connection = FakeConnection(
            id=self._next_id,
            connection_id=connection_id or secrets.token_hex(16),
            provider_config_key=integration_id,
            provider=provider or integration_id,
            created=self._clock,
            tags=dict(tags or {}),
            end_user=end_user,
            errors=list(errors or []),
        )
        self._next_id += 1
        self.connections.append(connection)
        return connection

    def find(self, connection_id: str, integration_id: str | None = None) -> FakeConnection | None:
        for connection in self.connections:
            if connection.connection_id == connection_id and integration_id in (
                None,
                connection.provider_config_key,
            ):
                return connection
        return None

    def complete_session(self, token: str, *, integration_id: str = "github") -> FakeConnection:
        """What a user finishing the Connect UI causes: a connection carrying the session's tags."""
        session = self.sessions[token]
        return self.add_connection(integration_id=integration_id, tags=session.get("tags") or {})

    def fail_next(self, count: int = 1, *, status: int = 500, code: str = "server_error") -> None:
        self.failures.extend(Failure(status=status, code=code) for _ in range(count))

    def stall_next(self, count: int = 1, *, seconds: float = 5.0) -> None:
        self.failures.extend(Failure(status=200, delay=seconds) for _ in range(count))

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path == path]

    # The API --------------------------------------------------------------------------------

    async def _gate(self, request: Request) -> tuple[Any, Response | None]:
        raw = await request.body()
        body: Any = None
        if raw:
            try:
                body = await request.json()
            except ValueError:
                body = raw.decode("utf-8", "replace")
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.url.path,
                query=dict(request.query_params),
                headers=dict(request.headers),
                body=body,
            )
        )
        if request.headers.get("authorization") != f"Bearer {self.secret_key}":
            return body, JSONResponse(
                {"error": {"code": "unknown_account", "message": "No account found"}},
                status_code=401,
            )
        if self.failures:
            failure = self.failures.pop(0)
            if failure.delay:
                await anyio.sleep(failure.delay)
            if failure.status >= 400:
                return body, JSONResponse(
                    {"error": {"code": failure.code, "message": f"injected {failure.status}"}},
                    status_code=failure.status,
                )
        return body, None

    def _new_session(self, body: dict[str, Any]) -> JSONResponse:
        token = "nango_connect_session_" + secrets.token_hex(32)
        self.sessions[token] = body
        expires = datetime.now(UTC) + timedelta(minutes=30)
        return JSONResponse(
            {
                "data": {
                    "token": token,
                    "connect_link": f"https://connect.nango.dev?session_token={token}",
                    "expires_at": expires.isoformat().replace("+00:00", "Z"),
                }
            },
            status_code=201,
        )

    async def _connect_session(self, request: Request) -> Response:
        body, refused = await self._gate(request)
        if refused:
            return refused
        if problem := _session_body_problem(body, SESSION_KEYS):
            return _invalid(problem)
        if "tags" not in body and "end_user" not in body:
            return _invalid("one of tags or end_user is required")
        return self._new_session(body)

    async def _reconnect_session(self, request: Request) -> Response:
        body, refused = await self._gate(request)
        if refused:
            return refused
        if problem := _session_body_problem(body, RECONNECT_KEYS):
            return _invalid(problem)
        for key in ("connection_id", "integration_id"):
            if not isinstance(body.get(key), str) or not body[key]:
                return _invalid(f"{key} is required", key)
        if self.find(body["connection_id"], body["integration_id"]) is None:
            return JSONResponse(
                {"error": {"code": "unknown_connection", "message": "Connection not found"}},
                status_code=400,
            )
        return self._new_session(body)

    async def _list(self, request: Request) -> Response:
        _, refused = await self._gate(request)
        if refused:
            return refused
        query = request.query_params
        unknown = {key for key in query if key not in LIST_PARAMS and not key.startswith("tags[")}
        if unknown:
            return JSONResponse(
                {"error": {"code": "invalid_query_params", "message": str(sorted(unknown))}},
                status_code=400,
            )
        try:
            limit = int(query.get("limit", "100"))
            page = int(query.get("page", "0"))
        except ValueError:
            limit = page = -1
        if not 1 <= limit <= 2000 or page < 0:
            return JSONResponse(
                {"error": {"code": "invalid_query_params", "message": "limit or page"}},
                status_code=400,
            )
        matches = sorted(self.connections, key=lambda c: (c.created, c.id), reverse=True)
        if integrations := query.get("integrationId"):
            wanted = set(integrations.split(","))
            matches = [c for c in matches if c.provider_config_key in wanted]
        if search := query.get("search"):
            matches = [c for c in matches if search.lower() in c.connection_id.lower()]
        for key, value in query.items():
            if key.startswith("tags[") and key.endswith("]"):
                matches = [c for c in matches if c.tags.get(key[5:-1]) == value]
        chunk = [c.listed() for c in matches[page * limit : (page + 1) * limit]]
        if self.on_list_page is not None:
            outcome = self.on_list_page(page)
            if outcome is not None:
                await outcome
        return JSONResponse({"connections": chunk})

    async def _addressed(self, request: Request) -> tuple[FakeConnection | None, Response | None]:
        """The connection ``/connections/{id}?provider_config_key=`` names, or the refusal."""
        _, refused = await self._gate(request)
        if refused:
            return None, refused
        key = request.query_params.get("provider_config_key")
        if not key:
            return None, JSONResponse(
                {"error": {"code": "missing_provider_config_key", "message": "required"}},
                status_code=400,
            )
        return self.find(request.path_params["connection_id"], key), None

    @staticmethod
    def _unknown(status_code: int) -> Response:
        # Nango answers an unknown connection with 404 on GET but 400 on DELETE.
        return JSONResponse(
            {"error": {"code": "unknown_connection", "message": "Connection not found"}},
            status_code=status_code,
        )

    async def _get(self, request: Request) -> Response:
        connection, problem = await self._addressed(request)
        if problem:
            return problem
        if connection is None:
            return self._unknown(404)
        return JSONResponse(
            {
                **connection.listed(),
                "connection_config": {},
                "credentials": {"type": "OAUTH2", "access_token": "fake-provider-token"},
            }
        )

    async def _delete(self, request: Request) -> Response:
        connection, problem = await self._addressed(request)
        if problem:
            return problem
        if connection is None:
            return self._unknown(400)
        self.connections.remove(connection)
        return JSONResponse({"success": True})
