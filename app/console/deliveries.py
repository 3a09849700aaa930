"""The console's delivery pages: the inbox, filtered, and one delivery as it was received.

Reads go through ``app.webhooks.deliveries`` (the same listing as ``nango-registry deliveries``);
the next-page cursor is signed and bound to the filters, like the API's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from app.api import cursors
from app.api.inputs import bad_parameter
from app.console.pages import notice
from app.console.rendering import render
from app.console.web import page
from app.errors import DELIVERY_NOT_FOUND, NotFound
from app.settings import Settings
from app.state import app_state
from app.webhooks.deliveries import DeliveryFilter, get_delivery, list_deliveries
from app.webhooks.model import DeliveryOutcome

PAGE_SIZE = 50
CURSOR_ROUTE = "console-deliveries"
FIELDS = ("outcome", "type", "connection", "from", "to", "cursor")
MAX_TEXT = 255


@dataclass(frozen=True)
class DeliverySearch:
    values: dict[str, str]
    filters: DeliveryFilter
    after: int | None


def _moment(name: str, value: str) -> datetime | None:
    """A ``datetime-local`` field (``2026-01-02T03:04``), read as UTC."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise bad_parameter(name, "write a time as YYYY-MM-DDTHH:MM (UTC)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _text(name: str, value: str) -> str | None:
    if len(value) > MAX_TEXT or "\x00" in value:
        raise bad_parameter(name, f"at most {MAX_TEXT} characters, without NUL")
    return value or None


def read_delivery_search(settings: Settings, params: QueryParams) -> DeliverySearch:
    values = {name: params.get(name, "").strip() for name in FIELDS}
    outcome = values["outcome"]
    if outcome and outcome not in {item.value for item in DeliveryOutcome}:
        raise bad_parameter("outcome", "choose an outcome from the list")
    filters = DeliveryFilter(
        outcome=outcome or None,
        webhook_type=_text("type", values["type"]),
        connection_id=_text("connection", values["connection"]),
        received_from=_moment("from", values["from"]),
        received_before=_moment("to", values["to"]),
    )
    after = cursors.decode_cursor(
        settings, route=CURSOR_ROUTE, cursor=values["cursor"] or None, scope=_scope(filters)
    )
    return DeliverySearch(values=values, filters=filters, after=after)


def _scope(filters: DeliveryFilter) -> dict[str, str]:
    return {name: str(value) for name, value in filters.params().items()}


@page
async def deliveries(request: Request) -> Response:
    state = app_state(request)
    search = read_delivery_search(state.settings, request.query_params)
    found = await list_deliveries(
        state.database, filters=search.filters, limit=PAGE_SIZE, after=search.after
    )
    cursor = cursors.encode_cursor(
        state.settings,
        route=CURSOR_ROUTE,
        after_id=found.next_cursor,
        scope=_scope(search.filters),
    )
    next_params = None
    if cursor is not None:
        kept = {k: v for k, v in search.values.items() if v and k != "cursor"}
        next_params = str(QueryParams({**kept, "cursor": cursor}))
    return render(
        request,
        "deliveries.html",
        {
            "title": "Deliveries",
            "form": search.values,
            "outcomes": [item.value for item in DeliveryOutcome],
            "rows": found.deliveries,
            "next_params": next_params,
        },
    )


@page
async def delivery(request: Request) -> Response:
    state = app_state(request)
    delivery_id: int = request.path_params["delivery_id"]
    found = await get_delivery(state.database, delivery_id=delivery_id)
    if found is None:
        raise NotFound(f"no delivery #{delivery_id}", code=DELIVERY_NOT_FOUND)
    return render(
        request,
        "delivery.html",
        {"title": f"Delivery #{delivery_id}", "delivery": found, "notice": notice(request)},
    )
