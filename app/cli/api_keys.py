"""``nango-registry api-keys create|list|revoke``: API keys kept in the database.

A new key is printed once, on stdout, and only its SHA-256 is stored; ``list`` never shows a
hash. A revocation takes effect on every running instance within seconds (``app.api.keys``).
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime
from typing import Any

from app.api.keys import (
    KEY_NAME_RULE,
    StoredKey,
    create_api_key,
    list_api_keys,
    revoke_api_key,
    valid_key_name,
)
from app.cli.output import fail
from app.db.readiness import ready_database
from app.logs import configure_logging, get_logger
from app.settings import Settings, load_settings

log = get_logger(__name__)


def register(commands: Any) -> None:
    parser = commands.add_parser("api-keys", help="create, list and revoke lookup-API keys")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="who uses the key (unique, shown in logs)")
    create.add_argument(
        "--read-only", action="store_true", help="the key may read but not change state"
    )
    create.set_defaults(handler=run_create)

    listing = actions.add_parser("list", help="list keys (never their secrets)")
    listing.set_defaults(handler=run_list)

    revoke = actions.add_parser("revoke", help="revoke a key by name, effective immediately")
    revoke.add_argument("name")
    revoke.set_defaults(handler=run_revoke)


def _settings() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_level)
    return settings


def run_create(args: argparse.Namespace) -> int:
    if not valid_key_name(args.name):
        return fail(f"--name: {KEY_NAME_RULE}")
    key = asyncio.run(_create(_settings(), name=args.name, read_only=args.read_only))
    if key is None:
        return fail(f"a key named {args.name!r} exists (names are never reused); pick another")
    log.info("api_key_created", name=args.name, read_only=args.read_only)
    print(key)
    return 0


def run_list(args: argparse.Namespace) -> int:
    rows = asyncio.run(_list(_settings()))
    print(f"{'NAME':<32} {'READ_ONLY':<9} {'CREATED_AT':<25} {'LAST_USED_AT':<25} REVOKED_AT")
    for row in rows:
        created, used, revoked = (
            _when(row.created_at),
            _when(row.last_used_at),
            _when(row.revoked_at),
        )
        print(f"{row.name:<32} {str(row.read_only).lower():<9} {created:<25} {used:<25} {revoked}")
    return 0


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def run_revoke(args: argparse.Namespace) -> int:
    outcome = asyncio.run(_revoke(_settings(), name=args.name))
    if outcome == "unknown":
        return fail(f"no key named {args.name!r}")
    if outcome == "already":
        print(f"{args.name} was already revoked")
        return 0
    log.info("api_key_revoked", name=args.name)
    print(f"{args.name} revoked")
    return 0


async def _create(settings: Settings, *, name: str, read_only: bool) -> str | None:
    async with ready_database(settings) as database:
        return await create_api_key(database, name=name, read_only=read_only)


async def _list(settings: Settings) -> list[StoredKey]:
    async with ready_database(settings) as database:
        return await list_api_keys(database)


async def _revoke(settings: Settings, *, name: str) -> str:
    async with ready_database(settings) as database:
        return await revoke_api_key(database, name=name)
