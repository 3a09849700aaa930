"""``GET /metrics``: how metrics leave the process (latency is observed in app.middleware)."""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response

from app.api.auth import require_api_key
from app.errors import NotFound
from app.metrics import collect
from app.state import app_state


async def metrics(request: Request) -> Response:
    settings = app_state(request).settings
    if not settings.metrics_enabled:
        raise NotFound("metrics are disabled (METRICS_ENABLED=false)")
    await require_api_key(request)
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    registry = collect(multiprocess_dir=settings.prometheus_multiproc_dir)
    return Response(encoder(registry), media_type=content_type)
