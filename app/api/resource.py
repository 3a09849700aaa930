"""``Resource``: the routes of one resource as one class, a method per HTTP verb.

Starlette's ``HTTPEndpoint``, with what it works out on every request (which methods the class
has, whether each is a coroutine) worked out once per class. Every handler here is async.
"""

from __future__ import annotations

from typing import Any, ClassVar

from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

# Starlette's order, which is the order of the Allow header of a 405.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "QUERY")


class Resource(HTTPEndpoint):
    _handlers: ClassVar[dict[str, str]] = {}
    _allowed: ClassVar[list[str]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers = {}
        for method in _METHODS:
            if getattr(cls, method.lower(), None) is not None:
                handlers[method] = method.lower()
            elif method == "HEAD" and getattr(cls, "get", None) is not None:
                handlers[method] = "get"
        cls._handlers = handlers
        cls._allowed = list(handlers)

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self._allowed_methods = self._allowed

    async def dispatch(self) -> None:
        request = Request(self.scope, receive=self.receive, send=self.send)
        name = self._handlers.get(request.method)
        handler = self.method_not_allowed if name is None else getattr(self, name)
        response = await handler(request)
        await response(self.scope, self.receive, self.send)
