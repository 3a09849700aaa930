"""Fixtures for the reliability tests (issue 8).

``RELIABILITY=long`` (``make reliability``) runs the long versions: real Nango retry delays,
longer loads, thousands of fuzz cases. Otherwise (``make test``) each test runs a short version.
The tests that own a Postgres cluster run in the ``TEST_DB=postgres`` pass only: they never use
the suite's database, so running them twice would prove nothing more.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.db import migrate
from app.settings import normalise_database_url
from tests import secret_scan
from tests.reliability.pgcluster import PgCluster, find_bindir

LONG = os.environ.get("RELIABILITY", "short").lower() == "long"
MODE = "long" if LONG else "short"
RESULTS_DIR = Path(__file__).resolve().parents[2] / "build" / "reliability"


def postgres_pass_only(
    reason: str = "runs in the TEST_DB=postgres pass only (it owns its own Postgres cluster)",
) -> Any:
    return pytest.mark.skipif(os.environ.get("TEST_DB", "sqlite") != "postgres", reason=reason)


def write_results(name: str, results: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{MODE}.json"
    path.write_text(json.dumps({"mode": MODE, **results}, indent=2) + "\n")
    print(f"\n{name} ({MODE}): {json.dumps(results)}")
    return path


@pytest.fixture(scope="module")
def pgcluster() -> Iterator[PgCluster]:
    """A migrated database in a throwaway Postgres cluster, stopped and removed afterwards."""
    bindir = find_bindir()
    if bindir is None:
        message = "Postgres server binaries (initdb, pg_ctl) not found"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: a failure)")
        pytest.skip(message)
    cluster = PgCluster(bindir=bindir)
    secret_scan.register_database_url(cluster.url)
    try:
        cluster.init()
        cluster.start()
        cluster.create_database()
        migrate.upgrade(normalise_database_url(cluster.url))
        yield cluster
    finally:
        cluster.destroy()
