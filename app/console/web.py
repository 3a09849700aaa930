"""What every console handler shares: errors as pages, and the checks before any change.

A page handler is wrapped by ``page``: an ``ApiError`` it raises (a connection not found, a 409
from Nango...) is shown as an HTML page with the same status and code the API would answer.
An action is wrapped by ``action``: refused in read-only mode, then without a valid CSRF token
(both 403), before its form is handed over.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.bodies import read_limited
from app.console import csrf
from app.console.rendering import console_user, path_for, render
from app.errors import BAD_REQUEST, CONSOLE_READ_ONLY, ApiError, BadRequest, Forbidden
from app.state import app_state

MAX_FORM_BYTES = 16 * 1024

Handler = Callable[[Request], Awaitable[Response]]
Form = dict[str, str]
Action = Callable[[Request, Form], Awaitable[Response]]


def error_page(request: Request, error: ApiError) -> Response:
    return render(
        request,
        "error.html",
        {"title": f"Error {error.status_code}", "error": error},
        status_code=error.status_code,
    )


def page(handler: Handler) -> Handler:
    @wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as error:
            return error_page(request, error)

    return wrapped


async def read_form(request: Request) -> Form:
    """An ``application/x-www-form-urlencoded`` body, the only kind the console's forms send."""
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return {}  # no form, so no CSRF token: refused as such
    timeout = app_state(request).settings.request_body_timeout_seconds
    raw = await read_limited(request, MAX_FORM_BYTES, seconds=timeout)
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise BadRequest("the form is not UTF-8", code=BAD_REQUEST) from None
    return dict(pairs)


def action(handler: Action) -> Handler:
    @wraps(handler)
    async def wrapped(request: Request) -> Response:
        settings = app_state(request).settings
        try:
            if settings.console_read_only:
                raise Forbidden("the console is read-only", code=CONSOLE_READ_ONLY)
            form = await read_form(request)
            csrf.check_token(settings, console_user(request), form.get(csrf.FIELD))
            return await handler(request, form)
        except ApiError as error:
            return error_page(request, error)

    return wrapped


def see_other(
    request: Request, name: str, /, *, notice: str | None = None, **params: object
) -> Response:
    """Back to a page after a change (303, so a reload does not repeat it), with a notice code."""
    url = path_for(request, name, **params)
    if notice is not None:
        url += "?" + urlencode({"notice": notice})
    return RedirectResponse(url, status_code=303)
