"""``/healthz``: the process is up. ``/readyz``: the database answers, its schema is current."""

from __future__ import annotations

from starlette.requests import Request

from app.db.database import is_missing_table, sql
from app.db.migrate import head_revision
from app.logs import get_logger
from app.responses import JSONResponse
from app.state import app_state

log = get_logger(__name__)

SCHEMA_REVISION = sql("SELECT version_num FROM alembic_version")


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    database = app_state(request).database
    expected = head_revision()
    try:
        async with database.reader() as tx:
            row = await tx.fetchone(SCHEMA_REVISION)
    except Exception as error:  # any driver or network failure means "not ready"
        if is_missing_table(error):
            row = None
        else:
            log.warning("not_ready", reason="database_unreachable", error_type=type(error).__name__)
            return JSONResponse(
                {"status": "unavailable", "reason": "database unreachable"}, status_code=503
            )
    revision = None if row is None else row[0]
    if revision != expected:
        reason = f"schema at revision {revision or 'none'}, expected {expected}: run migrations"
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
    return JSONResponse({"status": "ok", "schema_revision": revision})
