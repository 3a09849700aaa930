"""How metrics leave the process: ``GET /metrics`` and the request-latency middleware."""

from __future__ import annotations

import time

from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth import require_api_key
from app.errors import NotFound
from app.metrics import collect, observe_request
from app.state import app_state

# Requests that match no route are counted under one label: raw paths would let any scanner
# create unbounded time series.
UNMATCHED_ROUTE = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


async def metrics(request: Request) -> Response:
    settings = app_state(request).settings
    if not settings.metrics_enabled:
        raise NotFound("metrics are disabled (METRICS_ENABLED=false)")
    await require_api_key(request)
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    registry = collect(multiprocess_dir=settings.prometheus_multiproc_dir)
    return Response(encoder(registry), media_type=content_type)


def _route_template(scope: Scope) -> str:
    # Starlette's router records the route it matched in the (shared) scope.
    route = scope.get("route")
    path = getattr(route, "path", None) if isinstance(route, BaseRoute) else None
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class RequestLatencyMiddleware:
    """Observe every HTTP request's duration by method, route template and status class."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            observe_request(
                method=scope["method"] if scope["method"] in _METHODS else "OTHER",
                route=_route_template(scope),
                status=status,
                seconds=time.perf_counter() - started,
            )
