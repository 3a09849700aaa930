"""Test fixtures: a real, migrated database (SQLite or Postgres) and the app over HTTP.

``TEST_DB=sqlite`` (default) uses a file in a temporary directory. ``TEST_DB=postgres`` creates a
throwaway database on ``TEST_DATABASE_URL`` (default: the local server), migrates it with Alembic
and drops it at the end. Without a reachable Postgres the run stops with a loud message and exit
code 0, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import psycopg
import pytest
from sqlalchemy import Engine, create_engine, text
from starlette.testclient import TestClient

from app.application import create_app
from app.db import migrate
from app.db.database import Database, connected
from app.settings import Settings, normalise_database_url
from tests.fakes.nango import CREDENTIAL_MARKER, FakeNango

# Property-based tests explore new inputs on every local run; under CI=true they replay a fixed
# sequence, so that a landing is judged by the code, not by the draw (a local run that finds a
# failure keeps it in .hypothesis/ and replays it first).
hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() == "true":
    hypothesis.settings.load_profile("ci")

DEFAULT_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TEST_SIGNING_KEY = "5f3c0f0e-9a4b-4b8e-9d7c-2a1b3c4d5e6f"  # the key of webhook-vectors.json
TEST_API_KEY = "test-full-access-key-0123456789abcdef"
TEST_NANGO_SECRET = "test-nango-secret-key"
TEST_SECRET = "test-secret-key"
TABLES = (
    "subscription_attempts",
    "subscription_deliveries",
    "subscriptions",
    "connection_events",
    "connection_tags",
    "deliveries",
    "connections",
    "api_keys",
    "reconcile_runs",
    "leases",
    "feed_events",
    "connect_sessions",
)

# The sequences behind TABLES' identity and serial columns, each set back to its start.
RESTART_SEQUENCES = text(
    """
    SELECT setval(s.seqrelid, s.seqstart, false)
    FROM pg_sequence s
    JOIN pg_depend d ON d.objid = s.seqrelid AND d.classid = 'pg_class'::regclass
        AND d.deptype IN ('a', 'i')
    JOIN pg_class t ON t.oid = d.refobjid
    WHERE t.relname = ANY(:tables)
    """
)


def pytest_configure(config: pytest.Config) -> None:
    # Issue 8: every log line of the session is checked for these secrets when it ends.
    from app.logs import configure_logging
    from tests import secret_scan

    secret_scan.register_secret(TEST_SIGNING_KEY, TEST_API_KEY, TEST_NANGO_SECRET, TEST_SECRET)
    # Every credential the fake Nango hands out starts with the marker: none may reach a log line.
    secret_scan.register_secret(CREDENTIAL_MARKER)
    secret_scan.register_database_url(os.environ.get("TEST_DATABASE_URL") or "")
    config.pluginmanager.register(secret_scan.SecretScanPlugin(), "secret-scan")
    # As the service logs: JSON lines on (the current) standard error.
    configure_logging("info")


def _backend() -> str:
    backend = os.environ.get("TEST_DB", "sqlite")
    if backend not in {"sqlite", "postgres"}:
        raise pytest.UsageError("TEST_DB must be sqlite or postgres")
    return backend


def _conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1).replace(
        "postgres://", "postgresql://", 1
    )


def _create_postgres_database() -> tuple[str, str]:
    """Create a throwaway database; return (its URL, the admin URL used to drop it)."""
    admin = _conninfo(os.environ.get("TEST_DATABASE_URL") or DEFAULT_TEST_DATABASE_URL)
    name = f"nango_registry_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as error:
        banner = "\n" + "!" * 78 + "\n"
        message = (
            f"{banner}POSTGRES UNREACHABLE at {admin.split('@')[-1]}: {error}".rstrip()
            + "\nThe Postgres half of the suite did NOT run."
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.exit(message + "\nCI=true: a missing Postgres is a failure." + banner, 3)
        pytest.exit(message + "\nSkipped (set CI=true to make this fail)." + banner, 0)
    base, _, _ = admin.rpartition("/")
    return f"{base}/{name}", admin


def _drop_postgres_database(url: str, admin: str) -> None:
    name = url.rpartition("/")[2]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The async URL of a database migrated to head, for the whole session."""
    if _backend() == "sqlite":
        path: Path = tmp_path_factory.mktemp("db") / "registry.db"
        url = normalise_database_url(f"sqlite:///{path}")
        migrate.upgrade(url)
        yield url
        return
    raw, admin = _create_postgres_database()
    url = normalise_database_url(raw)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        _drop_postgres_database(raw, admin)


@pytest.fixture(scope="session")
def sync_engine(database_url: str) -> Iterator[Engine]:
    """A synchronous engine on the test database, for arranging and inspecting rows."""
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(autouse=True)
def _clean_database(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "sync_engine" not in request.fixturenames:
        return
    empty_tables(request.getfixturevalue("sync_engine"))


def empty_tables(engine: Engine) -> None:
    """Every row gone and the ids starting again at 1, as after migrating.

    DELETE, children first, on both databases: on Postgres a TRUNCATE of these tables costs
    ~75 ms a test (new files for every table and index), DELETE of a test's rows ~2 ms.
    """
    with engine.begin() as conn:
        for table in TABLES:
            conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608 (fixed table names)
        if engine.dialect.name == "postgresql":
            conn.execute(RESTART_SEQUENCES, {"tables": list(TABLES)})


@pytest.fixture
def make_settings(database_url: str, sync_engine: Engine) -> Any:
    """Build Settings for the test database; keyword arguments override the defaults."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "secret_key": TEST_SECRET,
            "nango_webhook_signing_keys": TEST_SIGNING_KEY,
            "registry_api_keys": TEST_API_KEY,
            "nango_host": "http://nango.test",
            "nango_secret_key": TEST_NANGO_SECRET,
            "_env_file": None,
        }
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def settings(make_settings: Any) -> Settings:
    result: Settings = make_settings()
    return result


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_API_KEY}"}


@pytest.fixture
def fake_nango() -> FakeNango:
    return FakeNango(secret_key=TEST_NANGO_SECRET)


@pytest.fixture
def make_client(make_settings: Any, fake_nango: FakeNango) -> Iterator[Any]:
    """The app over HTTP, its Nango client wired to the fake through the create_app seam."""
    opened: list[TestClient] = []

    def build(**overrides: Any) -> TestClient:
        values = {"nango_timeout_seconds": 1.0, "nango_max_retries": 2, **overrides}
        app = create_app(make_settings(**values), nango_transport=fake_nango.transport())
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield build
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def api(make_client: Any) -> TestClient:
    client: TestClient = make_client()
    return client


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def database(settings: Settings, sync_engine: Engine) -> AsyncIterator[Database]:
    """The service's own data layer on the test database (for calling its functions directly)."""
    async with connected(settings) as database:
        yield database
