"""``nango-registry subscriptions create|list|show|pause|resume|delete|attempts|replay``.

The same operations as ``/v1/subscriptions``, straight on the database. Output goes to stdout
(JSON for one subscription, tables for lists); logs go to stderr. ``create`` prints the secret
once: it is derived from ``SECRET_KEY`` and cannot be shown again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from app.api.shapes import MAX_REPLAY, subscription_json
from app.db.database import Database, connected
from app.logs import configure_logging, get_logger
from app.settings import Settings, load_settings
from app.subscriptions import store
from app.subscriptions.model import EVENT_TYPES, SubscriptionStatus, check_url

log = get_logger(__name__)
T = TypeVar("T")


def register(commands: Any) -> None:
    parser = commands.add_parser("subscriptions", help="push connection events to a URL")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="subscribe a URL and print its secret once")
    create.add_argument("--url", required=True)
    create.add_argument(
        "--event-type",
        action="append",
        choices=EVENT_TYPES,
        dest="event_types",
        help="only this type (repeat for several; default every type)",
    )
    for name in store.FILTER_FIELDS:
        create.add_argument(f"--{name.replace('_', '-')}", help=f"only events whose {name} is this")
    create.set_defaults(handler=run_create)

    actions.add_parser("list", help="list subscriptions").set_defaults(handler=run_list)
    for action, handler, text in (
        ("show", run_show, "show one subscription"),
        ("pause", run_pause, "stop sending; deliveries queue up"),
        ("resume", run_resume, "send again (a disabled subscription too)"),
        ("delete", run_delete, "delete with its queue and attempts"),
    ):
        command = actions.add_parser(action, help=text)
        command.add_argument("id", type=int)
        command.set_defaults(handler=handler)

    attempts = actions.add_parser("attempts", help="requests sent to a subscriber, newest first")
    attempts.add_argument("id", type=int)
    attempts.add_argument("--limit", type=int, default=50)
    attempts.set_defaults(handler=run_attempts)

    replay = actions.add_parser("replay", help="send the events after an event ID again")
    replay.add_argument("id", type=int)
    replay.add_argument("--after", type=int, required=True, help="an event ID (0: every event)")
    replay.add_argument("--limit", type=int, default=MAX_REPLAY)
    replay.set_defaults(handler=run_replay)


def _settings() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_level)
    return settings


def _fail(message: str) -> int:
    print(f"nango-registry: {message}", file=sys.stderr)
    return 1


def _run(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    async def go() -> T:
        async with connected(settings) as database:
            return await work(database)

    return asyncio.run(go())


def _print_json(value: Any) -> None:
    print(json.dumps(value, default=str, indent=2, sort_keys=True))


def run_create(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings.secret_key is None:
        return _fail("set SECRET_KEY (the service's): subscription secrets are derived from it")
    problem = check_url(args.url, require_https=settings.subscription_require_https)
    if problem:
        return _fail(f"--url: {problem}")
    filters = {name: getattr(args, name) for name in store.FILTER_FIELDS}
    created = _run(
        settings,
        lambda database: store.create_subscription(
            database,
            secret_key=settings.secret_key.get_secret_value(),  # type: ignore[union-attr]
            url=args.url,
            event_types=sorted(set(args.event_types)) if args.event_types else None,
            filters=filters,
        ),
    )
    log.info("subscription_created", subscription_id=created.subscription.id)
    _print_json({**subscription_json(created.subscription), "secret": created.secret})
    return 0


def run_list(args: argparse.Namespace) -> int:
    found = _run(_settings(), store.list_subscriptions)
    print(f"{'ID':<6} {'STATUS':<9} {'EVENT_TYPES':<24} {'FILTERS':<30} URL")
    for item in found:
        types = ",".join(item.event_types) if item.event_types else "*"
        filters = ",".join(
            f"{name}={getattr(item, name)}"
            for name in store.FILTER_FIELDS
            if getattr(item, name) is not None
        )
        print(f"{item.id:<6} {item.status:<9} {types:<24} {filters or '-':<30} {item.url}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    found = _run(_settings(), lambda database: store.get_subscription(database, args.id))
    if found is None:
        return _fail(f"no subscription {args.id}")
    _print_json(subscription_json(found))
    return 0


def _set_status(args: argparse.Namespace, status: SubscriptionStatus) -> int:
    updated = _run(
        _settings(),
        lambda database: store.update_subscription(database, args.id, {"status": status}),
    )
    if updated is None:
        return _fail(f"no subscription {args.id}")
    log.info("subscription_updated", subscription_id=args.id, status=status)
    print(f"subscription {args.id} {'resumed' if status == 'active' else status}")
    return 0


def run_pause(args: argparse.Namespace) -> int:
    return _set_status(args, SubscriptionStatus.PAUSED)


def run_resume(args: argparse.Namespace) -> int:
    return _set_status(args, SubscriptionStatus.ACTIVE)


def run_delete(args: argparse.Namespace) -> int:
    deleted = _run(_settings(), lambda database: store.delete_subscription(database, args.id))
    if deleted is None:
        return _fail(f"no subscription {args.id}")
    log.info("subscription_deleted", subscription_id=args.id)
    print(f"subscription {args.id} deleted")
    return 0


def run_attempts(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 500:
        return _fail("--limit: 1 to 500")
    settings = _settings()

    async def read(database: Database) -> Any:
        if await store.get_subscription(database, args.id) is None:
            return None
        return await store.list_attempts(
            database, subscription_id=args.id, before=None, limit=args.limit
        )

    attempts = _run(settings, read)
    if attempts is None:
        return _fail(f"no subscription {args.id}")
    print(
        f"{'ID':<8} {'EVENT':<8} {'TRY':<4} {'ATTEMPTED_AT':<26} {'OUTCOME':<10} CODE  MS     ERROR"
    )
    for item in attempts:
        when = item.attempted_at.isoformat(timespec="seconds")
        code = "-" if item.status_code is None else str(item.status_code)
        print(
            f"{item.id:<8} {item.event_id:<8} {item.try_number:<4} {when:<26}"
            f" {item.outcome:<10} {code:<5} {item.latency_ms:<6} {item.error or '-'}"
        )
    return 0


def run_replay(args: argparse.Namespace) -> int:
    if args.after < 0 or not 1 <= args.limit <= MAX_REPLAY:
        return _fail(f"--after: 0 or more; --limit: 1 to {MAX_REPLAY}")
    replayed = _run(
        _settings(),
        lambda database: store.replay(
            database, subscription_id=args.id, after=args.after, limit=args.limit
        ),
    )
    if replayed is None:
        return _fail(f"no subscription {args.id}")
    log.info("subscription_replay", subscription_id=args.id, queued=replayed.queued)
    _print_json({"queued": replayed.queued, "last_event_id": replayed.last_event_id})
    return 0
