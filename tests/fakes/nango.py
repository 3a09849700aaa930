"""An in-process fake of Nango's API: the oracle of the test suite.

Written from ``docs/nango.md`` (sections 5 and 6 and its Corrections) and checked
against Nango's server (NangoHQ/nango at 2f4c0af, v0.71.4); each route names the controller it
imitates. Input is validated as strictly as Nango does (``tests/fakes/nango_rules.py``), answers
have Nango's shapes, status codes and error codes, and the rate limit can be switched on
(``tests/fakes/nango_rate_limit.py``). It checks the bearer secret key, records every request and
can be told to fail or stall. The real ``NangoClient`` reaches it through
``httpx2.ASGITransport(app=fake.app)``.

Integrations: Nango refuses integration IDs it does not have. ``FakeNango(integrations=[...])``
makes the fake do the same (a connection's integration always exists); without it, every
integration a request names is taken to exist, as most tests need no more.

Credentials: ``GET /connections/{id}`` answers each connection's ``credentials`` with secret
tokens, as Nango does for a secret key allowed to read them. Every secret value the fake makes
starts with ``CREDENTIAL_MARKER``, so a test (or the session's secret scan) can look for leaks.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import anyio
import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes import nango_rules as rules
from tests.fakes.nango_rate_limit import RateLimiter

# The test settings' NANGO_SECRET_KEY (tests/conftest.py make_settings).
DEFAULT_SECRET = "test-nango-secret-key"
CREDENTIAL_MARKER = "nango-fake-credential-"

ErrorType = Literal["auth", "sync"]
Handler = Callable[[Request, Any], Awaitable[Response]]


@dataclass(frozen=True)
class ActiveLog:
    """One entry of a connection's ``errors``: an active ``auth`` or ``sync`` error log.

    ``packages/shared/lib/services/notification/error.service.ts``: a failed refresh or
    credential check keeps one ``auth`` log, each failing sync one ``sync`` log, until fixed.
    """

    type: ErrorType
    log_id: str = field(default_factory=lambda: secrets.token_hex(10))

    @classmethod
    def of(cls, value: ErrorType | ActiveLog) -> ActiveLog:
        if isinstance(value, ActiveLog):
            return value
        if value not in ("auth", "sync"):
            raise ValueError(f"Nango's errors entries are 'auth' or 'sync', not {value!r}")
        return cls(type=value)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True)
class Failure:
    status: int = 500
    code: str = "server_error"
    delay: float = 0.0  # seconds to stall before answering (longer than the client's deadline)


def _iso(moment: datetime, *, offset: bool = False) -> str:
    """JavaScript's ``toISOString()`` (milliseconds, ``Z``); ``+00:00`` where Nango swaps it in."""
    text = (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    )
    return text + ("+00:00" if offset else "Z")


def _new_credentials() -> dict[str, Any]:
    """OAuth2 credentials as Nango answers them: the tokens, and the provider's raw answer."""
    access, refresh = (CREDENTIAL_MARKER + secrets.token_hex(16) for _ in range(2))
    return {
        "type": "OAUTH2",
        "access_token": access,
        "refresh_token": refresh,
        "expires_at": "2030-01-01T00:00:00.000Z",
        "raw": {"access_token": access, "refresh_token": refresh, "token_type": "bearer"},
    }


@dataclass
class FakeConnection:
    id: int
    connection_id: str
    provider_config_key: str
    provider: str
    created: datetime
    updated: datetime
    tags: dict[str, str] = field(default_factory=dict)
    end_user: dict[str, Any] | None = None  # in the API's shape (formatters/endUser.ts)
    errors: list[ActiveLog] = field(default_factory=list)
    metadata: dict[str, Any] | None = None
    connection_config: dict[str, Any] = field(default_factory=dict)
    credentials: dict[str, Any] = field(default_factory=_new_credentials)
    webhook_url_override: str | None = None
    last_fetched_at: datetime | None = None

    def listed(self) -> dict[str, Any]:
        """One entry of ``GET /connections`` (``connectionSimpleToPublicApi``)."""
        return {
            "id": self.id,
            "connection_id": self.connection_id,
            "provider_config_key": self.provider_config_key,
            "provider": self.provider,
            "errors": [{"type": log.type, "log_id": log.log_id} for log in self.errors],
            "end_user": self.end_user,
            "tags": dict(self.tags),
            "metadata": self.metadata or None,
            "created": _iso(self.created),
        }

    def full(self) -> dict[str, Any]:
        """``GET /connections/{id}`` (``retrievedConnectionToPublicApi``), credentials included."""
        entry = self.listed()
        del entry["created"]
        return {
            **entry,
            "connection_config": dict(self.connection_config),
            "webhook_url_override": self.webhook_url_override,
            "created_at": _iso(self.created, offset=True),
            "updated_at": _iso(self.updated, offset=True),
            "last_fetched_at": _iso(self.last_fetched_at, offset=True)
            if self.last_fetched_at
            else None,
            "credentials": dict(self.credentials),
        }

    @property
    def searched_texts(self) -> list[str]:
        """What ``search`` looks in: the connection ID, the end user's display name and email."""
        end_user = self.end_user or {}
        texts = (self.connection_id, end_user.get("display_name"), end_user.get("email"))
        return [text for text in texts if isinstance(text, str)]

    @property
    def organization_id(self) -> str | None:
        organization = (self.end_user or {}).get("organization") or {}
        found = organization.get("id")
        return found if isinstance(found, str) else None


def _error(status: int, code: str, message: str | None = None, **extra: Any) -> JSONResponse:
    error: dict[str, Any] = {"code": code, **extra}
    if message is not None:
        error["message"] = message
    return JSONResponse({"error": error}, status_code=status)


def _invalid(code: str, issues: list[dict[str, Any]]) -> JSONResponse:
    return _error(400, code, errors=issues)


def _tags_from_end_user(end_user: Mapping[str, Any]) -> dict[str, str]:
    """``buildTagsFromEndUser`` (``packages/shared/lib/services/endUser.service.ts``), in short."""
    tags = {
        tag: end_user[key]
        for key, tag in (
            ("id", "end_user_id"),
            ("email", "end_user_email"),
            ("display_name", "end_user_display_name"),
        )
        if isinstance(end_user.get(key), str) and end_user[key]
    }
    return {**tags, **{k.lower(): v for k, v in (end_user.get("tags") or {}).items() if v}}


def _api_end_user(end_user: Mapping[str, Any]) -> dict[str, Any]:
    """A connect session's ``end_user`` as the API answers it (``formatters/endUser.ts``)."""
    return {
        "id": end_user["id"],
        "display_name": end_user.get("display_name") or None,
        "email": end_user.get("email"),
        "tags": end_user.get("tags") or None,
        "organization": None,
    }


class FakeNango:
    def __init__(
        self, *, secret_key: str = DEFAULT_SECRET, integrations: Iterable[str] | None = None
    ) -> None:
        self.secret_key = secret_key
        self.integrations = None if integrations is None else set(integrations)
        self.connections: list[FakeConnection] = []
        self.sessions: dict[str, dict[str, Any]] = {}
        self.requests: list[RecordedRequest] = []
        self.failures: list[Failure] = []
        self.limiter = RateLimiter()
        # Called after a GET /connections page is built and before it is answered: lets a test
        # change the world (the database, Nango's connections) in the middle of a listing.
        self.on_list_page: Callable[[int], Awaitable[None] | None] | None = None
        self._next_id = 1
        self._clock = datetime(2026, 1, 1, tzinfo=UTC)
        endpoint = self._endpoint
        self.app = Starlette(
            routes=[
                Route("/connect/sessions", endpoint(self._connect_session), methods=["POST"]),
                Route(
                    "/connect/sessions/reconnect",
                    endpoint(self._reconnect_session),
                    methods=["POST"],
                ),
                Route("/connections", endpoint(self._list), methods=["GET"]),
                Route("/connections/metadata", endpoint(self._metadata), methods=["POST", "PATCH"]),
                Route("/connections/{connection_id:path}", endpoint(self._get), methods=["GET"]),
                Route(
                    "/connections/{connection_id:path}", endpoint(self._patch), methods=["PATCH"]
                ),
                Route(
                    "/connections/{connection_id:path}", endpoint(self._delete), methods=["DELETE"]
                ),
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
        errors: Iterable[ErrorType | ActiveLog] = (),
        metadata: dict[str, Any] | None = None,
        connection_config: dict[str, Any] | None = None,
    ) -> FakeConnection:
        self._clock += timedelta(seconds=1)
        connection = FakeConnection(
            id=self._next_id,
            connection_id=connection_id or secrets.token_hex(16),
            provider_config_key=integration_id,
            provider=provider or integration_id,
            created=self._clock,
            updated=self._clock,
            tags=dict(tags or {}),
            end_user=end_user,
            errors=[ActiveLog.of(error) for error in errors],
            metadata=metadata,
            connection_config=dict(connection_config or {}),
        )
        self._next_id += 1
        self.connections.append(connection)
        if self.integrations is not None:
            self.integrations.add(integration_id)
        return connection

    def find(self, connection_id: str, integration_id: str | None = None) -> FakeConnection | None:
        for connection in self.connections:
            if connection.connection_id == connection_id and integration_id in (
                None,
                connection.provider_config_key,
            ):
                return connection
        return None

    def has_integration(self, integration_id: str) -> bool:
        return self.integrations is None or integration_id in self.integrations

    def complete_session(self, token: str, *, integration_id: str = "github") -> FakeConnection:
        """What a user finishing the Connect UI causes: a connection carrying the session's tags."""
        session = self.sessions[token]
        end_user = session.get("end_user")
        return self.add_connection(
            integration_id=integration_id,
            tags=session.get("tags") or {},
            end_user=_api_end_user(end_user) if isinstance(end_user, Mapping) else None,
        )

    def fail_next(self, count: int = 1, *, status: int = 500, code: str = "server_error") -> None:
        self.failures.extend(Failure(status=status, code=code) for _ in range(count))

    def stall_next(self, count: int = 1, *, seconds: float = 5.0) -> None:
        self.failures.extend(Failure(status=200, delay=seconds) for _ in range(count))

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path == path]

    # The gate every request passes -------------------------------------------------------------

    def _endpoint(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Record, authenticate, rate-limit, inject failures, then answer (with the limit's
        headers, as Nango sends them on every answer past authentication)."""

        async def endpoint(request: Request) -> Response:
            body = await self._record(request)
            if request.headers.get("authorization") != f"Bearer {self.secret_key}":
                return _error(401, "unknown_account", "No account found")
            verdict = self.limiter.take()
            if verdict.refused:
                response: Response = _error(
                    429, "too_many_request", method=request.method, path=request.url.path
                )
            else:
                response = await self._injected(request) or await handler(request, body)
            response.headers.update(verdict.headers)
            return response

        return endpoint

    async def _record(self, request: Request) -> Any:
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
        return body

    async def _injected(self, request: Request) -> Response | None:
        if not self.failures:
            return None
        failure = self.failures.pop(0)
        if failure.delay:
            await anyio.sleep(failure.delay)
        if failure.status < 400:
            return None
        return _error(failure.status, failure.code, f"injected {failure.status}")

    # Connect sessions (controllers/connect/postSessions.ts, postReconnect.ts) -------------------

    def _query_refused(self, request: Request) -> Response | None:
        """``requireEmptyQuery``: these routes take no query parameters."""
        if not request.query_params:
            return None
        issues = rules.Issues()
        issues.add([], f"Unrecognized key(s) in object: {sorted(request.query_params)}")
        return _invalid("invalid_query_params", issues)

    def _missing_integrations(self, body: Mapping[str, Any]) -> rules.Issues:
        issues = rules.Issues()
        for index, integration in enumerate(body.get("allowed_integrations") or []):
            if not self.has_integration(integration):
                issues.add(["allowed_integrations", index], "Integration does not exist")
        for key in ("integrations_config_defaults", "overrides"):
            for integration in body.get(key) or {}:
                if not self.has_integration(integration):
                    issues.add([key, integration], "Integration does not exist")
        return issues

    def _new_session(self, body: dict[str, Any]) -> JSONResponse:
        token = "nango_connect_session_" + secrets.token_hex(32)
        self.sessions[token] = body
        expires = datetime.now(UTC) + timedelta(minutes=30)
        return JSONResponse(
            {
                "data": {
                    "token": token,
                    "connect_link": f"https://connect.nango.dev?session_token={token}",
                    "expires_at": _iso(expires),
                }
            },
            status_code=201,
        )

    async def _connect_session(self, request: Request, body: Any) -> Response:
        if refused := self._query_refused(request):
            return refused
        checked, issues = rules.session_body(body, reconnect=False)
        issues = issues or self._missing_integrations(checked)
        if issues:
            return _invalid("invalid_body", issues)
        return self._new_session(checked)

    async def _reconnect_session(self, request: Request, body: Any) -> Response:
        if refused := self._query_refused(request):
            return refused
        checked, issues = rules.session_body(body, reconnect=True)
        if issues:
            return _invalid("invalid_body", issues)
        if self.find(checked["connection_id"], checked["integration_id"]) is None:
            return _error(400, "invalid_body", "ConnectionID or IntegrationId does not exists")
        return self._new_session(checked)

    # The listing (controllers/connection/getConnections.ts, connection.service.ts) -------------

    async def _list(self, request: Request, body: Any) -> Response:
        query = {key: request.query_params.getlist(key) for key in request.query_params}
        wanted, issues = rules.list_query(query)
        if issues:
            return _invalid("invalid_query_params", issues)
        limit, page = wanted["limit"], wanted["page"]
        chunk = [c.listed() for c in self._matching(wanted)[page * limit : (page + 1) * limit]]
        if self.on_list_page is not None:
            outcome = self.on_list_page(page)
            if outcome is not None:
                await outcome
        return JSONResponse({"connections": chunk})

    def _matching(self, wanted: Mapping[str, Any]) -> list[FakeConnection]:
        matches = sorted(self.connections, key=lambda c: (c.created, c.id), reverse=True)
        if "connectionId" in wanted:
            matches = [c for c in matches if c.connection_id == wanted["connectionId"]]
        if "integrationId" in wanted:
            integrations = {item.strip() for item in wanted["integrationId"].split(",")}
            matches = [c for c in matches if c.provider_config_key in integrations]
        matches = [c for c in matches if wanted["tags"].items() <= c.tags.items()]
        if "endUserId" in wanted:
            matches = [c for c in matches if (c.end_user or {}).get("id") == wanted["endUserId"]]
        if "endUserOrganizationId" in wanted:
            matches = [c for c in matches if c.organization_id == wanted["endUserOrganizationId"]]
        if "search" in wanted:
            pattern = rules.like(wanted["search"])
            matches = [c for c in matches if any(map(pattern.fullmatch, c.searched_texts))]
        return matches

    # One connection (controllers/connection/connectionId/*.ts) ----------------------------------

    def _provider_config_key(
        self, request: Request, allowed: frozenset[str]
    ) -> tuple[str, Response | None]:
        """The ``provider_config_key`` of a strict query, or Nango's ``invalid_query_params``."""
        issues = rules.Issues()
        rules.unknown_keys(request.query_params, allowed, [], issues)
        key = rules.integration_id(
            request.query_params.get("provider_config_key"), ["provider_config_key"], issues
        )
        if issues or key is None:
            return "", _invalid("invalid_query_params", issues)
        return key, None

    def _addressed(
        self, request: Request, key: str, *, check_integration: bool = True
    ) -> tuple[FakeConnection | None, Response | None]:
        """The connection ``/connections/{id}`` names in integration ``key``, or Nango's refusal
        of the ID (``invalid_uri_params``) or of the integration (``unknown_provider_config``)."""
        issues = rules.Issues()
        connection_id = rules.connection_id(
            request.path_params["connection_id"], ["connectionId"], issues
        )
        if connection_id is None:
            return None, _invalid("invalid_uri_params", issues)
        if check_integration and not self.has_integration(key):
            return None, _error(400, "unknown_provider_config", "Provider does not exists")
        return self.find(connection_id, key), None

    async def _get(self, request: Request, body: Any) -> Response:
        key, refused = self._provider_config_key(request, rules.GET_CONNECTION_KEYS)
        connection, refused = (None, refused) if refused else self._addressed(request, key)
        if refused:
            return refused
        if connection is None:
            return _error(404, "not_found", "Failed to find connection")
        # Fetching with credentials may refresh them at Nango (docs/nango.md, Correction 8).
        connection.last_fetched_at = datetime.now(UTC)
        return JSONResponse(connection.full())

    async def _patch(self, request: Request, body: Any) -> Response:
        """``handlePatchConnection``: ``tags`` (and the tags an ``end_user`` makes) replace the
        connection's tags; an empty ``webhook_url_override`` clears it."""
        key, refused = self._provider_config_key(request, frozenset({"provider_config_key"}))
        if refused:
            return refused
        if issues := rules.patch_connection_body(body):
            return _invalid("invalid_body", issues)
        connection, refused = self._addressed(request, key)
        if refused:
            return refused
        if connection is None:
            return _error(404, "not_found", "Failed to find connection")
        if "end_user" in body:
            connection.end_user = _api_end_user(body["end_user"])
        if "end_user" in body or "tags" in body:
            made = _tags_from_end_user(body.get("end_user") or {})
            merged = {**made, **(body.get("tags") or {})}
            connection.tags = {key.lower(): value for key, value in merged.items()}
        if "webhook_url_override" in body:
            connection.webhook_url_override = body["webhook_url_override"] or None
        connection.updated = datetime.now(UTC)
        return JSONResponse({"success": True})

    async def _delete(self, request: Request, body: Any) -> Response:
        # deleteConnection.ts: an unknown integration is just an unknown connection here.
        key, refused = self._provider_config_key(request, frozenset({"provider_config_key"}))
        if refused:
            return refused
        connection, refused = self._addressed(request, key, check_integration=False)
        if refused:
            return refused
        if connection is None:
            return _error(400, "unknown_connection")
        self.connections.remove(connection)
        return JSONResponse({"success": True})

    # Metadata (controllers/connection/connectionId/metadata/postMetadata.ts, patchMetadata.ts) --

    async def _metadata(self, request: Request, body: Any) -> Response:
        """POST replaces the metadata of every named connection, PATCH merges into it (at the
        top level); one unknown connection refuses the whole request. Both echo the body."""
        if refused := self._query_refused(request):
            return refused
        ids, issues = rules.metadata_body(body)
        if issues:
            return _invalid("invalid_body", issues)
        key = body["provider_config_key"]
        found = []
        for connection_id in ids:
            connection = self.find(connection_id, key)
            if connection is None:
                message = (
                    f"Connection with connection id {connection_id} and provider config key"
                    f" {key} not found. Please make sure the connection exists in the Nango"
                    " dashboard"
                )
                if len(ids) > 1:
                    message += ". No actions were taken on any of the connections as a result"
                    message += " of this failure."
                return _error(404, "unknown_connection", message)
            found.append(connection)
        replace = request.method == "POST"
        for connection in found:
            base = {} if replace else connection.metadata or {}
            connection.metadata = {**base, **body["metadata"]}
            connection.updated = datetime.now(UTC)
        return JSONResponse(body, status_code=201 if replace else 200)
