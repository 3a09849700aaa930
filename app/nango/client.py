"""The Nango API client: Connect sessions, connections, their metadata and tags, deletes.

One ``NangoClient`` wraps the ``httpx2.AsyncClient`` that ``lifespan`` owns (the CLI builds its own
with ``open_nango_client``). Every call sends ``Authorization: Bearer <NANGO_SECRET_KEY>`` to
``NANGO_HOST`` and runs under a deadline of ``NANGO_TIMEOUT_SECONDS`` per attempt. Retries are
tenacity's:

- a network error, a timeout or a 5xx answer is retried ``NANGO_MAX_RETRIES`` times, with
  exponential backoff and full jitter;
- a 429 (Nango's rate limit, docs/nango.md, Correction 5) is retried after waiting as
  ``Retry-After`` says (plus a margin, since Nango rounds it down; at most
  ``rate_limit_max_wait_seconds``), for as long as the call stays within
  ``rate_limit_deadline_seconds`` in all; ``patient()`` gives background work a longer deadline;
- any other 4xx is final: Nango has decided, asking again changes nothing.

Every answer's ``X-RateLimit-*`` headers are kept (``rate_limit``), so background work can pace
itself before Nango refuses it.

Exceptions::

    NangoError                  anything that stopped a call to Nango
    ├── NangoNotConfigured      NANGO_SECRET_KEY is not set (the service answers 503)
    ├── NangoUnavailable        network error, timeout, 5xx or an unreadable answer, after retries
    └── NangoRejected           Nango answered 4xx; ``status`` and Nango's error ``code`` are kept
        └── NangoRateLimited    still 429 when the deadline came; ``retry_after`` in seconds

Secrets: the secret key is sent in a header and nowhere else: it is not part of any message, log
line or ``repr`` here, and httpx2 errors are reduced to their type before they are logged or
raised. A connection's ``credentials`` are dropped on receipt (``NangoConnection`` has no place
for them), and so is every ``connection_config`` key that names a secret.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn
from urllib.parse import quote

import anyio
import httpx2
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_random_exponential

from app.logs import get_logger
from app.settings import Settings

log = get_logger(__name__)

# Nango's documented maximum page size for GET /connections.
MAX_PAGE_SIZE = 2000
# connection_config keys whose name contains one of these are never kept.
SECRET_KEY_NAME = re.compile(r"secret|token|password|private|credential", re.IGNORECASE)


class NangoError(Exception):
    """A call to Nango did not succeed. ``message`` never contains a secret."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NangoNotConfigured(NangoError):
    pass


class NangoUnavailable(NangoError):
    pass


class NangoRejected(NangoError):
    def __init__(self, message: str, *, status: int, code: str, nango_message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.nango_message = nango_message


class NangoRateLimited(NangoRejected):
    """Nango answered 429 and the call could not wait any longer."""

    def __init__(self, message: str, *, code: str, retry_after: float | None) -> None:
        super().__init__(message, status=429, code=code)
        self.retry_after = retry_after


class _Transient(Exception):
    """One attempt failed in a way worth retrying: the problem, in words fit for a log."""


@dataclass(frozen=True)
class RateLimit:
    """Nango's rate limit as the last answer told it (``X-RateLimit-*``)."""

    limit: int
    remaining: int
    resets_at: float  # time.monotonic() by which the window has reset


@dataclass
class _Quota:
    """Shared by a client and its ``patient()`` copies: they draw on one account's limit."""

    last: RateLimit | None = None


@dataclass(frozen=True)
class NangoConnection:
    """One connection as ``GET /connections/{id}`` answers it, without its credentials."""

    connection_id: str
    provider_config_key: str
    provider: str | None
    connection_config: dict[str, Any]
    metadata: dict[str, Any] | None
    tags: dict[str, str]
    end_user: dict[str, Any] | None
    errors: list[dict[str, Any]] = field(default_factory=list)
    created_at: str | None = None
    updated_at: str | None = None
    last_fetched_at: str | None = None

    @classmethod
    def from_answer(cls, answer: Mapping[str, Any]) -> NangoConnection:
        """Only the fields named here are read: ``credentials`` is never even copied."""

        def mapping(key: str) -> dict[str, Any] | None:
            value = answer.get(key)
            return dict(value) if isinstance(value, Mapping) else None

        def text(key: str) -> str | None:
            value = answer.get(key)
            return value if isinstance(value, str) else None

        errors = answer.get("errors")
        return cls(
            connection_id=str(answer.get("connection_id") or ""),
            provider_config_key=str(answer.get("provider_config_key") or ""),
            provider=text("provider"),
            connection_config=without_secrets(mapping("connection_config") or {}),
            metadata=mapping("metadata"),
            tags={str(k): str(v) for k, v in (mapping("tags") or {}).items()},
            end_user=mapping("end_user"),
            errors=[dict(e) for e in errors if isinstance(e, Mapping)]
            if isinstance(errors, list)
            else [],
            created_at=text("created_at"),
            updated_at=text("updated_at"),
            last_fetched_at=text("last_fetched_at"),
        )


def without_secrets(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without the keys (at any depth) whose names say they hold a secret."""
    kept: dict[str, Any] = {}
    for key, value in config.items():
        if SECRET_KEY_NAME.search(str(key)):
            continue
        kept[key] = without_secrets(value) if isinstance(value, Mapping) else value
    return kept


def merged_tags(current: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    """``current`` with ``changes`` applied (``None`` removes a tag), keys lowercased as Nango
    stores them, so that ``Plan`` in ``changes`` replaces ``plan`` in ``current``."""
    tags = {key.lower(): value for key, value in current.items()}
    for key, value in changes.items():
        if value is None:
            tags.pop(key.lower(), None)
        else:
            tags[key.lower()] = value
    return tags


def _error_code(status: int, body: object) -> tuple[str, str]:
    """Nango's error code and message from a 4xx body, in its current or its older shape."""
    code, message = f"http_{status}", ""
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            code = str(error.get("code") or code)
            message = str(error.get("message") or _first_issue(error.get("errors")))
        elif isinstance(error, str):
            # Older releases answer {"error": "<message>", "type": "<code>"}.
            code = str(body.get("type") or code)
            message = error
    return code[:64], message[:300]


def _first_issue(errors: object) -> str:
    """The first problem of a validation refusal (``errors: [{code, message, path}]``)."""
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], Mapping):
        return ""
    issue = errors[0]
    path = ".".join(str(part) for part in issue.get("path") or [])
    return f"{path}: {issue.get('message')}" if path else str(issue.get("message"))


def timeout_for(seconds: float) -> httpx2.Timeout:
    return httpx2.Timeout(seconds, connect=min(seconds, 5.0))


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: Nango sends seconds, anything else is not worth parsing


class NangoClient:
    def __init__(
        self,
        *,
        http: httpx2.AsyncClient,
        host: str,
        secret_key: SecretStr | None,
        timeout_seconds: float = 10.0,
        max_retries: int = 2,
        backoff_seconds: float = 0.25,
        backoff_max_seconds: float = 4.0,
        rate_limit_deadline_seconds: float = 20.0,
        rate_limit_max_wait_seconds: float = 60.0,
        rate_limit_margin_seconds: float = 1.0,
    ) -> None:
        self._http = http
        self._host = host.rstrip("/")
        self._secret_key = secret_key
        self._timeout_seconds = timeout_seconds
        self._max_retries = max_retries
        self._backoff = wait_random_exponential(multiplier=backoff_seconds, max=backoff_max_seconds)
        self._rate_limit_deadline = rate_limit_deadline_seconds
        self._rate_limit_max_wait = rate_limit_max_wait_seconds
        self._rate_limit_margin = rate_limit_margin_seconds
        self._quota = _Quota()

    @classmethod
    def from_settings(
        cls, settings: Settings, http: httpx2.AsyncClient, **options: Any
    ) -> NangoClient:
        return cls(
            http=http,
            host=settings.nango_host,
            secret_key=settings.nango_secret_key,
            timeout_seconds=settings.nango_timeout_seconds,
            max_retries=settings.nango_max_retries,
            **options,
        )

    def __repr__(self) -> str:
        configured = "configured" if self.configured else "not configured"
        return f"NangoClient(host={self._host!r}, secret_key={configured})"

    @property
    def configured(self) -> bool:
        return self._secret_key is not None and bool(self._secret_key.get_secret_value())

    @property
    def rate_limit(self) -> RateLimit | None:
        """What the last answer said of Nango's rate limit; None until one said anything."""
        return self._quota.last

    def patient(self, deadline_seconds: float) -> NangoClient:
        """This client (same connection pool, same rate limit) with calls that may wait up to
        ``deadline_seconds`` in all for Nango's rate limit: for work nobody is waiting on."""
        clone = copy.copy(self)
        clone._rate_limit_deadline = deadline_seconds
        return clone

    # Connect sessions ----------------------------------------------------------------------

    async def create_connect_session(self, body: Mapping[str, Any]) -> dict[str, Any]:
        answer = await self._request("POST", "/connect/sessions", body=body)
        return _session_data(answer)

    async def create_reconnect_session(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """A reconnect session; a connection (or integration) Nango does not have raises
        NangoRejected(code="unknown_connection"), the code Nango's other routes use for it."""
        try:
            answer = await self._request("POST", "/connect/sessions/reconnect", body=body)
        except NangoRejected as error:
            # controllers/connect/postReconnect.ts answers 400 invalid_body "ConnectionID or
            # IntegrationId does not exists"; a body Nango's schema refuses has no message.
            if error.code == "invalid_body" and "not exist" in error.nango_message.lower():
                raise NangoRejected(
                    error.message,
                    status=error.status,
                    code="unknown_connection",
                    nango_message=error.nango_message,
                ) from None
            raise
        return _session_data(answer)

    # Connections ---------------------------------------------------------------------------

    async def list_connections(
        self,
        *,
        page: int = 0,
        limit: int = 1000,
        connection_id: str | None = None,
        integration_ids: Sequence[str] = (),
        search: str | None = None,
    ) -> list[dict[str, Any]]:
        """One page of GET /connections, newest first (Nango pages by offset, not by cursor).

        ``connection_id`` is an exact filter. ``search`` is not: Nango matches it with ``ILIKE``
        over connection IDs, end users' names and emails, with ``_`` and ``%`` as wildcards.
        """
        params: dict[str, str | int] = {"limit": max(1, min(limit, MAX_PAGE_SIZE)), "page": page}
        if connection_id is not None:
            params["connectionId"] = connection_id
        if integration_ids:
            params["integrationId"] = ",".join(integration_ids)
        if search:
            params["search"] = search
        answer = await self._request("GET", "/connections", params=params)
        connections = answer.get("connections") if isinstance(answer, Mapping) else None
        if not isinstance(connections, list):
            raise NangoUnavailable("Nango's connection listing had no 'connections' list")
        return [item for item in connections if isinstance(item, dict)]

    async def get_connection(
        self, connection_id: str, provider_config_key: str
    ) -> NangoConnection | None:
        """One connection with its config and metadata, or None if Nango has no such
        connection (404 ``not_found``) or no such integration (400 ``unknown_provider_config``).

        Its ``credentials`` are dropped on receipt. Nango may refresh expired credentials as a
        side effect of this call: prefer the listing when config and metadata are not needed.
        """
        try:
            answer = await self._request(
                "GET",
                f"/connections/{_segment(connection_id)}",
                params={"provider_config_key": provider_config_key},
            )
        except NangoRejected as error:
            if error.code in ("not_found", "unknown_connection", "unknown_provider_config"):
                return None
            raise
        if not isinstance(answer, Mapping):
            raise NangoUnavailable("Nango's connection answer was not a JSON object")
        return NangoConnection.from_answer(answer)

    async def update_metadata(
        self,
        connection_ids: str | Sequence[str],
        provider_config_key: str,
        metadata: Mapping[str, Any],
        *,
        mode: Literal["replace", "merge"],
    ) -> None:
        """POST (replace) or PATCH (merge, top-level keys) ``/connections/metadata``.

        Several IDs are all changed or none; an unknown one raises NangoRejected(404,
        ``unknown_connection``).
        """
        await self._request(
            "POST" if mode == "replace" else "PATCH",
            "/connections/metadata",
            body={
                "connection_id": connection_ids
                if isinstance(connection_ids, str)
                else list(connection_ids),
                "provider_config_key": provider_config_key,
                "metadata": dict(metadata),
            },
        )

    async def update_connection_tags(
        self,
        connection_id: str,
        provider_config_key: str,
        *,
        current: Mapping[str, str],
        changes: Mapping[str, str | None],
    ) -> dict[str, str]:
        """Apply ``changes`` to the connection's ``current`` tags at Nango; return the tags sent.

        ``PATCH /connections/{id}`` replaces a connection's tags, so the whole merged set is
        sent (``merged_tags``). Unknown connection: NangoRejected(404, ``not_found``); unknown
        integration: NangoRejected(400, ``unknown_provider_config``).
        """
        tags = merged_tags(current, changes)
        await self._request(
            "PATCH",
            f"/connections/{_segment(connection_id)}",
            params={"provider_config_key": provider_config_key},
            body={"tags": tags},
        )
        return tags

    async def delete_connection(self, connection_id: str, provider_config_key: str) -> None:
        """Delete at Nango; an unknown one raises NangoRejected(code="unknown_connection")."""
        await self._request(
            "DELETE",
            f"/connections/{_segment(connection_id)}",
            params={"provider_config_key": provider_config_key},
        )

    # One call, retried -----------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        if not self.configured:
            raise NangoNotConfigured("NANGO_SECRET_KEY is not set: this service cannot call Nango")
        call = _Call(self, method, path)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((_Transient, NangoRateLimited)),
            wait=call.wait,
            stop=call.stop,
            retry_error_callback=call.give_up,
            sleep=anyio.sleep,
        )
        return await retrying(call.attempt, params, body)

    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | int] | None,
        body: Mapping[str, Any] | None,
    ) -> tuple[httpx2.Response, bytes]:
        assert self._secret_key is not None
        headers = {"Authorization": f"Bearer {self._secret_key.get_secret_value()}"}
        try:
            # httpx2 times each phase separately; a slow trickle of bytes can outlast all of
            # them, so every attempt also has one overall deadline.
            with anyio.fail_after(self._timeout_seconds):
                response = await self._http.request(
                    method, self._host + path, params=params, json=body, headers=headers
                )
                content = await response.aread()
        except (httpx2.TransportError, TimeoutError) as error:
            # The error's type is enough; its text or request could carry more than we want.
            raise _Transient(type(error).__name__) from None
        self._remember_rate_limit(response.headers)
        return response, content

    def _remember_rate_limit(self, headers: httpx2.Headers) -> None:
        try:
            limit = int(headers["x-ratelimit-limit"])
            remaining = int(headers["x-ratelimit-remaining"])
            reset = float(headers["x-ratelimit-reset"])  # Unix seconds, rounded down
        except (KeyError, ValueError):
            return
        until = min(max(0.0, reset - time.time()), self._rate_limit_max_wait)
        resets_at = time.monotonic() + until + self._rate_limit_margin
        self._quota.last = RateLimit(limit=limit, remaining=remaining, resets_at=resets_at)

    def _rate_limit_wait(self, error: NangoRateLimited) -> float | None:
        """How long a 429 asks to wait (with the margin for Nango's rounding), if it says."""
        if error.retry_after is None:
            return None
        return min(error.retry_after + self._rate_limit_margin, self._rate_limit_max_wait)


@dataclass
class _Call:
    """One call to Nango and its retries: what tenacity asks (wait, stop, give up) is here."""

    client: NangoClient
    method: str
    path: str
    failures: int = 0  # network errors, timeouts and 5xx answers so far

    async def attempt(
        self, params: Mapping[str, str | int] | None, body: Mapping[str, Any] | None
    ) -> Any:
        try:
            response, content = await self.client._send(self.method, self.path, params, body)
            status = response.status_code
            if status >= 500:
                raise _Transient(f"HTTP {status}")
        except _Transient as problem:
            self.failures += 1
            log.warning(
                "nango_call_failed",
                method=self.method,
                path=self.path,
                problem=str(problem),
                attempt=self.failures,
                attempts=self.client._max_retries + 1,
            )
            raise
        if status < 400:
            return _parse_json(response, content)
        raise self._rejection(response, content)

    def _rejection(self, response: httpx2.Response, content: bytes) -> NangoRejected:
        status = response.status_code
        code, message = _error_code(status, _try_json(content))
        text = f"Nango refused {self.method} {self.path} ({status} {code})"
        if status == 429:
            retry_after = _seconds(response.headers.get("retry-after"))
            log.info("nango_rate_limited", method=self.method, path=self.path, wait=retry_after)
            return NangoRateLimited(text, code=code, retry_after=retry_after)
        log.info("nango_rejected", method=self.method, path=self.path, status=status, code=code)
        return NangoRejected(
            text + (f": {message}" if message else ""),
            status=status,
            code=code,
            nango_message=message,
        )

    def wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, NangoRateLimited):
            wait = self.client._rate_limit_wait(error)
            if wait is not None:
                return wait
        return self.client._backoff(state)

    def stop(self, state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, NangoRateLimited):
            elapsed = state.seconds_since_start or 0.0
            return elapsed + state.upcoming_sleep > self.client._rate_limit_deadline
        return self.failures > self.client._max_retries

    def give_up(self, state: RetryCallState) -> NoReturn:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, NangoRateLimited):
            raise error
        raise NangoUnavailable(
            f"Nango did not answer {self.method} {self.path} after {self.failures} attempt(s):"
            f" {error}"
        )


def _segment(value: str) -> str:
    # Legacy connection IDs were chosen by customers and may contain "/" or "?".
    return quote(value, safe="")


def _try_json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


def _parse_json(response: httpx2.Response, content: bytes) -> Any:
    if not content:
        return {}
    body = _try_json(content)
    if body is None:
        raise NangoUnavailable(
            f"Nango answered {response.status_code} with a body that is not JSON"
        )
    return body


def _session_data(answer: Any) -> dict[str, Any]:
    data = answer.get("data") if isinstance(answer, Mapping) else None
    if not isinstance(data, Mapping) or not all(
        isinstance(data.get(key), str) for key in ("token", "connect_link", "expires_at")
    ):
        raise NangoUnavailable(
            "Nango's Connect session answer lacked token/connect_link/expires_at"
        )
    return {key: data[key] for key in ("token", "connect_link", "expires_at")}


@asynccontextmanager
async def open_nango_client(
    settings: Settings, *, transport: httpx2.AsyncBaseTransport | None = None
) -> AsyncIterator[NangoClient]:
    """A client with its own HTTP connection pool, for commands that run outside the app."""
    async with httpx2.AsyncClient(
        timeout=timeout_for(settings.nango_timeout_seconds), transport=transport
    ) as http:
        yield NangoClient.from_settings(settings, http)
