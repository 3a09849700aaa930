"""The connections search form: its fields, read into the lookup API's own filters.

The form's values are checked by the API's query model (``ConnectionListQuery``) and tag rules,
so the console finds exactly what ``GET /v1/connections`` would; a blank field is no filter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.datastructures import QueryParams

from app.api import cursors
from app.api.inputs import bad_parameter, parse_query, parse_tags
from app.api.shapes import ConnectionListQuery
from app.connections import queries
from app.connections.model import ConnectionStatus
from app.connections.queries import ConnectionFilters
from app.settings import Settings

PAGE_SIZE = 50
CURSOR_ROUTE = "console-connections"
TEXT_FIELDS = ("end_user_id", "organization_id", "integration_id", "environment")
# The status menu: "" is the API's default (deleted ones left out).
STATUS_CHOICES = {
    "": None,
    "active": "active",
    "auth_error": "auth_error",
    "deleted": "deleted",
    "any": ",".join(status.value for status in ConnectionStatus),
}


@dataclass
class Search:
    """What the form holds (to show it again) and what it asks for."""

    values: dict[str, str] = field(default_factory=dict)
    filters: ConnectionFilters = field(default_factory=lambda: ConnectionFilters())
    connection_id: str | None = None
    after_id: int | None = None

    @property
    def asked(self) -> bool:
        return any(value for name, value in self.values.items() if name != "cursor")


def _api_params(values: dict[str, str]) -> QueryParams:
    params = [(name, values[name]) for name in TEXT_FIELDS if values.get(name)]
    status = values.get("status", "")
    if status not in STATUS_CHOICES:
        raise bad_parameter("status", "choose a status from the list")
    if STATUS_CHOICES[status]:
        params.append(("status", STATUS_CHOICES[status] or ""))
    if values.get("unattributed"):
        params.append(("attributed", "false"))
    tag = values.get("tag", "").strip()
    if tag:
        key, sep, value = tag.partition("=")
        if not sep:
            raise bad_parameter("tag", "write a tag as KEY=VALUE")
        params.append((f"tag[{key.strip()}]", value.strip()))
    return QueryParams(params)


def read_search(settings: Settings, params: QueryParams) -> Search:
    """The form's fields; 400 (shown on the page) for a value the API would refuse."""
    names = (*TEXT_FIELDS, "status", "tag", "connection_id", "unattributed", "cursor")
    values = {name: params.get(name, "").strip() for name in names}
    api_params = _api_params(values)
    query = parse_query(ConnectionListQuery, api_params, tags=True)
    statuses = queries.LISTED_BY_DEFAULT if query.status is None else query.status
    filters = ConnectionFilters(
        end_user_id=query.end_user_id,
        organization_id=query.organization_id,
        integration_id=query.integration_id,
        environment=query.environment,
        statuses=[str(status) for status in ConnectionStatus if status in statuses],
        tags=parse_tags(api_params),
        attributed=query.attributed,
    )
    connection_id = values["connection_id"] or None
    if connection_id is not None and "\x00" in connection_id:
        raise bad_parameter("connection_id", "must not contain NUL")
    after_id = cursors.decode_cursor(
        settings, route=CURSOR_ROUTE, cursor=values["cursor"] or None, scope=dict(filters)
    )
    return Search(values=values, filters=filters, connection_id=connection_id, after_id=after_id)


def next_page_params(settings: Settings, search: Search, next_after_id: int | None) -> str | None:
    """The query string of the next page, or None on the last one."""
    cursor = cursors.encode_cursor(
        settings, route=CURSOR_ROUTE, after_id=next_after_id, scope=dict(search.filters)
    )
    if cursor is None:
        return None
    kept = {name: value for name, value in search.values.items() if value and name != "cursor"}
    return str(QueryParams({**kept, "cursor": cursor}))
