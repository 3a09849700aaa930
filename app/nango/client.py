"""The Nango API client: Connect sessions, the connections listing, deletes.

One ``NangoClient`` wraps the ``httpx2.AsyncClient`` that ``lifespan`` owns (the CLI builds its own
with ``open_nango_client``). Every call sends ``Authorization: Bearer <NANGO_SECRET_KEY>`` to
``NANGO_HOST``, runs under a deadline of ``NANGO_TIMEOUT_SECONDS`` per attempt, and is retried
with exponential backoff and full jitter (``NANGO_MAX_RETRIES`` times) after a network error, a
timeout or a 5xx answer. A 4xx is never retried: Nango has decided, asking again changes nothing.

Exceptions::

    NangoError                  anything that stopped a call to Nango
    ├── NangoNotConfigured      NANGO_SECRET_KEY is not set (the service answers 503)
    ├── NangoUnavailable        network error, timeout, 5xx or an unreadable answer, after retries
    └── NangoRejected           Nango answered 4xx; ``status`` and Nango's error ``code`` are kept
                                (``unknown_connection``, ``invalid_body``, ...)

The secret key is sent in a header and nowhere else: it is not part of any message, log line or
``repr`` here, and httpx2 errors are reduced to their type before they are logged or raised.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import anyio
import httpx2
from pydantic import SecretStr

from app.logs import get_logger
from app.settings import Settings

log = get_logger(__name__)

# Nango's documented maximum page size for GET /connections.
MAX_PAGE_SIZE = 2000


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


def _error_code(status: int, body: object) -> tuple[str, str]:
    """Nango's error code and message from a 4xx body, in its current or its older shape."""
    code, message = f"http_{status}", ""
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            code = str(error.get("code") or code)
            message = str(error.get("message") or "")
        elif isinstance(error, str):
            # Older releases answer {"error": "<message>", "type": "<code>"}.
            code = str(body.get("type") or code)
            message = error
    return code[:64], message[:300]


def timeout_for(seconds: float) -> httpx2.Timeout:
    return httpx2.Timeout(seconds, connect=min(seconds, 5.0))


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
    ) -> None:
        self._http = http
        self._host = host.rstrip("/")
        self._secret_key = secret_key
        self._timeout_seconds = timeout_seconds
        self._max_retries = max_retries
        self._backoff_seconds = backoff_seconds
        self._backoff_max_seconds = backoff_max_seconds
        self._random = random.SystemRandom()

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

    async def list_connections(
        self,
        *,
        page: int = 0,
        limit: int = 1000,
        search: str | None = None,
        integration_ids: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """One page of GET /connections, newest first (Nango pages by offset, not by cursor)."""
        params: dict[str, str | int] = {"limit": max(1, min(limit, MAX_PAGE_SIZE)), "page": page}
        if search:
            params["search"] = search
        if integration_ids:
            params["integrationId"] = ",".join(integration_ids)
        answer = await self._request("GET", "/connections", params=params)
        connections = answer.get("connections") if isinstance(answer, Mapping) else None
        if not isinstance(connections, list):
            raise NangoUnavailable("Nango's connection listing had no 'connections' list")
        return [item for item in connections if isinstance(item, dict)]

    async def get_connection(
        self, connection_id: str, provider_config_key: str
    ) -> dict[str, Any] | None:
        """One connection without its ``credentials`` (never kept), or None if Nango has none."""
        try:
            answer = await self._request(
                "GET",
                f"/connections/{_segment(connection_id)}",
                params={"provider_config_key": provider_config_key},
            )
        except NangoRejected as error:
            if error.code == "unknown_connection" or error.status == 404:
                return None
            raise
        if not isinstance(answer, dict):
            raise NangoUnavailable("Nango's connection answer was not a JSON object")
        answer.pop("credentials", None)
        return answer

    async def delete_connection(self, connection_id: str, provider_config_key: str) -> None:
        """Delete at Nango; an unknown one raises NangoRejected(code="unknown_connection")."""
        await self._request(
            "DELETE",
            f"/connections/{_segment(connection_id)}",
            params={"provider_config_key": provider_config_key},
        )

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
        assert self._secret_key is not None
        headers = {"Authorization": f"Bearer {self._secret_key.get_secret_value()}"}
        url = self._host + path
        attempts = self._max_retries + 1
        for attempt in range(attempts):
            problem: str
            try:
                # httpx2 times each phase separately; a slow trickle of bytes can outlast all of
                # them, so every attempt also has one overall deadline.
                with anyio.fail_after(self._timeout_seconds):
                    response = await self._http.request(
                        method, url, params=params, json=body, headers=headers
                    )
                    content = await response.aread()
            except (httpx2.TransportError, TimeoutError) as error:
                # The error's type is enough; its text or request could carry more than we want.
                problem = type(error).__name__
            else:
                if response.status_code < 400:
                    return _parse_json(response, content)
                if response.status_code < 500:
                    answer = _try_json(content)
                    code, message = _error_code(response.status_code, answer)
                    log.info(
                        "nango_rejected",
                        method=method,
                        path=path,
                        status=response.status_code,
                        code=code,
                        nango_message=message,
                    )
                    raise NangoRejected(
                        f"Nango refused {method} {path} ({response.status_code} {code})"
                        + (f": {message}" if message else ""),
                        status=response.status_code,
                        code=code,
                        nango_message=message,
                    )
                problem = f"HTTP {response.status_code}"
            log.warning(
                "nango_call_failed",
                method=method,
                path=path,
                problem=problem,
                attempt=attempt + 1,
                attempts=attempts,
            )
            if attempt + 1 < attempts:
                cap = min(self._backoff_max_seconds, self._backoff_seconds * 2**attempt)
                await anyio.sleep(self._random.uniform(0, cap))
        raise NangoUnavailable(
            f"Nango did not answer {method} {path} after {attempts} attempt(s): {problem}"
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
