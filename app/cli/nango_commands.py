"""``nango-registry reconcile`` and ``nango-registry import-csv FILE``.

Both print one JSON document on stdout (logs are JSON lines on stderr) and exit 0 on success,
1 when the work was refused or failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx2

from app.cli.output import print_json
from app.connections.legacy_import import CsvHeaderError, import_rows, parse_legacy_csv
from app.connections.reconcile import ReconcileBusy, reconcile
from app.db.readiness import ready_database
from app.logs import configure_logging
from app.nango.client import NangoError, open_nango_client
from app.settings import Settings, load_settings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "reconcile", help="bring the registry in line with Nango's connections API"
    )
    parser.set_defaults(handler=run_reconcile)
    parser = commands.add_parser(
        "import-csv",
        help="import legacy connections (integration_id, connection_id, end_user_id, "
        "organization_id[, environment]); all rows or none",
    )
    parser.add_argument("file", type=Path, help="CSV file with a header row; '-' for stdin")
    parser.set_defaults(handler=run_import)


def run_reconcile(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.log_level)
    return asyncio.run(reconcile_command(settings))


async def reconcile_command(
    settings: Settings, *, transport: httpx2.AsyncBaseTransport | None = None
) -> int:
    try:
        async with (
            ready_database(settings) as database,
            open_nango_client(settings, transport=transport) as nango,
        ):
            counts = await reconcile(
                database=database,
                nango=nango,
                environment=settings.nango_environment,
                trigger="cli",
                details_per_run=settings.reconcile_details_per_run,
            )
    except (NangoError, ReconcileBusy) as error:
        print_json({"error": str(error)})
        return 1
    assert counts is not None
    print_json({"environment": settings.nango_environment, "counts": counts.as_dict()})
    return 0


def run_import(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.log_level)
    try:
        from_stdin = str(args.file) == "-"
        text = sys.stdin.read() if from_stdin else args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        print_json({"imported": 0, "error": f"cannot read {args.file}: {error}"})
        return 1
    return asyncio.run(import_command(settings, text))


async def import_command(settings: Settings, text: str) -> int:
    try:
        rows, rejections = parse_legacy_csv(text, default_environment=settings.nango_environment)
    except CsvHeaderError as error:
        print_json({"imported": 0, "error": str(error)})
        return 1
    if rejections:
        print_json(
            {
                "imported": 0,
                "valid": len(rows),
                "rejected": [{"line": r.line, "reason": r.reason} for r in rejections],
                "error": "nothing imported: fix the rejected rows and run again",
            }
        )
        return 1
    async with ready_database(settings) as database:
        created, updated = await import_rows(database, rows=rows)
    print_json(
        {
            "imported": len(rows),
            "created": created,
            "updated": updated,
            "unchanged": len(rows) - created - updated,
            "rejected": [],
        }
    )
    return 0
