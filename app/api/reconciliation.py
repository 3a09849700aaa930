"""``POST /v1/reconcile``: bring the registry in line with Nango's connections API now."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from app.api.inputs import parse_query
from app.api.keys import require_api_key
from app.api.openapi import operation
from app.api.shapes import NoQuery, ReconcileAnswer
from app.api.upstream import nango_errors
from app.connections.reconcile import ReconcileBusy, ReconcileCounts, reconcile
from app.errors import RECONCILE_RUNNING, Conflict
from app.responses import JSONResponse
from app.state import AppState, app_state


@operation(
    id="reconcile",
    summary="Bring the registry in line with Nango's connections API",
    answers={200: ReconcileAnswer},
    errors=(400, 403, 409, 502, 503),
    query=NoQuery,
)
async def start_reconcile(request: Request) -> JSONResponse:
    await require_api_key(request, write=True)
    parse_query(NoQuery, request.query_params)
    state = app_state(request)
    counts = await reconcile_now(state, trigger="api")
    return JSONResponse(
        {"environment": state.settings.nango_environment, "counts": counts.as_dict()}
    )


async def reconcile_now(state: AppState, *, trigger: str) -> ReconcileCounts:
    """One run now (the API's and the console's); 409 while another one runs."""
    with nango_errors():
        try:
            counts = await reconcile(
                database=state.database,
                nango=state.nango,
                environment=state.settings.nango_environment,
                trigger=trigger,
                details_per_run=state.settings.reconcile_details_per_run,
            )
        except ReconcileBusy as error:
            raise Conflict(str(error), code=RECONCILE_RUNNING) from None
    assert counts is not None  # only the schedule asks to skip a recent run
    return counts


routes = [Route("/v1/reconcile", start_reconcile, methods=["POST"])]
