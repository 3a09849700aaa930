"""What ``lifespan`` owns, shared with the handlers through ``request.app.state``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx2
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from app.settings import Settings

if TYPE_CHECKING:
    from app.nango.client import NangoClient


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    reader: async_sessionmaker[AsyncSession]  # read-only requests (see create_reader)
    http: httpx2.AsyncClient
    nango: NangoClient | None = None
    # SHA-256 of each REGISTRY_API_KEYS entry, hashed once at start (app.api.auth).
    api_key_hashes: tuple[str, ...] = ()
    background: list[object] = field(default_factory=list)


def app_state(connection: HTTPConnection) -> AppState:
    state: AppState = connection.app.state.registry
    return state
