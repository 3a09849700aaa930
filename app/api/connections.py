"""``/v1/connections`` and everything under ``/v1/connections/{connection_id}``.

Reads (listing, one connection, its history) take any API key; changes (delete, a reconnect
session, a refresh from Nango, metadata, owner and tags) a full-access one. Changes act through
Nango first, with the secret key of ``NANGO_ENVIRONMENT``, then here
(``app.connections.details``). Every route authenticates first, so a bad key is a 401 before any
400. Lookups are counted in ``nango_registry_lookups{route}``.

A connection ID containing ``/`` (a legacy ID) is sent as ``%2F`` in the path; a raw ``/``
always separates segments (``app.middleware.RawPathRouting``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from app.api import cursors
from app.api.inputs import parse_body, parse_query, parse_tags
from app.api.keys import require_api_key
from app.api.openapi import operation
from app.api.resource import Resource
from app.api.shapes import (
    ConnectionAnswer,
    ConnectionListQuery,
    ConnectionPage,
    ConnectionUpdateRequest,
    ConnectSession,
    HistoryPage,
    HistoryQuery,
    MetadataRequest,
    ReconnectRequest,
    Selector,
    WriteSelector,
    connection_json,
    history_json,
)
from app.api.upstream import nango_errors
from app.connections import details, queries, store
from app.connections.model import (
    ATTRIBUTION_FIELDS,
    MAX_TAGS,
    Connection,
    ConnectionStatus,
)
from app.connections.queries import ConnectionFilters
from app.db.database import Transaction
from app.errors import (
    DELETED,
    TOO_MANY_TAGS,
    UNATTRIBUTED,
    UNKNOWN_AT_NANGO,
    BadRequest,
    Conflict,
    NotFound,
)
from app.logs import get_logger
from app.metrics import LOOKUPS
from app.nango.client import NangoRejected
from app.responses import JSONResponse
from app.state import AppState, app_state

log = get_logger(__name__)

TAG_FILTER = {
    "name": "tag",
    "in": "query",
    "description": "tag[KEY]=VALUE, at most ten; several must all match; keys compare lowercased",
    "style": "deepObject",
    "explode": True,
    "schema": {
        "type": "object",
        "propertyNames": {"pattern": "^[a-z][a-z0-9_\\-./]{0,63}$"},
        "additionalProperties": {"type": "string", "minLength": 1, "maxLength": 255},
        "maxProperties": MAX_TAGS,
    },
}

_LISTED = LOOKUPS.labels(route="list_connections")
_FETCHED = LOOKUPS.labels(route="get_connection")
_HISTORY = LOOKUPS.labels(route="connection_events")


def _filters(query: ConnectionListQuery, tags: dict[str, str]) -> ConnectionFilters:
    """The filters, which are also what a cursor is bound to (not the page size)."""
    statuses = queries.LISTED_BY_DEFAULT if query.status is None else query.status
    return {
        "end_user_id": query.end_user_id,
        "organization_id": query.organization_id,
        "integration_id": query.integration_id,
        "environment": query.environment,
        "statuses": [str(status) for status in ConnectionStatus if status in statuses],
        "tags": tags,
        "attributed": query.attributed,
    }


class Connections(Resource):
    @operation(
        id="listConnections",
        summary="Connections, newest first; every filter given must match",
        answers={200: ConnectionPage},
        errors=(400, 503),
        query=ConnectionListQuery,
        parameters=(TAG_FILTER,),
    )
    async def get(self, request: Request) -> JSONResponse:
        _LISTED.inc()
        await require_api_key(request)
        query = parse_query(ConnectionListQuery, request.query_params, tags=True)
        filters = _filters(query, parse_tags(request.query_params))
        settings = app_state(request).settings
        after_id = cursors.decode_cursor(
            settings, route="connections", cursor=query.cursor, scope=filters
        )
        async with app_state(request).database.reader() as tx:
            page = await queries.find_connections(
                tx, limit=query.limit, after_id=after_id, **filters
            )
        next_cursor = cursors.encode_cursor(
            settings, route="connections", after_id=page.next_after_id, scope=filters
        )
        return JSONResponse(
            {"data": [connection_json(row) for row in page.items], "next_cursor": next_cursor}
        )


async def _addressed(tx: Transaction, request: Request, selector: Selector) -> Connection:
    """The connection the path (and ``integration_id`` / ``environment``) names."""
    return await queries.load_connection(
        tx,
        connection_id=request.path_params["connection_id"],
        integration_id=selector.integration_id,
        environment=selector.environment,
    )


class ConnectionItem(Resource):
    @operation(
        id="getConnection",
        summary="One connection, deleted ones included",
        answers={200: ConnectionAnswer},
        errors=(400, 404, 409, 503),
        query=Selector,
    )
    async def get(self, request: Request) -> JSONResponse:
        _FETCHED.inc()
        await require_api_key(request)
        selector = parse_query(Selector, request.query_params)
        async with app_state(request).database.reader() as tx:
            connection = await _addressed(tx, request, selector)
        return JSONResponse({"data": connection_json(connection)})

    @operation(
        id="deleteConnection",
        summary="Delete at Nango, then mark deleted here (idempotent)",
        answers={200: ConnectionAnswer},
        errors=(400, 403, 404, 409, 502, 503),
        query=WriteSelector,
    )
    async def delete(self, request: Request) -> JSONResponse:
        await require_api_key(request, write=True)
        selector = parse_query(WriteSelector, request.query_params)
        connection = await _addressed_here(request, selector.integration_id)
        deleted = await delete_connection(app_state(request), connection)
        return JSONResponse({"data": connection_json(deleted)})

    @operation(
        id="updateConnection",
        summary="Set the owner and tags, at Nango (the whole merged tag set) and here",
        answers={200: ConnectionAnswer},
        errors=(400, 403, 404, 409, 502, 503),
        query=WriteSelector,
        body=ConnectionUpdateRequest,
    )
    async def patch(self, request: Request) -> JSONResponse:
        await require_api_key(request, write=True)
        selector = parse_query(WriteSelector, request.query_params)
        payload = await parse_body(ConnectionUpdateRequest, request)
        connection = live(await _addressed_here(request, selector.integration_id))
        state = app_state(request)
        update = details.ConnectionUpdate(owner=payload.owner(), tags=payload.tags)
        with details_errors():
            updated = await details.update_connection(
                database=state.database, nango=state.nango, connection=connection, update=update
            )
        return JSONResponse({"data": connection_json(updated)})


async def _addressed_here(request: Request, integration_id: str | None) -> Connection:
    """The connection an action names, in the environment ``NANGO_SECRET_KEY`` belongs to."""
    state = app_state(request)
    async with state.database.reader() as tx:
        return await _addressed(
            tx,
            request,
            Selector(integration_id=integration_id, environment=state.settings.nango_environment),
        )


async def delete_connection(state: AppState, connection: Connection) -> Connection:
    """Delete at Nango, then mark deleted here (the API's DELETE and the console's action)."""
    with nango_errors():
        try:
            await state.nango.delete_connection(connection.connection_id, connection.integration_id)
        except NangoRejected as error:
            if error.code != "unknown_connection":
                raise
            # Nango no longer has it: deleted already, the outcome the caller asked for.
    deleted = await _mark_deleted(state, connection)
    log.info("connection_deleted", integration_id=deleted.integration_id)
    return deleted


async def _mark_deleted(state: AppState, connection: Connection) -> Connection:
    async with state.database.transaction() as tx:
        locked, created = await store.lock_connection(
            tx,
            store.new_connection_values(
                environment=connection.environment,
                integration_id=connection.integration_id,
                connection_id=connection.connection_id,
                status=ConnectionStatus.DELETED,
            ),
        )
        if created or locked.status != ConnectionStatus.DELETED:
            await store.change_status(
                tx, locked, ConnectionStatus.DELETED, source="api", action="deletion", success=True
            )
    return locked


class ConnectionHistory(Resource):
    @operation(
        id="listConnectionEvents",
        summary="A connection's history (deliveries and state changes), newest first",
        answers={200: HistoryPage},
        errors=(400, 404, 409, 503),
        query=HistoryQuery,
    )
    async def get(self, request: Request) -> JSONResponse:
        _HISTORY.inc()
        await require_api_key(request)
        query = parse_query(HistoryQuery, request.query_params)
        settings = app_state(request).settings
        async with app_state(request).database.reader() as tx:
            connection = await _addressed(tx, request, query)
            scope = {"connection": connection.id}
            after_id = cursors.decode_cursor(
                settings, route="events", cursor=query.cursor, scope=scope
            )
            page = await queries.find_history(
                tx, connection_pk=connection.id, limit=query.limit, after_id=after_id
            )
        next_cursor = cursors.encode_cursor(
            settings, route="events", after_id=page.next_after_id, scope=scope
        )
        return JSONResponse(
            {"data": [history_json(entry) for entry in page.items], "next_cursor": next_cursor}
        )


def reconnect_tags(connection: Connection) -> dict[str, str]:
    """The stored tags that Nango accepts, with the owner filled in: Nango may clear them."""
    tags = details.stored_tags_for_nango(connection)
    # Nango takes at most ten; the owner's keys are kept first.
    ordered = sorted(tags.items(), key=lambda item: item[0] not in ATTRIBUTION_FIELDS)
    return dict(ordered[:MAX_TAGS])


class ReconnectSession(Resource):
    @operation(
        id="createReconnectSession",
        summary="A reconnect session for a stored connection, its tags sent again",
        answers={201: ConnectSession},
        errors=(400, 403, 404, 409, 502, 503),
        query=WriteSelector,
        body=ReconnectRequest,
        body_required=False,
    )
    async def post(self, request: Request) -> JSONResponse:
        await require_api_key(request, write=True)
        selector = parse_query(WriteSelector, request.query_params)
        payload = await parse_body(ReconnectRequest, request, optional=True)
        if (
            selector.integration_id
            and payload.integration_id
            and selector.integration_id != payload.integration_id
        ):
            raise BadRequest("integration_id differs between the query and the body")
        connection = await _addressed_here(
            request, payload.integration_id or selector.integration_id
        )
        session = await reconnect_session(app_state(request), connection)
        return JSONResponse(session, status_code=201)


async def reconnect_session(state: AppState, connection: Connection) -> dict[str, Any]:
    """A reconnect session at Nango for a stored connection (the API's and the console's)."""
    tags = reconnect_tags(live(connection))
    if not tags:
        # The new session would carry no owner: better to say so than to re-authorize a
        # connection nobody here can attribute.
        raise Conflict(
            "the connection has no owner or tags to send again; import or reconcile it first",
            code=UNATTRIBUTED,
        )
    body = {
        "connection_id": connection.connection_id,
        "integration_id": connection.integration_id,
        "tags": tags,
    }
    with nango_errors():
        try:
            return await state.nango.create_reconnect_session(body)
        except NangoRejected as error:
            if error.code != "unknown_connection":
                raise
            raise _unknown_at_nango() from None


def _unknown_at_nango() -> NotFound:
    """A connection stored here but gone at Nango (a deletion whose webhook was lost): not a
    gateway failure, and not something a retry fixes."""
    return NotFound(
        "Nango no longer has this connection; `reconcile` marks it deleted", code=UNKNOWN_AT_NANGO
    )


def live(connection: Connection) -> Connection:
    """The connection, unless it is deleted (a 409): for the actions that need it live."""
    if connection.status == ConnectionStatus.DELETED:
        raise Conflict("the connection is deleted: start a new Connect session", code=DELETED)
    return connection


@contextmanager
def details_errors() -> Iterator[None]:
    """The service's refusals (app.connections.details) and Nango's, as this API's errors."""
    with nango_errors():
        try:
            yield
        except details.UnknownAtNango:
            raise _unknown_at_nango() from None
        except details.TagsRefused as error:
            raise BadRequest(str(error), code=TOO_MANY_TAGS) from None


class ConnectionRefresh(Resource):
    @operation(
        id="refreshConnection",
        summary="Re-read status, owner and tags, configuration and metadata from Nango",
        answers={200: ConnectionAnswer},
        errors=(400, 403, 404, 409, 502, 503),
        query=WriteSelector,
    )
    async def post(self, request: Request) -> JSONResponse:
        await require_api_key(request, write=True)
        selector = parse_query(WriteSelector, request.query_params)
        connection = await _addressed_here(request, selector.integration_id)
        state = app_state(request)
        with details_errors():
            refreshed = await details.refresh_connection(
                database=state.database, nango=state.nango, connection=connection
            )
        return JSONResponse({"data": connection_json(refreshed)})


class ConnectionMetadata(Resource):
    @operation(
        id="mergeConnectionMetadata",
        summary="Merge top-level keys into the metadata, at Nango and here",
        answers={200: ConnectionAnswer},
        errors=(400, 403, 404, 409, 502, 503),
        query=WriteSelector,
        body=MetadataRequest,
    )
    async def patch(self, request: Request) -> JSONResponse:
        return await _write_metadata(request, "merge")

    @operation(
        id="replaceConnectionMetadata",
        summary="Replace the metadata, at Nango and here",
        answers={200: ConnectionAnswer},
        errors=(400, 403, 404, 409, 502, 503),
        query=WriteSelector,
        body=MetadataRequest,
    )
    async def put(self, request: Request) -> JSONResponse:
        return await _write_metadata(request, "replace")


async def _write_metadata(request: Request, mode: details.MetadataMode) -> JSONResponse:
    await require_api_key(request, write=True)
    selector = parse_query(WriteSelector, request.query_params)
    payload = await parse_body(MetadataRequest, request)
    connection = live(await _addressed_here(request, selector.integration_id))
    state = app_state(request)
    with details_errors():
        written = await details.write_metadata(
            database=state.database,
            nango=state.nango,
            connection=connection,
            metadata=payload.metadata,
            mode=mode,
        )
    return JSONResponse({"data": connection_json(written)})


routes = [
    Route("/v1/connections", Connections),
    Route("/v1/connections/{connection_id:segment}", ConnectionItem),
    Route("/v1/connections/{connection_id:segment}/refresh", ConnectionRefresh),
    Route("/v1/connections/{connection_id:segment}/metadata", ConnectionMetadata),
    Route("/v1/connections/{connection_id:segment}/events", ConnectionHistory),
    Route("/v1/connections/{connection_id:segment}/reconnect-session", ReconnectSession),
]
