"""``create_app``: the ASGI app as data, built from given settings (tests build their own)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from app import health
from app.api import connections, openapi
from app.db.engine import create_engine, create_sessionmaker
from app.errors import EXCEPTION_HANDLERS
from app.logs import get_logger
from app.middleware import RequestContextMiddleware
from app.settings import Settings
from app.state import AppState

log = get_logger(__name__)


def _routes() -> list[BaseRoute]:
    return [
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        *connections.ROUTES,
    ]


def create_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = create_engine(settings)
        http = httpx2.AsyncClient(
            timeout=httpx2.Timeout(settings.nango_timeout_seconds, connect=5.0),
            limits=httpx2.Limits(max_connections=20, max_keepalive_connections=10),
        )
        app.state.registry = AppState(
            settings=settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            http=http,
        )
        log.info("started", database=engine.url.get_backend_name())
        try:
            yield
        finally:
            await http.aclose()
            await engine.dispose()
            log.info("stopped")

    return Starlette(
        routes=_routes(),
        middleware=[Middleware(RequestContextMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
