"""Errors, and the one JSON shape they take: ``{"error": {"code": "...", "message": "..."}}``.

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
from typing import Any

import psycopg
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from app.db.database import DatabaseTimeout, QueryTimeout, QueryTooComplex
from app.logs import get_logger
from app.metrics import DATABASE_ERRORS, QUERY_TIMEOUTS, route_template
from app.responses import JSONResponse

log = get_logger(__name__)


class ApiError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers or {}
        self.details = details


class BadRequest(ApiError):
    status_code = 400
    code = "bad_request"


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class RequestTimeout(ApiError):
    status_code = 408
    code = "body_timeout"


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "payload_too_large"


class UpstreamError(ApiError):
    status_code = 502
    code = "nango_error"


class ServiceUnavailable(ApiError):
    status_code = 503
    code = "service_unavailable"


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
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
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
    log.warning("database_unavailable", operation=operation, error_type=type(exc).__name__)
    return error_response(
        503,
        "database_unavailable",
        "the database is unavailable; retry later",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


async def handle_query_timeout(request: Request, exc: Exception) -> Response:
    route = route_template(request.scope)
    QUERY_TIMEOUTS.labels(route=route).inc()
    log.warning("query_timeout", route=route, error_type=type(exc).__name__)
    return error_response(
        503,
        "query_timeout",
        "the database work for this request took too long; retry later or narrow the query",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


async def handle_refused_value(request: Request, exc: Exception) -> Response:
    # The driver's message may quote the value; the type is enough to find the cause.
    log.warning("value_refused", route=route_template(request.scope), error_type=type(exc).__name__)
    if isinstance(exc, QueryTooComplex | psycopg.errors.ProgramLimitExceeded):
        return error_response(400, "query_too_complex", "the request asks for too much at once")
    return error_response(
        400, "invalid_value", "a value in the request cannot be stored or searched for"
    )


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled_error", path=request.url.path)
    return error_response(500, "internal_error", "internal error; see the service logs")


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
