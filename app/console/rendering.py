"""Rendering a console page: the Jinja2 templates, their filters, and what every page gets.

Times are shown in UTC with their age beside them; JSON pretty-printed. Autoescaping is on for
every template, so stored text (tags, error descriptions, webhook bodies) is shown, never run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import pass_context
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.templating import Jinja2Templates

from app.console import csrf
from app.state import app_state

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=HERE / "templates")

_UNITS = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))


def utc(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds")


def age(moment: datetime | None, now: datetime | None = None) -> str:
    """``3 min ago``, ``in 2 h``: the largest whole unit, for reading at a glance."""
    if moment is None:
        return ""
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    future, seconds = seconds < 0, abs(seconds)
    if seconds < 5:
        return "just now"
    for unit, size in _UNITS:
        if seconds >= size:
            amount = f"{seconds // size} {unit}"
            return f"in {amount}" if future else f"{amount} ago"
    return "just now"  # pragma: no cover (seconds >= 5 always meets a unit)


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def pretty_body(text: str) -> str:
    """A stored webhook body, indented when it is JSON, as received otherwise."""
    try:
        return pretty_json(json.loads(text))
    except ValueError:
        return text


# Route name -> its path with ``{param}`` placeholders, from ``register_paths``. Starlette's
# ``url_path_for`` tries every route in turn (an exception per miss); a page of 50 rows names
# ~100 paths, and that lookup measured 60 % of its rendering time.
_PATHS: dict[str, str] = {}


def register_paths(prefix: str, name: str, routes: Sequence[BaseRoute]) -> None:
    """Remember the paths of a mount's named routes (``name:route``)."""
    for route in routes:
        if isinstance(route, Mount):
            _PATHS[f"{name}:{route.name}"] = f"{prefix}{route.path}/{{path}}"
        elif isinstance(route, Route):
            _PATHS[f"{name}:{route.name}"] = prefix + route.path_format


def path_for(request: Request, name: str, /, **params: Any) -> str:
    """The path of a named console route, behind any proxy prefix, its parameters escaped the
    way the routes read them (``segment``: a ``/`` as ``%2F``; ``path``: ``/`` kept)."""
    root: str = request.scope.get("app_root_path", request.scope.get("root_path", ""))
    values = {
        key: quote(str(value), safe="/" if key == "path" else "") for key, value in params.items()
    }
    return root + _PATHS[name].format(**values)


@pass_context
def _href(context: Mapping[str, Any], name: str, /, **params: Any) -> str:
    return path_for(context["request"], name, **params)


TEMPLATES.env.filters.update(utc=utc, iso=iso, age=age, pretty_json=pretty_json)
TEMPLATES.env.filters["pretty_body"] = pretty_body
TEMPLATES.env.globals["href"] = _href


def console_user(request: Request) -> str:
    user: str = request.scope["state"]["console_user"]
    return user


_SECTIONS = {
    "": "overview",
    "connections": "connections",
    "end-users": "connections",
    "deliveries": "deliveries",
    "reconcile": "reconcile",
    "api-keys": "api_keys",
}


def section(request: Request) -> str | None:
    """The navigation entry a page belongs to, from the first segment of its path."""
    first = request.scope["path"].removeprefix(request.scope.get("root_path", ""))
    return _SECTIONS.get(first.strip("/").partition("/")[0])


def render(
    request: Request,
    name: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
) -> Response:
    settings = app_state(request).settings
    page = {
        "read_only": settings.console_read_only,
        "csrf_token": csrf.issue_token(settings, console_user(request)),
        "user": console_user(request),
        "notice": None,
        "section": section(request),
        **(context or {}),
    }
    return TEMPLATES.TemplateResponse(request, name, page, status_code=status_code)
