"""Nango's connections API (docs/nango.md section 6) on a loopback port.

The service under test runs in another process, so the fake Nango must be reachable over a real
socket. It holds every connection the load created, as Nango would after the webhooks were sent,
whether or not they arrived.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.net import free_port


@dataclass
class FakeNangoServer:
    secret_key: str
    connections: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def add(self, *, connection_id: str, integration: str, tags: dict[str, str]) -> None:
        self.connections.append(
            {
                "id": len(self.connections) + 1,
                "connection_id": connection_id,
                "provider_config_key": integration,
                "provider": integration,
                "errors": [],
                "end_user": None,
                "tags": tags,
                "metadata": None,
                "created": "2026-08-01T00:00:00.000Z",
            }
        )

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.secret_key}"

    async def list_connections(self, request: Request) -> JSONResponse:
        self.requests.append(str(request.url.path))
        if not self._authorised(request):
            return JSONResponse({"error": {"code": "unknown_account"}}, status_code=401)
        limit = min(max(int(request.query_params.get("limit", "100")), 1), 2000)
        page = max(int(request.query_params.get("page", "0")), 0)
        newest_first = list(reversed(self.connections))
        return JSONResponse({"connections": newest_first[page * limit : (page + 1) * limit]})

    async def get_connection(self, request: Request) -> JSONResponse:
        self.requests.append(str(request.url.path))
        if not self._authorised(request):
            return JSONResponse({"error": {"code": "unknown_account"}}, status_code=401)
        wanted = request.path_params["connection_id"]
        key = request.query_params.get("provider_config_key")
        for connection in self.connections:
            if connection["connection_id"] == wanted and connection["provider_config_key"] == key:
                return JSONResponse({**connection, "connection_config": {}, "credentials": {}})
        return JSONResponse({"error": {"code": "unknown_connection"}}, status_code=404)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/connections", self.list_connections, methods=["GET"]),
                Route("/connections/{connection_id}", self.get_connection, methods=["GET"]),
            ]
        )


@contextmanager
def running(fake: FakeNangoServer) -> Iterator[str]:
    """Serve ``fake`` on 127.0.0.1 in a thread; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(
        fake.app(), host="127.0.0.1", port=port, log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake Nango did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
