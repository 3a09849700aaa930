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
from app.db.database import is_missing_table, sql
from app.db.migrate import head_revision
from app.errors import NotFound
from app.logs import get_logger
from app.metrics import collect
from app.responses import JSONResponse
from app.state import app_state

log = get_logger(__name__)

SCHEMA_REVISION = sql("SELECT version_num FROM alembic_version")


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
    database = app_state(request).database
    expected = head_revision()
    try:
        async with database.reader() as tx:
            row = await tx.fetchone(SCHEMA_REVISION)
    except Exception as error:  # any driver or network failure means "not ready"
        if not is_missing_table(error):
            log.warning("not_ready", reason="database_unreachable", error_type=type(error).__name__)
            return JSONResponse(
                {"status": "unavailable", "reason": "database unreachable"}, status_code=503
            )
        row = None
    revision = None if row is None else row[0]
    if revision != expected:
        reason = f"schema at revision {revision or 'none'}, expected {expected}: run migrations"
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
    return JSONResponse({"status": "ok", "schema_revision": revision})


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
