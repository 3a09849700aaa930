"""``app.main:app``: the ASGI app built from the environment (uvicorn imports this)."""

from __future__ import annotations

from starlette.applications import Starlette

from app.application import create_app
from app.logs import configure_logging
from app.settings import load_settings


def _from_environment() -> Starlette:
    settings = load_settings()
    configure_logging(settings.log_level)
    return create_app(settings)


app = _from_environment()
