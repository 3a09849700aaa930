"""Issue 14, point 2: a database that is missing, unreachable or not migrated is one clear line,
from every command and from ``serve`` (whose /readyz says the same), and only ``migrate``
creates a SQLite file."""

from __future__ import annotations

import json
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from app.db.database import DatabaseTimeout
from app.db.readiness import NO_SCHEMA, describe_error
from tests.cli.commands import Ran, run_cli
from tests.conftest import DEFAULT_TEST_DATABASE_URL, TEST_API_KEY
from tests.serve import serving, stop, suite_settings

# Every command that reads or writes the database.
COMMANDS = [
    ("api-keys", "list"),
    ("api-keys", "create", "--name", "x"),
    ("api-keys", "revoke", "x"),
    ("replay",),
    ("replay", "--dry-run"),
    ("deliveries", "list"),
    ("deliveries", "show", "1"),
    ("reconcile",),
    ("import-csv", "-"),
]
CSV = "integration_id,connection_id,end_user_id,organization_id\ngithub,c1,u1,\n"
UNREACHABLE = "postgresql://postgres@127.0.0.1:9/registry"


def one_line(ran: Ran) -> str:
    assert ran.code == 1, ran
    assert ran.out == ""
    assert "Traceback" not in ran.err
    (line,) = ran.failures()
    ran.logs()
    return line


def every_command(tmp_path: Path, env: dict[str, str]) -> set[str]:
    env = {"NANGO_SECRET_KEY": "k", "DATABASE_POOL_TIMEOUT_SECONDS": "1", **env}
    # At once: each is a process that mostly starts up and waits (~2 s), and none sees another.
    with ThreadPoolExecutor(len(COMMANDS)) as pool:
        ran = pool.map(lambda argv: run_cli(*argv, cwd=tmp_path, env=env, stdin=CSV), COMMANDS)
        return {one_line(each) for each in ran}


def test_a_missing_sqlite_file_is_named_and_not_created(tmp_path: Path) -> None:
    """The default DATABASE_URL from another directory: the file there is not made."""
    lines = every_command(tmp_path, {})
    path = tmp_path / "nango-registry.db"
    assert lines == {
        f'nango-registry: database file "{path}" does not exist:'
        " run nango-registry migrate (or check DATABASE_URL)"
    }
    assert not path.exists()
    assert run_cli("migrate", cwd=tmp_path).code == 0
    assert path.exists()


def test_an_unmigrated_sqlite_file_says_run_migrate(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "nango-registry.db").close()
    assert every_command(tmp_path, {}) == {f"nango-registry: {NO_SCHEMA}"}


def test_an_unreachable_postgres_names_where_and_why(tmp_path: Path) -> None:
    expected = "cannot reach Postgres at 127.0.0.1:9: Connection refused"
    assert every_command(tmp_path, {"DATABASE_URL": UNREACHABLE}) == {f"nango-registry: {expected}"}
    migrate = one_line(run_cli("migrate", cwd=tmp_path, env={"DATABASE_URL": UNREACHABLE}))
    assert migrate == f"nango-registry: the database is unavailable: {expected}"


@pytest.mark.skipif(os.environ.get("TEST_DB") != "postgres", reason="the Postgres pass only")
def test_a_postgres_database_that_does_not_exist(tmp_path: Path) -> None:
    admin = os.environ.get("TEST_DATABASE_URL") or DEFAULT_TEST_DATABASE_URL
    missing = admin.rpartition("/")[0] + "/nango_registry_never_created"
    lines = every_command(tmp_path, {"DATABASE_URL": missing})
    assert lines == {'nango-registry: database "nango_registry_never_created" does not exist'}


def test_serve_starts_and_readyz_says_why(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'absent.db'}"
    with serving(suite_settings(url), cwd=tmp_path) as server:
        status, body = server.request("GET", "/readyz")
        lookup_status, lookup = server.request(
            "GET", "/v1/connections", headers={"Authorization": f"Bearer {TEST_API_KEY}"}
        )
        stop(server)
        logs = server.lines()
    reason = json.loads(body)["reason"]
    assert (status, reason.split(":")[0]) == (
        503,
        f'database file "{tmp_path / "absent.db"}" does not exist',
    )
    assert "run nango-registry migrate" in reason
    assert [line["reason"] for line in logs if line["event"] == "database_not_ready"] == [reason]
    assert not (tmp_path / "absent.db").exists()
    # A request that needs the database: 503, and the log line names the cause.
    assert (lookup_status, json.loads(lookup)["error"]["code"]) == (503, "database_unavailable")
    causes = [line["cause"] for line in logs if line["event"] == "database_unavailable"]
    assert causes
    assert all("does not exist" in cause for cause in causes)


def test_descriptions_drop_the_drivers_wrapping() -> None:
    def postgres(text: str) -> str:
        return describe_error(psycopg.OperationalError(text))

    assert (
        postgres(
            'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL: '
            ' database "x" does not exist'
        )
        == 'database "x" does not exist'
    )
    assert (
        postgres(
            'connection failed: connection to server at "db" (10.0.0.2), port 5433 failed:'
            " Connection refused\n\tIs the server running on that host?"
        )
        == "cannot reach Postgres at db:5433: Connection refused"
    )
    assert (
        postgres('connection failed: connection to server on socket "/run/pg" failed: No such file')
        == "cannot reach Postgres at /run/pg: No such file"
    )
    assert postgres("failed to resolve host 'h'") == "failed to resolve host 'h'"
    assert describe_error(sqlite3.OperationalError("no such table: connections")) == NO_SCHEMA
    assert describe_error(DatabaseTimeout("timed out")) == "timed out"
    assert describe_error(RuntimeError("odd\nmore")) == "RuntimeError: odd"
