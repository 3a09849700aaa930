"""Errors, and the one JSON shape they take: ``{"error": {"code": "...", "message": "..."}}``.

Every code this service answers is in ``ERROR_CODES`` below, with its status and meaning; the
code that raises an error names one of them, and ``tests/test_errors.py`` checks that the
README's table of error codes says the same. A new code is added there first.

Hierarchy::

    ApiError                    any error this service answers on purpose
    ├── BadRequest              400  invalid input (names the parameter)
    ├── Unauthorized            401  missing or wrong credentials / signature
    ├── Forbidden               403  a read-only key asked for a write
    ├── NotFound                404
    ├── Conflict                409  e.g. an ambiguous legacy connection ID
    ├── RequestTimeout          408  the body did not arrive within REQUEST_BODY_TIMEOUT_SECONDS
    ├── PayloadTooLarge         413
    ├── UpstreamError           502  Nango answered with an error (Nango's code is kept)
    └── ServiceUnavailable      503  the database or a required setting is missing

A database that is unreachable or out of pooled connections is answered 503 with
``Retry-After`` by every route (and counted), whatever the route: a retry can succeed. So is a
statement cut off at ``DATABASE_STATEMENT_TIMEOUT_SECONDS`` (``query_timeout``, counted apart).
A value the database refuses (a NUL in text, a statement too large for SQLite) is the request's
fault: 400, and the log names the error's type, never the SQL or its parameters.

Anything else is a bug: it is logged with its traceback and answered with a plain 500 that
carries no detail.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from app.db.database import DatabaseTimeout, QueryTimeout, QueryTooComplex
from app.db.readiness import describe_error, underlying_error
from app.logs import get_logger
from app.metrics import DATABASE_ERRORS, QUERY_TIMEOUTS, route_template
from app.responses import JSONResponse

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One ``error.code`` this service answers, with its HTTP status and what it means."""

    code: str
    status: int
    meaning: str

    def for_nango(self, nango_code: str) -> ErrorCode:
        """``nango_<Nango's code>``: the family of Nango's refusals, with Nango's own code."""
        return replace(self, code=f"nango_{nango_code}")


ERROR_CODES: dict[str, ErrorCode] = {}


def _code(code: str, status: int, meaning: str) -> ErrorCode:
    assert code not in ERROR_CODES, code
    ERROR_CODES[code] = entry = ErrorCode(code, status, meaning)
    return entry


BAD_REQUEST = _code("bad_request", 400, "the request is malformed (the message says how)")
INVALID_PARAMETER = _code(
    "invalid_parameter", 400, "a query parameter is unknown or invalid; `details.parameter`"
)
INVALID_CURSOR = _code(
    "invalid_cursor", 400, "a cursor that was tampered with, is from elsewhere or other filters"
)
INVALID_JSON = _code("invalid_json", 400, "the request body is not a JSON object")
INVALID_BODY = _code(
    "invalid_body",
    400,
    "the body's fields are invalid (`details.errors`), or a signed webhook is not UTF-8 JSON",
)
DUPLICATE_HEADER = _code(
    "duplicate_header", 400, "`Authorization` or a signature header is given more than once"
)
INVALID_VALUE = _code("invalid_value", 400, "a value the database cannot hold, such as a NUL")
QUERY_TOO_COMPLEX = _code("query_too_complex", 400, "the request asks the database for too much")
TOO_MANY_TAGS = _code(
    "too_many_tags", 400, "a change would leave a connection more tags than Nango takes (10)"
)
UNAUTHORIZED = _code("unauthorized", 401, "no API key, or a wrong or revoked one")
INVALID_SIGNATURE = _code(
    "invalid_signature",
    401,
    "a webhook without a valid signature, or signed for another environment",
)
FORBIDDEN = _code("forbidden", 403, "a read-only API key asked for a change")
CSRF_MISSING = _code("csrf_missing", 403, "a console form without its CSRF token (reload the page)")
CSRF_INVALID = _code(
    "csrf_invalid", 403, "a console form whose CSRF token is tampered with, expired or another's"
)
CONSOLE_READ_ONLY = _code(
    "console_read_only", 403, "the console is read-only (`CONSOLE_READ_ONLY`)"
)
NOT_FOUND = _code(
    "not_found", 404, "no such route (or it is off: metrics disabled, legacy flow not configured)"
)
CONNECTION_NOT_FOUND = _code("connection_not_found", 404, "no such connection here")
SUBSCRIPTION_NOT_FOUND = _code("subscription_not_found", 404, "no such subscription")
DELIVERY_NOT_FOUND = _code("delivery_not_found", 404, "no such stored delivery")
KEY_NOT_FOUND = _code("key_not_found", 404, "no stored API key of that name")
CONNECT_SESSION_NOT_FOUND = _code(
    "connect_session_not_found", 404, "no Connect session with this ID was opened here"
)
UNKNOWN_AT_NANGO = _code(
    "unknown_at_nango", 404, "Nango no longer has the connection (reconcile to catch up)"
)
METHOD_NOT_ALLOWED = _code("method_not_allowed", 405, "the route exists, not with this method")
AMBIGUOUS_CONNECTION_ID = _code(
    "ambiguous_connection_id",
    409,
    "a legacy connection ID names several connections: add `integration_id` (and `environment`)",
)
DELETED = _code("deleted", 409, "the connection is deleted: start a new Connect session")
UNATTRIBUTED = _code("unattributed", 409, "the connection has no owner to re-authorize it for")
RECONCILE_RUNNING = _code("reconcile_running", 409, "another reconciliation holds the lease")
KEY_EXISTS = _code("key_exists", 409, "an API key of that name exists (names are never reused)")
BODY_TIMEOUT = _code(
    "body_timeout", 408, "the body did not arrive within `REQUEST_BODY_TIMEOUT_SECONDS`"
)
PAYLOAD_TOO_LARGE = _code("payload_too_large", 413, "the body is over the size limit")
HEADERS_TOO_LARGE = _code(
    "headers_too_large", 431, "more than 100 headers, or more than 64 KB of them"
)
INTERNAL_ERROR = _code("internal_error", 500, "a bug: the service logs have the traceback")
NANGO_REFUSED = _code(
    "nango_<Nango's code>",
    502,
    "Nango refused the call, e.g. `nango_invalid_body`; `details.nango_status`, `nango_code`",
)
NANGO_UNAVAILABLE = _code(
    "nango_unavailable", 502, "Nango did not answer usefully after `NANGO_MAX_RETRIES` retries"
)
DATABASE_UNAVAILABLE_CODE = _code(
    "database_unavailable", 503, "the database did not answer; retry after `Retry-After`"
)
STORAGE_UNAVAILABLE = _code(
    "storage_unavailable", 503, "a webhook could not be stored; Nango retries it"
)
NOT_CONFIGURED = _code(
    "not_configured", 503, "no webhook signing key is set (`NANGO_WEBHOOK_SIGNING_KEYS`)"
)
NANGO_NOT_CONFIGURED = _code("nango_not_configured", 503, "`NANGO_SECRET_KEY` is not set")
SECRET_KEY_MISSING = _code(
    "secret_key_missing",
    503,
    "`SECRET_KEY` is not set: subscription secrets are derived from it and must survive restarts",
)
QUERY_TIMEOUT = _code(
    "query_timeout",
    503,
    "the database work ran past `DATABASE_STATEMENT_TIMEOUT_SECONDS`; retry after `Retry-After`",
)
WEBHOOK_BODY_TIMEOUT = _code(
    "webhook_body_timeout",
    503,
    "a webhook body did not arrive within `REQUEST_BODY_TIMEOUT_SECONDS`; Nango retries it",
)


class ApiError(Exception):
    """An error answered on purpose; ``code`` (from ``ERROR_CODES``) sets its status too."""

    default: ErrorCode | None = None

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        error = code or self.default
        if error is None:
            raise TypeError(f"{type(self).__name__} needs a code from app.errors.ERROR_CODES")
        self.message = message
        self.code = error.code
        self.status_code = error.status
        self.headers = headers or {}
        self.details = details


class BadRequest(ApiError):
    default = BAD_REQUEST


class Unauthorized(ApiError):
    default = UNAUTHORIZED


class Forbidden(ApiError):
    default = FORBIDDEN


class NotFound(ApiError):
    default = NOT_FOUND


class Conflict(ApiError):
    pass


class RequestTimeout(ApiError):
    default = BODY_TIMEOUT


class PayloadTooLarge(ApiError):
    default = PAYLOAD_TOO_LARGE


class UpstreamError(ApiError):
    pass


class ServiceUnavailable(ApiError):
    pass


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def error_response(
    status_code: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, details), status_code=status_code, headers=headers
    )


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(
        exc.status_code, exc.code, exc.message, headers=exc.headers, details=exc.details
    )


_HTTP_CODES = {
    entry.status: entry
    for entry in (
        BAD_REQUEST,
        UNAUTHORIZED,
        FORBIDDEN,
        NOT_FOUND,
        METHOD_NOT_ALLOWED,
        PAYLOAD_TOO_LARGE,
    )
}


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (routing: 404, 405), in this service's shape and codes."""
    assert isinstance(exc, HTTPException)
    fallback = BAD_REQUEST if exc.status_code < 500 else INTERNAL_ERROR
    code = _HTTP_CODES.get(exc.status_code, fallback).code
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, code, str(exc.detail), headers=headers)


# Failures of the database itself (worth a retry), as opposed to a bug or a constraint
# violation: the server is unreachable or went away (psycopg's OperationalError, its pool's
# PoolTimeout included), the connection is unusable, SQLite's file is locked or unreadable,
# or no connection was free in time.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    sqlite3.OperationalError,
    DatabaseTimeout,
)
# Anything the drivers raise, for the webhook receiver, which answers 503 to all of it.
DRIVER_ERRORS: tuple[type[Exception], ...] = (
    psycopg.Error,
    sqlite3.Error,
    DatabaseTimeout,
    QueryTooComplex,
)


def is_database_unavailable(error: BaseException) -> bool:
    """The database itself failed (worth a retry), as opposed to this request's data or a bug."""
    return isinstance(error, DATABASE_UNAVAILABLE)


RETRY_AFTER_SECONDS = "5"


async def handle_database_unavailable(request: Request, exc: Exception) -> Response:
    operation = route_template(request.scope)
    DATABASE_ERRORS.labels(operation=operation).inc()
    state = getattr(request.app.state, "registry", None)
    cause = exc if state is None else underlying_error(state.database, exc)
    log.warning(
        "database_unavailable",
        operation=operation,
        error_type=type(exc).__name__,
        cause=describe_error(cause),
    )
    return error_response(
        DATABASE_UNAVAILABLE_CODE.status,
        DATABASE_UNAVAILABLE_CODE.code,
        "the database is unavailable; retry later",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


async def handle_query_timeout(request: Request, exc: Exception) -> Response:
    route = route_template(request.scope)
    QUERY_TIMEOUTS.labels(route=route).inc()
    log.warning("query_timeout", route=route, error_type=type(exc).__name__)
    return error_response(
        QUERY_TIMEOUT.status,
        QUERY_TIMEOUT.code,
        "the database work for this request took too long; retry later or narrow the query",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


async def handle_refused_value(request: Request, exc: Exception) -> Response:
    # The driver's message may quote the value; the type is enough to find the cause.
    log.warning("value_refused", route=route_template(request.scope), error_type=type(exc).__name__)
    if isinstance(exc, QueryTooComplex | psycopg.errors.ProgramLimitExceeded):
        entry, message = QUERY_TOO_COMPLEX, "the request asks for too much at once"
    else:
        entry, message = INVALID_VALUE, "a value in the request cannot be stored or searched for"
    return error_response(entry.status, entry.code, message)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled_error", path=request.url.path)
    return error_response(
        INTERNAL_ERROR.status, INTERNAL_ERROR.code, "internal error; see the service logs"
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ApiError: handle_api_error,
    HTTPException: handle_http_exception,
    **dict.fromkeys(DATABASE_UNAVAILABLE, handle_database_unavailable),
    # More precise than the classes above, which they derive from (handlers go by the MRO).
    QueryTimeout: handle_query_timeout,
    psycopg.errors.QueryCanceled: handle_query_timeout,
    QueryTooComplex: handle_refused_value,
    psycopg.errors.ProgramLimitExceeded: handle_refused_value,
    psycopg.DataError: handle_refused_value,
    Exception: handle_unexpected,
}
