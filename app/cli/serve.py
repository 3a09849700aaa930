"""``nango-registry serve``: uvicorn on ``HOST``:``PORT`` with ``WEB_CONCURRENCY`` workers."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import uvicorn

from app.logs import configure_logging, get_logger
from app.middleware import MAX_HEADER_BYTES
from app.settings import (
    Settings,
    configuration_summary,
    configuration_warnings,
    load_settings,
)

log = get_logger(__name__)


def register(commands: Any) -> None:
    parser = commands.add_parser("serve", help="serve the HTTP API and the webhook receiver")
    parser.add_argument("--host", help="overrides HOST")
    parser.add_argument("--port", type=int, help="overrides PORT")
    parser.add_argument("--workers", type=int, help="overrides WEB_CONCURRENCY")
    parser.set_defaults(handler=run)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Server options besides the bind address; ``bench/`` serves its ceiling app with these."""
    return {
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "log_config": None,
        "access_log": False,
        "server_header": False,
        "timeout_graceful_shutdown": settings.graceful_shutdown_seconds,
        "timeout_keep_alive": 75,
        # The supervisor kills a worker that does not answer its ping within this many seconds
        # (uvicorn's default is 5): a worker still importing the app on a busy or cold machine
        # was killed and respawned in a loop, so it never started.
        "timeout_worker_healthcheck": 30,
        # With h11 (uvicorn's pure-Python parser) a request's headers may fill this much before
        # it is refused; app.middleware refuses more than MAX_HEADER_BYTES with 431. httptools,
        # used when installed, has no such bound: README, "Deploy".
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES + 8 * 1024,
    }


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.log_level)
    log.info("configuration", **configuration_summary(settings))
    for problem in configuration_warnings(settings):
        log.warning("configuration_warning", problem=problem)
    if settings.secret_key is None:
        # Workers must share the key that signs pagination cursors, so the parent picks one.
        os.environ["SECRET_KEY"] = secrets.token_urlsafe(32)
        os.environ["SECRET_KEY_GENERATED"] = "true"  # noqa: S105 (a flag, not a key)
        log.warning(
            "secret_key_generated",
            detail="SECRET_KEY is not set: pagination cursors will not survive a restart, and"
            " subscriptions cannot be created",
        )
    workers = args.workers or settings.web_concurrency
    created = _prepare_metrics_directory(settings.prometheus_multiproc_dir, workers=workers)
    try:
        _serve(args, settings, workers)
    finally:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
    return 0


def _prepare_metrics_directory(configured: str | None, *, workers: int) -> str | None:
    """Give several workers one metrics directory; return it if it was created here."""
    if configured is not None:
        # prometheus_client asks for the directory to be wiped before the workers start: a
        # previous run's files would otherwise be summed into this run's counters.
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        # prometheus_client reads the process environment, not .env: hand the setting on.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = configured
        for stale in directory.glob("*.db"):
            stale.unlink()
        return None
    if workers == 1:
        return None
    # Workers are spawned after this and inherit the variable; prometheus_client reads it when
    # app.metrics is first imported in each of them.
    created = tempfile.mkdtemp(prefix="nango-registry-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = created
    return created


def _serve(args: argparse.Namespace, settings: Settings, workers: int) -> None:
    uvicorn.run(
        "app.main:app",
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=workers,
        **uvicorn_options(settings),
    )
