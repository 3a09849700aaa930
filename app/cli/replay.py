"""``nango-registry replay``: re-apply stored webhook deliveries whose processing failed."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from app.db.database import connected
from app.logs import configure_logging
from app.settings import load_settings
from app.webhooks.replay import replay_deliveries


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "replay", help="re-apply stored webhook deliveries in order (failed ones by default)"
    )
    parser.add_argument(
        "--all", action="store_true", help="re-apply every stored delivery, not only failed ones"
    )
    parser.add_argument("--after-id", type=int, default=0, help="start after this delivery ID")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.log_level)

    async def replay() -> dict[str, int]:
        async with connected(settings) as database:
            return await replay_deliveries(
                database,
                default_environment=settings.nango_environment,
                include_all=args.all,
                after_id=args.after_id,
            )

    counts = asyncio.run(replay())
    print(json.dumps(counts, sort_keys=True))
    return 1 if counts.get("failed") else 0
