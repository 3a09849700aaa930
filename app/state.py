"""What the app owns while it runs (built by ``app.lifespan``), as handlers reach it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

from app.db.database import Database
from app.settings import Settings

if TYPE_CHECKING:
    from app.api.keys import ApiKeyCache
    from app.connections.detail_fetches import DetailFetches
    from app.connections.feed_signal import FeedSignal
    from app.console.figures import FigureCache
    from app.nango.client import NangoClient
    from app.subscriptions.dispatcher import Dispatcher


@dataclass
class AppState:
    settings: Settings
    database: Database
    api_keys: ApiKeyCache
    nango: NangoClient
    feed_signal: FeedSignal
    # None when SUBSCRIPTION_DISPATCH=false.
    dispatcher: Dispatcher | None = None
    # Tasks started at start-up and cancelled at shutdown.
    background: list[asyncio.Task[None]] = field(default_factory=list)
    # Configuration and metadata fetched after webhooks (closed at shutdown); None: not fetched.
    details: DetailFetches | None = None
    # The console's overview figures, made on its first view (app.console.figures).
    console_figures: FigureCache | None = None


def app_state(connection: HTTPConnection) -> AppState:
    state: AppState = connection.app.state.registry
    return state
