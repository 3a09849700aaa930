"""Issue 14, point 1: every command's output on stdout, its logs (JSON) on stderr.

Run as processes, the way ``KEY=$(nango-registry api-keys create --name x)`` runs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.cli.commands import Ran, run_cli
from tests.conftest import TEST_NANGO_SECRET, TEST_SIGNING_KEY
from tests.rows import add_delivery


@pytest.fixture
def env(database_url: str, sync_engine: Engine) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "NANGO_WEBHOOK_SIGNING_KEYS": TEST_SIGNING_KEY,
        "NANGO_SECRET_KEY": TEST_NANGO_SECRET,
        "NANGO_HOST": "http://127.0.0.1:9",
        "NANGO_MAX_RETRIES": "0",
        "NANGO_TIMEOUT_SECONDS": "1",
    }


def clean(ran: Ran) -> Ran:
    """No log line on stdout, nothing but log lines (and one-line failures) on stderr."""
    assert '"level"' not in ran.out, ran.out
    ran.logs()
    return ran


def test_api_keys_print_only_the_key_and_the_table(tmp_path: Path, env: dict[str, str]) -> None:
    created = clean(run_cli("api-keys", "create", "--name", "x", cwd=tmp_path, env=env))
    assert created.code == 0
    assert created.out.count("\n") == 1
    assert created.out.startswith("nreg_")
    assert "api_key_created" in {line["event"] for line in created.logs()}
    listed = clean(run_cli("api-keys", "list", cwd=tmp_path, env=env))
    assert listed.out.splitlines()[0].split()[0] == "NAME"
    revoked = clean(run_cli("api-keys", "revoke", "x", cwd=tmp_path, env=env))
    assert revoked.out == "x revoked\n"
    taken = clean(run_cli("api-keys", "create", "--name", "x", cwd=tmp_path, env=env))
    assert (taken.code, taken.out) == (1, "")
    assert len(taken.failures()) == 1


def test_migrate_and_version(tmp_path: Path, env: dict[str, str]) -> None:
    migrated = clean(run_cli("migrate", cwd=tmp_path, env=env))
    assert (migrated.code, migrated.out) == (0, "")
    assert "migrated" in {line["event"] for line in migrated.logs()}
    version = clean(run_cli("--version", cwd=tmp_path, env=env))
    assert version.code == 0
    assert version.out.startswith("nango-registry ")
    assert version.out.split()[1][0].isdigit()


def test_deliveries_and_replay(tmp_path: Path, env: dict[str, str], sync_engine: Engine) -> None:
    failed = add_delivery(sync_engine, outcome="failed", error="KeyError: 'x'", body="{}")
    listed = clean(run_cli("deliveries", "list", "--json", cwd=tmp_path, env=env))
    assert [json.loads(line)["id"] for line in listed.out.splitlines()] == [failed]
    shown = clean(run_cli("deliveries", "show", str(failed), cwd=tmp_path, env=env))
    assert json.loads(shown.out)["error"] == "KeyError: 'x'"
    dry = clean(run_cli("replay", "--dry-run", cwd=tmp_path, env=env))
    assert dry.out.splitlines()[-1] == "1 to replay (dry run: nothing changed)"
    replayed = clean(run_cli("replay", cwd=tmp_path, env=env))
    assert json.loads(replayed.out)["replayed"] == 1


def test_import_and_reconcile_print_one_document(tmp_path: Path, env: dict[str, str]) -> None:
    csv = "integration_id,connection_id,end_user_id,organization_id\ngithub,c1,u1,\n"
    imported = clean(run_cli("import-csv", "-", cwd=tmp_path, env=env, stdin=csv))
    assert json.loads(imported.out)["created"] == 1
    # Nango is not there: the document says so, on stdout; the logs stay on stderr.
    reconciled = clean(run_cli("reconcile", cwd=tmp_path, env=env))
    assert reconciled.code == 1
    assert "error" in json.loads(reconciled.out)


def test_simulate_prints_what_it_sent(tmp_path: Path, env: dict[str, str]) -> None:
    nobody = "http://127.0.0.1:9/webhooks/nango"
    ran = clean(run_cli("simulate", "creation", "--url", nobody, cwd=tmp_path, env=env))
    assert ran.code == 1
    assert ran.out.splitlines()[0] == f"POST {nobody}"
    assert json.loads(ran.out.splitlines()[1])["operation"] == "creation"
    (failure,) = ran.failures()
    assert "is the service running" in failure
