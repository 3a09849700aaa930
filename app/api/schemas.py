"""API shapes, apart from the tables: JSON for connections and events, and query parsing.

Every query parameter is checked here; a bad value is a 400 that names the parameter (also in
``details.parameter``). Unknown parameters are refused too: a misspelt filter such as
``end_user=`` must not quietly widen a lookup to every connection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import QueryParams

from app.connections.model import Connection, ConnectionStatus
from app.connections.queries import LISTED_BY_DEFAULT, ConnectionFilters, HistoryEntry
from app.errors import BadRequest

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_VALUE_LENGTH = 255
STATUSES = tuple(status.value for status in ConnectionStatus)

# Nango's rule for tag keys (POST /connect/sessions); Nango stores them lowercased.
TAG_KEY = re.compile(r"^[a-zA-Z][a-zA-Z0-9_\-./]{0,63}$")
_TAG_PARAMETER = re.compile(r"^tag\[(?P<key>[^\[\]]*)\]$")
_DIGITS = re.compile(r"^[0-9]{1,6}$")


def connection_to_json(connection: Connection) -> dict[str, Any]:
    """The API's connection object (datetimes stay datetimes: app.responses writes them)."""
    error = None
    if connection.status == ConnectionStatus.AUTH_ERROR or connection.error_type is not None:
        error = {
            "type": connection.error_type,
            "description": connection.error_description,
            "since": connection.error_since,
        }
    last_sync = None
    if connection.last_sync_name is not None or connection.last_sync_at is not None:
        last_sync = {
            "name": connection.last_sync_name,
            "model": connection.last_sync_model,
            "success": connection.last_sync_success,
            "at": connection.last_sync_at,
            "error": connection.last_sync_error,
        }
    return {
        "connection_id": connection.connection_id,
        "integration_id": connection.integration_id,
        "provider": connection.provider,
        "environment": connection.environment,
        "auth_mode": connection.auth_mode,
        "end_user": {
            "id": connection.end_user_id,
            "email": connection.end_user_email,
            "display_name": connection.end_user_display_name,
        },
        "organization": {
            "id": connection.organization_id,
            "display_name": connection.organization_display_name,
        },
        "tags": dict(connection.tags or {}),
        "status": connection.status,
        "error": error,
        "last_sync": last_sync,
        "created_at": connection.created_at,
        "updated_at": connection.updated_at,
        "deleted_at": connection.deleted_at,
    }


def event_to_json(event: HistoryEntry) -> dict[str, Any]:
    delivery = event.delivery
    return {
        "id": event.id,
        "source": event.source,
        "action": event.action,
        "success": event.success,
        "from_status": event.from_status,
        "to_status": event.to_status,
        "detail": dict(event.detail or {}),
        "delivery": None
        if delivery is None
        else {
            "id": delivery.id,
            "received_at": delivery.received_at,
            "webhook_type": delivery.webhook_type,
            "operation": delivery.operation,
            "success": delivery.success,
            "outcome": delivery.outcome,
        },
        "created_at": event.created_at,
    }


# Query parameters


def bad_parameter(parameter: str, message: str) -> BadRequest:
    return BadRequest(
        f"query parameter {parameter!r}: {message}",
        code="invalid_parameter",
        details={"parameter": parameter},
    )


def reject_unknown_parameters(
    params: QueryParams, allowed: Iterable[str], *, tags: bool = False
) -> None:
    known = set(allowed)
    for name in params:
        if name in known or (tags and name.startswith("tag")):
            continue
        raise bad_parameter(name, "unknown parameter")


def _single(params: QueryParams, name: str) -> str | None:
    values = params.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise bad_parameter(name, "given more than once")
    return values[0]


def _text(params: QueryParams, name: str) -> str | None:
    value = _single(params, name)
    if value is None:
        return None
    if not value:
        raise bad_parameter(name, "must not be empty")
    if "\x00" in value:
        raise bad_parameter(name, "must not contain NUL characters")
    if len(value) > MAX_VALUE_LENGTH:
        raise bad_parameter(name, f"at most {MAX_VALUE_LENGTH} characters")
    return value


def _limit(params: QueryParams) -> int:
    raw = _single(params, "limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not _DIGITS.match(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise bad_parameter("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _cursor(params: QueryParams) -> str | None:
    value = _single(params, "cursor")
    if value is not None and not value:
        raise bad_parameter("cursor", "must not be empty")
    return value


def _statuses(params: QueryParams) -> tuple[str, ...]:
    values = params.getlist("status")
    if not values:
        return LISTED_BY_DEFAULT
    chosen: set[str] = set()
    for value in values:
        for part in value.split(","):
            if part not in STATUSES:
                raise bad_parameter("status", f"each value must be one of {', '.join(STATUSES)}")
            chosen.add(part)
    return tuple(status for status in STATUSES if status in chosen)


def _attributed(params: QueryParams) -> bool | None:
    value = _single(params, "attributed")
    if value is None:
        return None
    if value not in {"true", "false"}:
        raise bad_parameter("attributed", "must be true or false")
    return value == "true"


def _tags(params: QueryParams) -> dict[str, str]:
    tags: dict[str, str] = {}
    for name, value in params.multi_items():
        if name.startswith("tag"):
            match = _TAG_PARAMETER.match(name)
            if match is None:
                raise bad_parameter(name, "tag filters are written tag[KEY]=VALUE")
            key = match["key"]
            if not TAG_KEY.match(key):
                raise bad_parameter(
                    name, "tag key must start with a letter, then letters, digits or _-./ (max 64)"
                )
            if not value or len(value) > MAX_VALUE_LENGTH or "\x00" in value:
                raise bad_parameter(
                    name, f"tag value must be 1 to {MAX_VALUE_LENGTH} characters, without NUL"
                )
            key = key.lower()
            if key in tags:
                raise bad_parameter(name, "given more than once")
            tags[key] = value
    return tags


@dataclass(frozen=True, slots=True)
class ConnectionQuery:
    """``GET /v1/connections``: filters are ANDed; several ``tag[...]`` must all match."""

    end_user_id: str | None
    organization_id: str | None
    integration_id: str | None
    environment: str | None
    statuses: tuple[str, ...]
    tags: dict[str, str]
    attributed: bool | None
    limit: int
    cursor: str | None

    def scope(self) -> ConnectionFilters:
        """The filters, which are also what a cursor is bound to (not the page size)."""
        return {
            "end_user_id": self.end_user_id,
            "organization_id": self.organization_id,
            "integration_id": self.integration_id,
            "environment": self.environment,
            "statuses": list(self.statuses),
            "tags": self.tags,
            "attributed": self.attributed,
        }


def parse_connection_query(params: QueryParams) -> ConnectionQuery:
    reject_unknown_parameters(
        params,
        (
            "end_user_id",
            "organization_id",
            "integration_id",
            "environment",
            "status",
            "attributed",
            "limit",
            "cursor",
        ),
        tags=True,
    )
    return ConnectionQuery(
        end_user_id=_text(params, "end_user_id"),
        organization_id=_text(params, "organization_id"),
        integration_id=_text(params, "integration_id"),
        environment=_text(params, "environment"),
        statuses=_statuses(params),
        tags=_tags(params),
        attributed=_attributed(params),
        limit=_limit(params),
        cursor=_cursor(params),
    )


@dataclass(frozen=True, slots=True)
class ConnectionSelector:
    """Which connection a path's ``connection_id`` means, when a legacy ID is ambiguous."""

    integration_id: str | None
    environment: str | None


def parse_selector(params: QueryParams, *, paginated: bool = False) -> ConnectionSelector:
    allowed = ["integration_id", "environment"]
    if paginated:
        allowed += ["limit", "cursor"]
    reject_unknown_parameters(params, allowed)
    return ConnectionSelector(
        integration_id=_text(params, "integration_id"),
        environment=_text(params, "environment"),
    )


@dataclass(frozen=True, slots=True)
class Page:
    limit: int
    cursor: str | None


def parse_page(params: QueryParams) -> Page:
    return Page(limit=_limit(params), cursor=_cursor(params))


def storable(path_value: str) -> bool:
    """Whether an ID from the path could be stored at all: Postgres text cannot hold NUL."""
    return "\x00" not in path_value


def parse_summary_query(params: QueryParams) -> str | None:
    """``GET /v1/end-users/{id}/summary`` takes only an optional ``environment``."""
    reject_unknown_parameters(params, ("environment",))
    return _text(params, "environment")
