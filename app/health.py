"""``/healthz``: the process is up. ``/readyz``: the database answers, its schema is current."""

from __future__ import annotations

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse

from app.db.migrate import current_revision, head_revision
from app.logs import get_logger
from app.state import app_state

log = get_logger(__name__)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    engine = app_state(request).engine
    expected = head_revision()
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            revision = await current_revision(connection)
    except Exception as error:  # any driver or network failure means "not ready"
        log.warning("not_ready", reason="database_unreachable", error_type=type(error).__name__)
        return JSONResponse(
            {"status": "unavailable", "reason": "database unreachable"}, status_code=503
        )
    if revision != expected:
        reason = f"schema at revision {revision or 'none'}, expected {expected}: run migrations"
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
    return JSONResponse({"status": "ok", "schema_revision": revision})
