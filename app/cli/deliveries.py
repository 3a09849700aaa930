"""``nango-registry deliveries list|show``: the webhook inbox, without SQL.

``list`` prints a table, newest first (``--json``: one JSON object a line), filtered by outcome,
type, connection, integration, environment and time; ``show ID`` prints one delivery with its
raw body and the headers kept (never a signature).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from app.cli.output import fail
from app.db.readiness import ready_database
from app.logs import configure_logging
from app.settings import load_settings
from app.webhooks.deliveries import (
    MAX_LIMIT,
    Delivery,
    DeliveryDetail,
    DeliveryFilter,
    DeliveryPage,
    get_delivery,
    list_deliveries,
)
from app.webhooks.model import DeliveryOutcome


def register(commands: Any) -> None:
    parser = commands.add_parser("deliveries", help="list and show stored webhook deliveries")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="stored deliveries, newest first")
    add_filters(listing)
    listing.add_argument("--limit", type=_limit, default=50, help=f"1 to {MAX_LIMIT} (50)")
    listing.add_argument("--after", type=int, help="continue after this delivery ID")
    listing.add_argument("--json", action="store_true", help="one JSON object a line")
    listing.set_defaults(handler=run_list)
    show = actions.add_parser("show", help="one delivery: body, headers, outcome, error")
    show.add_argument("id", type=int)
    show.set_defaults(handler=run_show)


def add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outcome", choices=[str(outcome) for outcome in DeliveryOutcome])
    parser.add_argument("--type", dest="webhook_type", help="auth, sync, forward, ...")
    parser.add_argument("--connection", help="connection ID")
    parser.add_argument("--integration", help="integration ID (providerConfigKey)")
    parser.add_argument("--environment", help="Nango environment")
    parser.add_argument("--since", type=_time, help="received at or after (ISO 8601)")
    parser.add_argument("--until", type=_time, help="received before (ISO 8601)")


def filters_from(args: argparse.Namespace) -> DeliveryFilter:
    return DeliveryFilter(
        outcome=args.outcome,
        webhook_type=args.webhook_type,
        connection_id=args.connection,
        integration_id=args.integration,
        environment=args.environment,
        received_from=args.since,
        received_before=args.until,
    )


def _limit(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"between 1 and {MAX_LIMIT}")
    return value


def _time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


COLUMNS = ("ID", "RECEIVED_AT", "TYPE", "OPERATION", "SUCCESS", "CONNECTION", "OUTCOME", "ERROR")


def _cells(delivery: Delivery) -> tuple[str, ...]:
    success = "-" if delivery.success is None else str(delivery.success).lower()
    return (
        str(delivery.id),
        delivery.received_at.isoformat(timespec="seconds"),
        delivery.webhook_type or "-",
        delivery.operation or "-",
        success,
        delivery.connection_id or "-",
        delivery.outcome,
        (delivery.error or "-").splitlines()[0][:60] if delivery.error else "-",
    )


def print_table(deliveries: Iterable[Delivery]) -> None:
    rows = [COLUMNS, *(_cells(delivery) for delivery in deliveries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    for row in rows:
        print(
            " ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)),
            row[-1],
        )


def as_json(delivery: Delivery) -> dict[str, Any]:
    return asdict(delivery)


def run_list(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.log_level)

    async def page() -> DeliveryPage:
        async with ready_database(settings) as database:
            return await list_deliveries(
                database, filters=filters_from(args), limit=args.limit, after=args.after
            )

    result = asyncio.run(page())
    if args.json:
        for delivery in result.deliveries:
            print(json.dumps(as_json(delivery), sort_keys=True, default=str))
    else:
        print_table(result.deliveries)
        if result.next_cursor is not None:
            print(f"(more: add --after {result.next_cursor})")
    return 0


def run_show(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.log_level)

    async def one() -> DeliveryDetail | None:
        async with ready_database(settings) as database:
            return await get_delivery(database, delivery_id=args.id)

    delivery = asyncio.run(one())
    if delivery is None:
        return fail(f"no delivery {args.id}")
    print(json.dumps(as_json(delivery), indent=2, sort_keys=True, default=str, ensure_ascii=False))
    return 0
