"""``lifespan``: opens what the app owns at start-up and closes it at shutdown.

The database, the API keys, the Nango client (the outbound HTTP client for Nango) and the
background tasks (the reconcile schedule, the subscriptions dispatcher), kept in ``AppState``
(``app.state``), where handlers reach them with ``app_state(request)``. Nothing is created per
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx2
from starlette.applications import Starlette

from app.api.keys import ApiKeyCache, configured_key_hashes
from app.connections.detail_fetches import DetailFetches
from app.connections.feed_signal import FeedSignal, close_on_exit_signals
from app.connections.reconcile import run_schedule
from app.db.database import Database, create_database, postgres_conninfo
from app.db.readiness import readiness_problem
from app.logs import get_logger
from app.nango.client import NangoClient
from app.settings import Settings
from app.state import AppState
from app.subscriptions.dispatcher import MAX_SENDS_PER_PROCESS, Dispatcher

log = get_logger(__name__)


def _start_reconcile_schedule(state: AppState) -> asyncio.Task[None] | None:
    interval = state.settings.reconcile_interval_seconds
    if interval is None or not state.nango.configured:
        return None
    log.info("reconcile_scheduled", interval_seconds=interval)
    return asyncio.create_task(
        run_schedule(
            database=state.database,
            nango=state.nango,
            environment=state.settings.nango_environment,
            interval_seconds=interval,
            details_per_run=state.settings.reconcile_details_per_run,
        ),
        name="reconcile-schedule",
    )


@asynccontextmanager
async def _dispatching(state: AppState) -> AsyncIterator[None]:
    """The subscriptions dispatcher, with an HTTP client of its own: subscribers are not Nango
    (other timeouts, no redirects followed, a pool that a slow subscriber cannot take from
    Nango calls). It hears of committed events through the process's ``FeedSignal`` (the one
    LISTEN connection per process)."""
    settings = state.settings
    if not settings.subscription_dispatch:
        yield
        return
    http = httpx2.AsyncClient(
        timeout=httpx2.Timeout(settings.subscription_timeout_seconds),
        limits=httpx2.Limits(max_connections=MAX_SENDS_PER_PROCESS, max_keepalive_connections=8),
        follow_redirects=False,
    )
    dispatcher = state.dispatcher = Dispatcher(
        database=state.database, http=http, settings=settings
    )
    state.feed_signal.on_poke(dispatcher.event_committed)
    task = asyncio.create_task(dispatcher.run(), name="subscriptions-dispatcher")
    try:
        yield
    finally:
        await dispatcher.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await http.aclose()


async def _report_readiness(database: Database) -> None:
    """Say at start, in one line, why the database cannot serve yet (``/readyz`` says it too)."""
    problem = await readiness_problem(database)
    if problem is None:
        log.info("database_ready")
    else:
        log.error("database_not_ready", reason=problem)


def lifespan_for(
    settings: Settings, *, nango_transport: httpx2.AsyncBaseTransport | None = None
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """The lifespan of an app built from ``settings`` (``nango_transport``: see create_app)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        database = create_database(settings, bounded=True)
        await database.open()
        http = httpx2.AsyncClient(
            timeout=httpx2.Timeout(settings.nango_timeout_seconds, connect=5.0),
            limits=httpx2.Limits(max_connections=20, max_keepalive_connections=10),
            transport=nango_transport,
        )
        state = app.state.registry = AppState(
            settings=settings,
            database=database,
            api_keys=ApiKeyCache(database, configured_key_hashes(settings)),
            nango=NangoClient.from_settings(settings, http),
            feed_signal=FeedSignal(poll_interval=settings.feed_poll_interval_seconds),
        )
        state.details = DetailFetches(
            database=database,
            nango=state.nango,
            attempts=settings.connection_details_attempts,
            retry_seconds=settings.connection_details_retry_seconds,
        )
        readiness = asyncio.create_task(_report_readiness(database))
        schedule = _start_reconcile_schedule(state)
        if schedule is not None:
            state.background.append(schedule)
        if settings.console_enabled:
            from app.console.figures import start_figures  # only with the console on

            state.background.append(start_figures(state))
        if not settings.is_sqlite:
            listener = state.feed_signal.listen(postgres_conninfo(settings.database_url))
            state.background.append(asyncio.create_task(listener, name="feed-listener"))
        close_on_exit_signals(state.feed_signal)
        database.on_feed_commit = state.feed_signal.poke  # every writer, not just the receiver
        # Everything built so far (modules, settings, pools) lives as long as the process: kept
        # out of the garbage collector's generations, a full collection no longer walks it,
        # which took tens of milliseconds and made the latency tail (measured with make bench).
        gc.freeze()
        log.info("started", database=database.dialect)
        try:
            async with _dispatching(state):
                yield
        finally:
            await state.details.close()
            state.feed_signal.close()
            for task in (readiness, *state.background):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await http.aclose()
            await state.api_keys.close()
            await database.close()
            log.info("stopped")

    return lifespan
