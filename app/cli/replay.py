"""``nango-registry replay``: re-apply stored webhook deliveries whose processing failed.

``--dry-run`` lists what would be replayed, in the order it would be, and changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from app.cli.deliveries import print_table
from app.db.database import Database
from app.db.readiness import ready_database
from app.logs import configure_logging
from app.settings import Settings, load_settings
from app.webhooks.deliveries import Delivery, DeliveryFilter, list_deliveries
from app.webhooks.model import DeliveryOutcome
from app.webhooks.replay import replay_deliveries


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "replay", help="re-apply stored webhook deliveries in order (failed ones by default)"
    )
    parser.add_argument(
        "--all", action="store_true", help="re-apply every stored delivery, not only failed ones"
    )
    parser.add_argument("--after-id", type=int, default=0, help="start after this delivery ID")
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be replayed; change nothing"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.log_level)
    if args.dry_run:
        pending = asyncio.run(_pending(settings, include_all=args.all, after_id=args.after_id))
        print_table(pending)
        print(f"{len(pending)} to replay (dry run: nothing changed)")
        return 0

    async def replay() -> dict[str, int]:
        async with ready_database(settings) as database:
            return await replay_deliveries(
                database,
                default_environment=settings.nango_environment,
                include_all=args.all,
                after_id=args.after_id,
            )

    counts = asyncio.run(replay())
    print(json.dumps(counts, sort_keys=True))
    return 1 if counts.get("failed") else 0


async def _pending(settings: Settings, *, include_all: bool, after_id: int) -> list[Delivery]:
    """What ``replay`` would take, in its order (arrival)."""
    outcome = None if include_all else DeliveryOutcome.FAILED
    async with ready_database(settings) as database:
        return await _every_page(database, DeliveryFilter(outcome=outcome), after_id)


async def _every_page(database: Database, filters: DeliveryFilter, after: int) -> list[Delivery]:
    found: list[Delivery] = []
    cursor: int | None = after
    while cursor is not None:
        page = await list_deliveries(
            database, filters=filters, limit=500, after=cursor, order="oldest"
        )
        found += page.deliveries
        cursor = page.next_cursor
    return found
