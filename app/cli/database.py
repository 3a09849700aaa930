"""``nango-registry migrate``: bring the schema to the latest Alembic revision."""

from __future__ import annotations

import argparse
from typing import Any

from app.db import migrate
from app.logs import configure_logging, get_logger
from app.settings import load_settings

log = get_logger(__name__)


def register(commands: Any) -> None:
    parser = commands.add_parser("migrate", help="apply database migrations (idempotent)")
    parser.add_argument("--revision", default="head", help="target revision (default: head)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.log_level)
    # Alembic's engine creates a missing SQLite file: migrate is the one command that does.
    migrate.upgrade(settings.database_url, args.revision)
    log.info("migrated", revision=args.revision, head=migrate.head_revision())
    return 0
