"""The ``nango-registry`` console script. Each subcommand lives in its own module here.

Every command writes its result on stdout and nothing else; logs are JSON lines on stderr, and
a failure is one line on stderr (``nango-registry: ...``) with a non-zero exit status. A
database that is missing, unreachable or not migrated is such a line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError

from app import __version__
from app.cli import (
    api_keys,
    database,
    deliveries,
    nango_commands,
    replay,
    serve,
    simulate,
    subscriptions,
)
from app.cli.output import fail
from app.db.readiness import DatabaseNotReady, describe_error
from app.errors import DATABASE_UNAVAILABLE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nango-registry",
        description="Own the link between your users and their Nango connections.",
    )
    parser.add_argument("--version", action="version", version=f"nango-registry {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (
        serve,
        database,
        replay,
        deliveries,
        api_keys,
        nango_commands,
        simulate,
        subscriptions,
    ):
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except DatabaseNotReady as problem:
        return fail(problem.reason)
    except Exception as error:
        if not isinstance(error, (*DATABASE_UNAVAILABLE, DBAPIError)):
            raise
        return fail(f"the database is unavailable: {describe_error(error)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
