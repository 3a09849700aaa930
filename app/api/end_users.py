"""``/v1/end-users/{end_user_id}/summary``: what a product page needs about one of your users."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from app.api.inputs import parse_query
from app.api.keys import require_api_key
from app.api.openapi import operation
from app.api.shapes import SummaryAnswer, SummaryQuery, summary_json
from app.connections import queries
from app.metrics import LOOKUPS
from app.responses import JSONResponse
from app.state import app_state

_COUNTED = LOOKUPS.labels(route="end_user_summary")


@operation(
    id="endUserSummary",
    summary="Per integration: connected? which connection? needs re-authorization?",
    answers={200: SummaryAnswer},
    errors=(400, 503),
    query=SummaryQuery,
)
async def end_user_summary(request: Request) -> JSONResponse:
    _COUNTED.inc()
    await require_api_key(request)
    query = parse_query(SummaryQuery, request.query_params)
    end_user_id: str = request.path_params["end_user_id"]
    async with app_state(request).database.reader() as tx:
        summaries = await queries.end_user_summary(
            tx, end_user_id=end_user_id, environment=query.environment
        )
    return JSONResponse(summary_json(end_user_id, summaries))


routes = [
    Route("/v1/end-users/{end_user_id:segment}/summary", end_user_summary, methods=["GET"]),
]
