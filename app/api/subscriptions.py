"""``/v1/subscriptions``: push endpoints, their attempts and replays (issue 16).

Every route takes a full-access key: a subscription sends connection data wherever its URL
points, so creating or reading one is as sensitive as changing state. The secret is in the
creation's answer only (it is derived, never stored: ``app.subscriptions.signing``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from app.api import cursors
from app.api.inputs import parse_body, parse_query
from app.api.keys import require_api_key
from app.api.openapi import operation
from app.api.resource import Resource
from app.api.shapes import (
    AttemptPage,
    NoQuery,
    PageQuery,
    ReplayAnswer,
    ReplayRequest,
    SubscriptionAnswer,
    SubscriptionChange,
    SubscriptionCreatedAnswer,
    SubscriptionList,
    SubscriptionRequest,
    attempt_json,
    subscription_json,
)
from app.errors import (
    INVALID_BODY,
    SECRET_KEY_MISSING,
    SUBSCRIPTION_NOT_FOUND,
    BadRequest,
    NotFound,
    ServiceUnavailable,
)
from app.logs import get_logger
from app.responses import JSONResponse
from app.state import AppState, app_state
from app.subscriptions import store
from app.subscriptions.model import Subscription, check_url

log = get_logger(__name__)

# Postgres's BIGINT: a longer number names no subscription (and would not fit a parameter).
_MAX_ID = 2**63 - 1


def _subscription_id(request: Request) -> int:
    raw: str = request.path_params["subscription_id"]
    if not raw.isascii() or not raw.isdigit() or not 0 < int(raw) <= _MAX_ID:
        raise _not_found(raw)
    return int(raw)


def _not_found(raw: object) -> NotFound:
    return NotFound(f"no subscription {raw!s}", code=SUBSCRIPTION_NOT_FOUND)


def _https_only(state: AppState, url: str | None) -> None:
    if url is not None and state.settings.subscription_require_https:
        problem = check_url(url, require_https=True)
        if problem:
            raise BadRequest(
                f"url: {problem} (SUBSCRIPTION_REQUIRE_HTTPS)",
                code=INVALID_BODY,
                details={"errors": [{"field": "url", "message": problem}]},
            )


def _secret_key(state: AppState) -> str:
    settings = state.settings
    if settings.secret_key is None or settings.secret_key_generated:
        raise ServiceUnavailable(
            "set SECRET_KEY: subscription secrets are derived from it and must survive restarts",
            code=SECRET_KEY_MISSING,
        )
    return settings.secret_key.get_secret_value()


def _filters(body: SubscriptionRequest | SubscriptionChange) -> dict[str, str | None]:
    if body.filters is None:
        return dict.fromkeys(store.FILTER_FIELDS)
    return {name: getattr(body.filters, name) for name in store.FILTER_FIELDS}


class Subscriptions(Resource):
    @operation(
        id="listSubscriptions",
        summary="Every subscription (never its secret)",
        answers={200: SubscriptionList},
        errors=(400, 403, 503),
        query=NoQuery,
    )
    async def get(self, request: Request) -> JSONResponse:
        await require_api_key(request, write=True)
        parse_query(NoQuery, request.query_params)
        found = await store.list_subscriptions(app_state(request).database)
        return JSONResponse({"data": [subscription_json(item) for item in found]})

    @operation(
        id="createSubscription",
        summary="Subscribe a URL to connection events; the answer shows its secret once",
        answers={201: SubscriptionCreatedAnswer},
        errors=(400, 403, 413, 503),
        query=NoQuery,
        body=SubscriptionRequest,
    )
    async def post(self, request: Request) -> JSONResponse:
        await require_api_key(request, write=True)
        parse_query(NoQuery, request.query_params)
        state = app_state(request)
        secret_key = _secret_key(state)
        body = await parse_body(SubscriptionRequest, request)
        _https_only(state, body.url)
        created = await store.create_subscription(
            state.database,
            secret_key=secret_key,
            url=body.url,
            event_types=body.event_types,
            filters=_filters(body),
        )
        log.info("subscription_created", subscription_id=created.subscription.id)
        _wake(state)  # this process's dispatcher no longer skips committed events
        data = {**subscription_json(created.subscription), "secret": created.secret}
        return JSONResponse({"data": data}, status_code=201)


def _changes(body: SubscriptionChange) -> dict[str, Any]:
    changes: dict[str, Any] = {
        name: getattr(body, name)
        for name in ("status", "url", "event_types")
        if name in body.model_fields_set
    }
    if "filters" in body.model_fields_set:
        changes.update(_filters(body))
    return changes


class SubscriptionItem(Resource):
    @operation(
        id="getSubscription",
        summary="One subscription",
        answers={200: SubscriptionAnswer},
        errors=(400, 403, 404, 503),
        query=NoQuery,
    )
    async def get(self, request: Request) -> JSONResponse:
        await require_api_key(request, write=True)
        parse_query(NoQuery, request.query_params)
        subscription_id = _subscription_id(request)
        found = await store.get_subscription(app_state(request).database, subscription_id)
        if found is None:
            raise _not_found(subscription_id)
        return JSONResponse({"data": subscription_json(found)})

    @operation(
        id="updateSubscription",
        summary="Pause or resume a subscription, or change its URL, types or filters",
        answers={200: SubscriptionAnswer},
        errors=(400, 403, 404, 413, 503),
        query=NoQuery,
        body=SubscriptionChange,
    )
    async def patch(self, request: Request) -> JSONResponse:
        await require_api_key(request, write=True)
        parse_query(NoQuery, request.query_params)
        subscription_id = _subscription_id(request)
        state = app_state(request)
        body = await parse_body(SubscriptionChange, request)
        _https_only(state, body.url)
        updated = await store.update_subscription(state.database, subscription_id, _changes(body))
        if updated is None:
            raise _not_found(subscription_id)
        _log_change(updated, body)
        _wake(state)
        return JSONResponse({"data": subscription_json(updated)})

    @operation(
        id="deleteSubscription",
        summary="Delete a subscription, its queue and its attempts; answers what it was",
        answers={200: SubscriptionAnswer},
        errors=(400, 403, 404, 503),
        query=NoQuery,
    )
    async def delete(self, request: Request) -> JSONResponse:
        await require_api_key(request, write=True)
        parse_query(NoQuery, request.query_params)
        subscription_id = _subscription_id(request)
        deleted = await store.delete_subscription(app_state(request).database, subscription_id)
        if deleted is None:
            raise _not_found(subscription_id)
        log.info("subscription_deleted", subscription_id=subscription_id)
        return JSONResponse({"data": subscription_json(deleted)})


def _log_change(subscription: Subscription, body: SubscriptionChange) -> None:
    log.info(
        "subscription_updated",
        subscription_id=subscription.id,
        changed=sorted(body.model_fields_set),
        status=subscription.status,
    )


def _wake(state: AppState) -> None:
    # Other processes notice within SUBSCRIPTION_POLL_SECONDS.
    if state.dispatcher is not None:
        state.dispatcher.wake()


@operation(
    id="listSubscriptionAttempts",
    summary="Requests sent to a subscriber, newest first",
    answers={200: AttemptPage},
    errors=(400, 403, 404, 503),
    query=PageQuery,
)
async def list_attempts(request: Request) -> JSONResponse:
    await require_api_key(request, write=True)
    query = parse_query(PageQuery, request.query_params)
    subscription_id = _subscription_id(request)
    state = app_state(request)
    scope = {"subscription": subscription_id}
    before = cursors.decode_cursor(
        state.settings, route="attempts", cursor=query.cursor, scope=scope
    )
    if await store.get_subscription(state.database, subscription_id) is None:
        raise _not_found(subscription_id)
    attempts = await store.list_attempts(
        state.database, subscription_id=subscription_id, before=before, limit=query.limit + 1
    )
    page, more = attempts[: query.limit], len(attempts) > query.limit
    next_cursor = cursors.encode_cursor(
        state.settings, route="attempts", after_id=page[-1].id if more else None, scope=scope
    )
    return JSONResponse(
        {"data": [attempt_json(subscription_id, item) for item in page], "next_cursor": next_cursor}
    )


@operation(
    id="replaySubscription",
    summary="Send a subscription's events after an event ID again, oldest first",
    answers={202: ReplayAnswer},
    errors=(400, 403, 404, 413, 503),
    query=NoQuery,
    body=ReplayRequest,
)
async def replay(request: Request) -> JSONResponse:
    await require_api_key(request, write=True)
    parse_query(NoQuery, request.query_params)
    subscription_id = _subscription_id(request)
    body = await parse_body(ReplayRequest, request)
    state = app_state(request)
    replayed = await store.replay(
        state.database, subscription_id=subscription_id, after=body.after, limit=body.limit
    )
    if replayed is None:
        raise _not_found(subscription_id)
    log.info(
        "subscription_replay",
        subscription_id=subscription_id,
        after=body.after,
        queued=replayed.queued,
    )
    _wake(state)
    data = {"queued": replayed.queued, "last_event_id": replayed.last_event_id}
    return JSONResponse({"data": data}, status_code=202)


routes = [
    Route("/v1/subscriptions", Subscriptions),
    Route("/v1/subscriptions/{subscription_id:segment}", SubscriptionItem),
    Route("/v1/subscriptions/{subscription_id:segment}/attempts", list_attempts, methods=["GET"]),
    Route("/v1/subscriptions/{subscription_id:segment}/replay", replay, methods=["POST"]),
]
