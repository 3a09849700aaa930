"""What operators' tools poll: ``/healthz`` (the process is up), ``/readyz`` (the database
answers and its schema is current) and ``/metrics`` (Prometheus, behind an API key)."""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api.keys import require_api_key
from app.api.openapi import operation
from app.api.shapes import Health, Readiness
from app.db.migrate import head_revision
from app.db.readiness import readiness_problem
from app.errors import NotFound
from app.logs import get_logger
from app.metrics import collect
from app.responses import JSONResponse
from app.state import app_state

log = get_logger(__name__)


@operation(id="healthz", summary="The process is up", answers={200: Health}, auth=False)
async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


@operation(
    id="readyz",
    summary="The database answers and its schema is current",
    answers={200: Readiness, 503: Readiness},
    auth=False,
)
async def readyz(request: Request) -> JSONResponse:
    problem = await readiness_problem(app_state(request).database)
    if problem is not None:
        log.warning("not_ready", reason=problem)
        return JSONResponse({"status": "unavailable", "reason": problem}, status_code=503)
    return JSONResponse({"status": "ok", "schema_revision": head_revision()})


@operation(
    id="metrics",
    summary="Prometheus metrics (404 when METRICS_ENABLED=false)",
    answers={200: None},
    errors=(404,),
    media_type="text/plain",
)
async def metrics(request: Request) -> Response:
    settings = app_state(request).settings
    if not settings.metrics_enabled:
        raise NotFound("metrics are disabled (METRICS_ENABLED=false)")
    await require_api_key(request)
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    registry = collect(multiprocess_dir=settings.prometheus_multiproc_dir)
    return Response(encoder(registry), media_type=content_type)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
