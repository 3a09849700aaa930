"""The console's routes, mounted at ``/console`` behind ``ConsoleGuard`` when it is enabled."""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from app.console import actions, deliveries, pages
from app.console.guard import ConsoleGuard
from app.console.rendering import HERE, register_paths
from app.settings import Settings


def console_mount(settings: Settings) -> Mount:
    """``/console`` and everything under it, behind the guard (``app.application`` mounts it
    only when the console is on: every /console path is a 404 otherwise)."""
    routes: list[BaseRoute] = [
        Route("/", pages.overview, name="overview"),
        Route("/connections", pages.connections, name="connections"),
        Route("/connections/{pk:int}", pages.connection, name="connection"),
        Route(
            "/connections/{pk:int}/reconnect", actions.reconnect, methods=["POST"], name="reconnect"
        ),
        Route("/connections/{pk:int}/delete", actions.delete, methods=["POST"], name="delete"),
        Route("/connections/{pk:int}/refresh", actions.refresh, methods=["POST"], name="refresh"),
        Route("/connections/{pk:int}/owner", actions.set_owner, methods=["POST"], name="set_owner"),
        Route("/end-users/{end_user_id:segment}", pages.end_user, name="end_user"),
        Route("/deliveries", deliveries.deliveries, name="deliveries"),
        Route("/deliveries/{delivery_id:int}", deliveries.delivery, name="delivery"),
        Route(
            "/deliveries/{delivery_id:int}/replay", actions.replay, methods=["POST"], name="replay"
        ),
        Route(
            "/deliveries/replay-failed",
            actions.replay_failed,
            methods=["POST"],
            name="replay_failed",
        ),
        Route("/reconcile", pages.reconcile_runs, name="reconcile"),
        Route("/reconcile", actions.reconcile, methods=["POST"], name="reconcile_now"),
        Route("/api-keys", pages.api_keys, name="api_keys"),
        Route("/api-keys", actions.create_key, methods=["POST"], name="create_key"),
        Route(
            "/api-keys/{name:segment}/revoke",
            actions.revoke_key,
            methods=["POST"],
            name="revoke_key",
        ),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    register_paths("/console", "console", routes)
    return Mount(
        "/console",
        routes=routes,
        name="console",
        middleware=[Middleware(ConsoleGuard, settings=settings)],
    )
