"""The console's actions (``POST``): each calls the service function the API or the command line
uses, so a change made here is the same change, with the same history and errors."""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from app.api.connections import delete_connection, details_errors, live, reconnect_session
from app.api.keys import (
    KEY_NAME_RULE,
    create_api_key,
    list_api_keys,
    revoke_api_key,
    valid_key_name,
)
from app.api.reconciliation import reconcile_now
from app.api.shapes import ConnectionUpdateRequest
from app.connections import details, queries
from app.connections.model import ATTRIBUTION_FIELDS, Connection
from app.console.rendering import render
from app.console.web import Form, action, see_other
from app.errors import (
    CONNECTION_NOT_FOUND,
    DELIVERY_NOT_FOUND,
    INVALID_BODY,
    KEY_EXISTS,
    KEY_NOT_FOUND,
    BadRequest,
    Conflict,
    NotFound,
)
from app.logs import get_logger
from app.state import AppState, app_state
from app.webhooks.replay import replay_deliveries, replay_one

log = get_logger(__name__)


async def _connection(state: AppState, pk: int) -> Connection:
    async with state.database.reader() as tx:
        found = await queries.connection_by_pk(tx, pk=pk)
    if found is None:
        raise NotFound(f"no connection #{pk}", code=CONNECTION_NOT_FOUND)
    return found


@action
async def reconnect(request: Request, form: Form) -> Response:
    state = app_state(request)
    connection = await _connection(state, request.path_params["pk"])
    session = await reconnect_session(state, connection)
    log.info("console_reconnect_session", integration_id=connection.integration_id)
    return render(
        request,
        "reconnect.html",
        {"title": "Reconnect link", "connection": connection, "session": session},
    )


@action
async def delete(request: Request, form: Form) -> Response:
    state = app_state(request)
    connection = await _connection(state, request.path_params["pk"])
    await delete_connection(state, connection)
    return see_other(request, "console:connection", pk=connection.id, notice="deleted")


@action
async def refresh(request: Request, form: Form) -> Response:
    state = app_state(request)
    connection = await _connection(state, request.path_params["pk"])
    with details_errors():
        await details.refresh_connection(
            database=state.database, nango=state.nango, connection=connection, source="console"
        )
    return see_other(request, "console:connection", pk=connection.id, notice="refreshed")


def _owner(form: Form) -> dict[str, str]:
    """The owner fields of the form, checked as ``PATCH /v1/connections/{id}`` checks them."""
    given = {name: form.get(name, "").strip() for name in ATTRIBUTION_FIELDS}
    try:
        checked = ConnectionUpdateRequest.model_validate(
            {name: value for name, value in given.items() if value}
        )
    except ValidationError as error:
        problem = error.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(part) for part in problem["loc"]) or "owner"
        message = problem["msg"].removeprefix("Value error, ")
        raise BadRequest(f"{field}: {message}", code=INVALID_BODY) from None
    owner = checked.owner()
    if not (owner.get("end_user_id") or owner.get("organization_id")):
        raise BadRequest("an owner is an end user ID or an organization ID", code=INVALID_BODY)
    return owner


@action
async def set_owner(request: Request, form: Form) -> Response:
    state = app_state(request)
    connection = live(await _connection(state, request.path_params["pk"]))
    update = details.ConnectionUpdate(owner=_owner(form))
    with details_errors():
        await details.update_connection(
            database=state.database,
            nango=state.nango,
            connection=connection,
            update=update,
            source="console",
        )
    log.info("console_owner_set", integration_id=connection.integration_id)
    return see_other(request, "console:connection", pk=connection.id, notice="owner_set")


@action
async def replay(request: Request, form: Form) -> Response:
    state = app_state(request)
    delivery_id: int = request.path_params["delivery_id"]
    result = await replay_one(
        state.database,
        delivery_id=delivery_id,
        default_environment=state.settings.nango_environment,
    )
    if result.outcome == "missing":
        raise NotFound(f"no delivery #{delivery_id}", code=DELIVERY_NOT_FOUND)
    log.info("console_replayed", delivery_id=delivery_id, outcome=result.outcome)
    return see_other(request, "console:delivery", delivery_id=delivery_id, notice="replayed")


@action
async def replay_failed(request: Request, form: Form) -> Response:
    state = app_state(request)
    counts = await replay_deliveries(
        state.database, default_environment=state.settings.nango_environment
    )
    log.info("console_replayed_failed", **counts)
    return render(request, "replayed.html", {"title": "Replay all failed", "counts": counts})


@action
async def reconcile(request: Request, form: Form) -> Response:
    await reconcile_now(app_state(request), trigger="console")
    return see_other(request, "console:reconcile", notice="reconciled")


@action
async def create_key(request: Request, form: Form) -> Response:
    state = app_state(request)
    name = form.get("name", "").strip()
    if not valid_key_name(name):
        raise BadRequest(f"name: {KEY_NAME_RULE}", code=INVALID_BODY)
    read_only = form.get("read_only") == "on"
    key = await create_api_key(state.database, name=name, read_only=read_only)
    if key is None:
        raise Conflict(f"a key named {name!r} exists (names are never reused)", code=KEY_EXISTS)
    log.info("api_key_created", name=name, read_only=read_only, source="console")
    keys = await list_api_keys(state.database)
    # The key is shown on this answer only (no-store): it is not kept anywhere to show again.
    return render(
        request,
        "api_keys.html",
        {"title": "API keys", "keys": keys, "created": {"name": name, "key": key}},
        status_code=201,
    )


@action
async def revoke_key(request: Request, form: Form) -> Response:
    name: str = request.path_params["name"]
    outcome = await revoke_api_key(app_state(request).database, name=name)
    if outcome == "unknown":
        raise NotFound(f"no key named {name!r}", code=KEY_NOT_FOUND)
    log.info("api_key_revoked", name=name, source="console")
    return see_other(request, "console:api_keys", notice="revoked")
