"""``create_app``: the ASGI app as data, built from given settings (tests build their own)."""

from __future__ import annotations

import httpx2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from app import probes
from app.api import (
    connect_sessions,
    connections,
    end_users,
    events,
    legacy,
    openapi,
    reconciliation,
    subscriptions,
)
from app.errors import EXCEPTION_HANDLERS
from app.lifespan import lifespan_for
from app.middleware import RawPathRouting, RequestContextMiddleware
from app.settings import Settings
from app.webhooks import receiver

# The busiest routes first: Starlette tries them in order.
ROUTES = [
    *receiver.routes,
    *connections.routes,
    *end_users.routes,
    *connect_sessions.routes,
    *events.routes,
    *reconciliation.routes,
    *subscriptions.routes,
    *legacy.routes,
    *probes.routes,
    *openapi.routes,
]


def console_routes(settings: Settings) -> list[BaseRoute]:
    """The operator console, when it is on; imported only then (Jinja2 and the templates are
    not loaded by a service that does not serve it)."""
    if not settings.console_enabled:
        return []
    from app.console.routes import console_mount

    return [console_mount(settings)]


def create_app(
    settings: Settings, *, nango_transport: httpx2.AsyncBaseTransport | None = None
) -> Starlette:
    """``nango_transport`` replaces the network under the Nango client (tests pass a fake Nango)."""
    app = Starlette(
        routes=[*ROUTES, *console_routes(settings)],
        middleware=[Middleware(RequestContextMiddleware), Middleware(RawPathRouting)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan_for(settings, nango_transport=nango_transport),
    )
    # Starlette would answer "/v1/connections/" with a redirect built from the Host header,
    # which a client chooses: a path is answered as it is, or 404.
    app.router.redirect_slashes = False
    return app
