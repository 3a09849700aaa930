"""The console's pages (``GET``): what the registry knows, read with the API's own queries."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from app.api import cursors
from app.api.keys import list_api_keys
from app.connections import queries
from app.connections.reconcile import recent_runs
from app.console import search as connection_search
from app.console.chart import draw
from app.console.figures import FigureCache, Figures, compute_figures, signature_failures
from app.console.rendering import render
from app.console.web import page
from app.errors import CONNECTION_NOT_FOUND, NotFound
from app.settings import Settings
from app.state import AppState, app_state

HISTORY_PAGE = 50
RUNS_PAGE = 50
NOTICES = {
    "deleted": "The connection is deleted, at Nango and here.",
    "refreshed": "The connection was refreshed from Nango.",
    "owner_set": "The owner is set.",
    "replayed": "The delivery was replayed.",
    "revoked": "The key is revoked; every instance refuses it within seconds.",
    "reconciled": "Reconciliation finished.",
}


def notice(request: Request) -> str | None:
    return NOTICES.get(request.query_params.get("notice", ""))


def missing_settings(settings: Settings) -> list[str]:
    """What the overview warns about: settings without which a part of the service fails."""
    warnings = []
    if not settings.nango_webhook_signing_keys:
        warnings.append("NANGO_WEBHOOK_SIGNING_KEYS is not set: every webhook is refused.")
    if settings.nango_secret_key is None:
        warnings.append(
            "NANGO_SECRET_KEY is not set: reconcile, delete, refresh and Connect sessions fail."
        )
    if settings.reconcile_interval_seconds is None:
        warnings.append(
            "RECONCILE_INTERVAL_SECONDS is not set: lost webhooks are only caught by a manual "
            "reconcile."
        )
    if settings.secret_key is None:
        warnings.append("SECRET_KEY is not set: cursors and console forms expire at each restart.")
    return warnings


def figure_cache(state: AppState) -> FigureCache:
    if state.console_figures is None:
        state.console_figures = FigureCache(state.settings.console_cache_seconds)
    return state.console_figures


async def figures(state: AppState) -> Figures:
    return await figure_cache(state).get(lambda: compute_figures(state.database))


@page
async def overview(request: Request) -> Response:
    state = app_state(request)
    shown = await figures(state)
    async with state.database.reader() as tx:
        runs = await recent_runs(tx, limit=1)
    return render(
        request,
        "overview.html",
        {
            "title": "Overview",
            "figures": shown,
            "chart": draw(shown.deliveries, now=shown.computed_at),
            "signature_failures": signature_failures(state.settings.prometheus_multiproc_dir),
            "last_run": runs[0] if runs else None,
            "warnings": missing_settings(state.settings),
        },
    )


@page
async def connections(request: Request) -> Response:
    state = app_state(request)
    form = connection_search.read_search(state.settings, request.query_params)
    rows: list[object] = []
    next_params = None
    async with state.database.reader() as tx:
        if form.connection_id is not None:
            rows = list(await queries.find_by_connection_id(tx, connection_id=form.connection_id))
        else:
            found = await queries.find_connections(
                tx, limit=connection_search.PAGE_SIZE, after_id=form.after_id, **form.filters
            )
            rows = list(found.items)
            next_params = connection_search.next_page_params(
                state.settings, form, found.next_after_id
            )
    return render(
        request,
        "connections.html",
        {
            "title": "Connections",
            "form": form.values,
            "statuses": connection_search.STATUS_CHOICES,
            "rows": rows,
            "next_params": next_params,
        },
    )


@page
async def connection(request: Request) -> Response:
    state = app_state(request)
    pk: int = request.path_params["pk"]
    scope = {"connection": pk}
    after_id = cursors.decode_cursor(
        state.settings,
        route="console-events",
        cursor=request.query_params.get("cursor") or None,
        scope=scope,
    )
    async with state.database.reader() as tx:
        found = await queries.connection_by_pk(tx, pk=pk)
        if found is None:
            raise NotFound(f"no connection #{pk}", code=CONNECTION_NOT_FOUND)
        history = await queries.find_history(
            tx, connection_pk=pk, limit=HISTORY_PAGE, after_id=after_id
        )
    next_cursor = cursors.encode_cursor(
        state.settings, route="console-events", after_id=history.next_after_id, scope=scope
    )
    return render(
        request,
        "connection.html",
        {
            "title": f"Connection {found.connection_id}",
            "connection": found,
            "history": history.items,
            "next_cursor": next_cursor,
            "notice": notice(request),
            "nango_environment": state.settings.nango_environment,
        },
    )


@page
async def end_user(request: Request) -> Response:
    state = app_state(request)
    end_user_id: str = request.path_params["end_user_id"]
    async with state.database.reader() as tx:
        summaries = await queries.end_user_summary(tx, end_user_id=end_user_id)
    return render(
        request,
        "end_user.html",
        {"title": f"End user {end_user_id}", "end_user_id": end_user_id, "summaries": summaries},
    )


def _before(request: Request) -> int | None:
    raw = request.query_params.get("before", "")
    return int(raw) if raw.isdigit() and 0 < len(raw) < 19 else None


@page
async def reconcile_runs(request: Request) -> Response:
    state = app_state(request)
    async with state.database.reader() as tx:
        runs = await recent_runs(tx, limit=RUNS_PAGE + 1, before_id=_before(request))
    more = len(runs) > RUNS_PAGE
    runs = runs[:RUNS_PAGE]
    return render(
        request,
        "reconcile.html",
        {
            "title": "Reconcile",
            "runs": runs,
            "before": runs[-1].id if more else None,
            "notice": notice(request),
            "nango_configured": state.nango.configured,
            "environment": state.settings.nango_environment,
        },
    )


@page
async def api_keys(request: Request) -> Response:
    keys = await list_api_keys(app_state(request).database)
    return render(
        request,
        "api_keys.html",
        {"title": "API keys", "keys": keys, "notice": notice(request), "created": None},
    )
