"""``/v1/events``: the change feed, pulled page by page or streamed (Server-Sent Events).

Both read ``app.connections.feed``: oldest first, each event once, and safe to resume after the
last ID handled. A stream sends ``id:``, ``event:`` and ``data:`` per event (so a browser's
``EventSource`` resumes by itself with ``Last-Event-ID``), a comment line as a heartbeat when
idle, and ends when the server shuts down. While idle it holds no database connection: it
waits on the process's ``FeedSignal``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator

import psycopg
import pydantic_core
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from app.api.inputs import bad_parameter, parse_query
from app.api.keys import require_api_key
from app.api.openapi import operation
from app.api.shapes import EventPage, EventQuery, FeedQuery, StreamQuery
from app.connections.feed import EventFilter, FeedEvent, event_json, read_events
from app.db.database import DatabaseTimeout
from app.logs import get_logger
from app.metrics import LOOKUPS
from app.responses import JSONResponse
from app.state import AppState, app_state

log = get_logger(__name__)

_PULLS = LOOKUPS.labels(route="events")
STREAM_BATCH = 500
LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "resume after this event (sent by EventSource when it reconnects)",
    "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
}


def _filter(query: FeedQuery) -> EventFilter:
    return EventFilter(
        types=tuple(str(kind) for kind in query.type or ()),
        end_user_id=query.end_user_id,
        organization_id=query.organization_id,
        integration_id=query.integration_id,
    )


@operation(
    id="listEvents",
    summary="The change feed, oldest first: pass `next_after` back as `after`",
    answers={200: EventPage},
    errors=(400, 503),
    query=EventQuery,
)
async def list_events(request: Request) -> JSONResponse:
    _PULLS.inc()
    await require_api_key(request)
    query = parse_query(EventQuery, request.query_params)
    events = await read_events(
        app_state(request).database, after=query.after, limit=query.limit, filters=_filter(query)
    )
    next_after = events[-1].id if events else query.after
    return JSONResponse({"data": [event_json(e) for e in events], "next_after": next_after})


def _resume_point(request: Request, query: StreamQuery) -> int:
    header = request.headers.get("last-event-id")
    if header is None:
        return query.after or 0
    if not header.isascii() or not header.isdigit() or len(header) > 18:
        raise bad_parameter("Last-Event-ID", "must be an event ID")
    return int(header)


def _frame(event: FeedEvent) -> bytes:
    data = pydantic_core.to_json(event_json(event))
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.id, event.type.encode(), data)


async def _frames(state: AppState, after: int, filters: EventFilter) -> AsyncIterator[bytes]:
    signal = state.feed_signal
    heartbeat = state.settings.feed_heartbeat_seconds
    last_sent = time.monotonic()
    yield b": connected\n\n"
    while not signal.closed:
        ticket = signal.ticket()
        try:
            events = await read_events(
                state.database, after=after, limit=STREAM_BATCH, filters=filters
            )
        except (psycopg.Error, sqlite3.Error, DatabaseTimeout) as error:
            log.warning("event_stream_read_failed", error_type=type(error).__name__)
            events = []
        for event in events:
            yield _frame(event)
            after = event.id
        if events:
            last_sent = time.monotonic()
            if len(events) == STREAM_BATCH:
                continue
        idle = heartbeat - (time.monotonic() - last_sent)
        if idle <= 0:
            yield b": heartbeat\n\n"
            last_sent = time.monotonic()
            continue
        await signal.wait(ticket, idle)


@operation(
    id="streamEvents",
    summary="The change feed as Server-Sent Events, from `Last-Event-ID` or `after`",
    answers={200: None},
    errors=(400, 503),
    query=StreamQuery,
    parameters=(LAST_EVENT_ID,),
    media_type="text/event-stream",
)
async def stream_events(request: Request) -> StreamingResponse:
    await require_api_key(request)
    query = parse_query(StreamQuery, request.query_params)
    after = _resume_point(request, query)
    return StreamingResponse(
        _frames(app_state(request), after, _filter(query)),
        media_type="text/event-stream",
        # Proxies (nginx, Heroku's router) must pass each event on at once.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


routes = [
    Route("/v1/events", list_events, methods=["GET"]),
    Route("/v1/events/stream", stream_events, methods=["GET"]),
]
