"""``create_app``: the ASGI app as data, built from given settings (tests build their own)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from app import health, monitoring
from app.api import actions, connections, openapi
from app.api.auth import ApiKeyCache, configured_key_hashes
from app.connections.reconcile import run_schedule
from app.db.database import create_database
from app.errors import EXCEPTION_HANDLERS
from app.logs import get_logger
from app.middleware import RequestContextMiddleware
from app.nango.client import NangoClient
from app.settings import Settings
from app.state import AppState
from app.webhooks.routes import ROUTES as WEBHOOK_ROUTES

log = get_logger(__name__)


def _one_route_per_path(routes: list[BaseRoute]) -> list[BaseRoute]:
    """Join routes that share a path into one, so 405 answers list every method in ``Allow``,
    and put catch-all paths (ending in a ``:path`` parameter) after the ones they would swallow.

    The lookup and action modules each declare their own methods on ``/v1/connections/{id}``;
    Starlette would otherwise answer a wrong method with only the first route's methods.
    """
    handlers: dict[str, dict[str, Any]] = {}
    for route in routes:
        if isinstance(route, Route):
            for method in route.methods or ():
                handlers.setdefault(route.path, {})[method] = route.endpoint
    joined: list[BaseRoute] = []
    seen: set[str] = set()
    for route in routes:
        if not isinstance(route, Route) or len({*map(id, handlers[route.path].values())}) == 1:
            joined.append(route)
        elif route.path not in seen:
            seen.add(route.path)
            by_method = handlers[route.path]

            async def dispatch(request: Request, by_method: dict[str, Any] = by_method) -> Any:
                return await by_method[request.method](request)

            joined.append(Route(route.path, dispatch, methods=list(by_method)))
    # sorted() is stable: every other route keeps its place.
    return sorted(joined, key=lambda route: getattr(route, "path", "").endswith(":path}"))


def _routes() -> list[BaseRoute]:
    return _one_route_per_path(
        [
            Route("/healthz", health.healthz, methods=["GET"]),
            Route("/readyz", health.readyz, methods=["GET"]),
            Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
            *WEBHOOK_ROUTES,
            Route("/metrics", monitoring.metrics, methods=["GET"]),
            *connections.ROUTES,
            *actions.routes(),
        ]
    )


def _start_reconcile_schedule(state: AppState) -> asyncio.Task[None] | None:
    interval = state.settings.reconcile_interval_seconds
    if interval is None or not state.nango.configured:
        return None
    log.info("reconcile_scheduled", interval_seconds=interval)
    return asyncio.create_task(
        run_schedule(
            database=state.database,
            nango=state.nango,
            environment=state.settings.nango_environment,
            interval_seconds=interval,
        ),
        name="reconcile-schedule",
    )


def create_app(
    settings: Settings, *, nango_transport: httpx2.AsyncBaseTransport | None = None
) -> Starlette:
    """``nango_transport`` replaces the network under the Nango client (tests pass a fake Nango)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        database = create_database(settings)
        await database.open()
        http = httpx2.AsyncClient(
            timeout=httpx2.Timeout(settings.nango_timeout_seconds, connect=5.0),
            limits=httpx2.Limits(max_connections=20, max_keepalive_connections=10),
            transport=nango_transport,
        )
        app.state.registry = AppState(
            settings=settings,
            database=database,
            api_keys=ApiKeyCache(database, configured_key_hashes(settings)),
            nango=NangoClient.from_settings(settings, http),
        )
        # Everything built so far (modules, settings, pools) lives as long as the process: kept
        # out of the garbage collector's generations, a full collection no longer walks it,
        # which took tens of milliseconds and made the latency tail (measured with make bench).
        gc.freeze()
        log.info("started", database=database.dialect)
        schedule = _start_reconcile_schedule(app.state.registry)
        if schedule is not None:
            app.state.registry.background.append(schedule)
        try:
            yield
        finally:
            for task in app.state.registry.background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await http.aclose()
            await database.close()
            log.info("stopped")

    return Starlette(
        routes=_routes(),
        middleware=[Middleware(RequestContextMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
