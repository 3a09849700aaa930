"""What ``lifespan`` owns, shared with the handlers through ``request.app.state``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

from app.db.database import Database
from app.settings import Settings

if TYPE_CHECKING:
    from app.api.auth import ApiKeyCache
    from app.nango.client import NangoClient


@dataclass
class AppState:
    settings: Settings
    database: Database
    api_keys: ApiKeyCache
    nango: NangoClient
    # Tasks lifespan started and cancels at shutdown (the reconcile schedule).
    background: list[asyncio.Task[None]] = field(default_factory=list)


def app_state(connection: HTTPConnection) -> AppState:
    state: AppState = connection.app.state.registry
    return state
