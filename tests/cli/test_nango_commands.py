"""``nango-registry import-csv`` and ``nango-registry reconcile`` against a real database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlmodel import SQLModel

from app.cli import main
from app.cli.nango_commands import reconcile_command
from app.settings import Settings
from tests.conftest import TEST_API_KEY
from tests.fakes.nango import FakeNango
from tests.rows import add_connection, all_connections, connection_row, history

RUNS = SQLModel.metadata.tables["reconcile_runs"]


@pytest.fixture
def cli_env(cli_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_API_KEYS", TEST_API_KEY)
    monkeypatch.setenv("NANGO_ENVIRONMENT", "prod")


def run_import(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["import-csv", str(path)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    report: dict[str, Any] = json.loads(lines[-1])
    return code, report


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "legacy.csv"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.usefixtures("cli_env")
def test_import_csv_happy_path_then_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sync_engine: Engine
) -> None:
    add_connection(sync_engine, connection_id="user-3", end_user_id=None, organization_id=None)
    path = write(
        tmp_path,
        "integration_id,connection_id,end_user_id,organization_id,environment\n"
        "github,user-1,user-1,org-1,\n"
        "slack,user-1,user-1,,dev\n"
        'github,"user, with comma",user-2,org-2,prod\n'
        "github,user-3,user-3,org-3,\n",
    )
    code, report = run_import(path, capsys)
    assert code == 0, report
    assert report == {"imported": 4, "created": 3, "updated": 1, "unchanged": 0, "rejected": []}
    rows = all_connections(sync_engine)
    assert rows["prod", "github", "user-1"].end_user_id == "user-1"
    assert rows["prod", "github", "user-1"].organization_id == "org-1"
    assert rows["dev", "slack", "user-1"].organization_id is None
    assert rows["prod", "github", "user, with comma"].end_user_id == "user-2"
    assert rows["prod", "github", "user-3"].organization_id == "org-3"
    assert {e.source for e in history(sync_engine)} == {"import"}

    code, report = run_import(path, capsys)
    assert code == 0
    assert (report["created"], report["updated"], report["unchanged"]) == (0, 0, 4)


@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("github,,user-9,org-9", "connection_id is empty"),
        (",c9,user-9,org-9", "integration_id is empty"),
        ("github,c9,,", "both empty"),
        ("github,c9,user-9", "fewer fields"),
        ("github,c9,user-9,org-9,prod,extra", "more fields"),
        ("github,c1,user-1,org-1", "duplicate of line 2"),
    ],
)
def test_one_bad_row_imports_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sync_engine: Engine,
    row: str,
    reason: str,
) -> None:
    path = write(
        tmp_path,
        "integration_id,connection_id,end_user_id,organization_id\n"
        "github,c1,user-1,org-1\n"
        "github,c2,user-2,org-2\n" + row + "\n",
    )
    code, report = run_import(path, capsys)
    assert code == 1
    assert report["imported"] == 0
    assert report["valid"] == 2
    [rejected] = report["rejected"]
    assert rejected["line"] == 4
    assert reason in rejected["reason"]
    assert all_connections(sync_engine) == {}


@pytest.mark.usefixtures("cli_env")
def test_every_bad_row_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sync_engine: Engine
) -> None:
    path = write(
        tmp_path,
        "integration_id,connection_id,end_user_id,organization_id,environment\n"
        "github,c1,user-1,org-1,prod\n"
        "github,c2,user-2,org-2,not an env!\n"
        "github,c3\x01,user-3,org-3,prod\n"
        "github,c1,user-1,org-1,\n",
    )
    code, report = run_import(path, capsys)
    assert code == 1
    assert [r["line"] for r in report["rejected"]] == [3, 4, 5]
    assert "environment" in report["rejected"][0]["reason"]
    assert "control characters" in report["rejected"][1]["reason"]
    assert "duplicate of line 2" in report["rejected"][2]["reason"]
    assert all_connections(sync_engine) == {}


@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("integration_id,connection_id,end_user_id", "missing column(s) organization_id"),
        (
            "integration_id,connection_id,end_user_id,organisation_id",
            "unknown column(s) organisation_id",
        ),
    ],
)
def test_bad_header_imports_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sync_engine: Engine,
    header: str,
    problem: str,
) -> None:
    path = write(tmp_path, header + "\ngithub,c1,user-1,org-1\n")
    code, report = run_import(path, capsys)
    assert code == 1
    assert problem in report["error"]
    assert all_connections(sync_engine) == {}


@pytest.mark.usefixtures("cli_env")
def test_empty_file_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = run_import(write(tmp_path, ""), capsys)
    assert code == 1
    assert "missing column" in report["error"]
    code, report = run_import(tmp_path / "nope.csv", capsys)
    assert code == 1
    assert "cannot read" in report["error"]


@pytest.mark.anyio
async def test_cli_reconcile_prints_counts(
    make_settings: Any, sync_engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeNango()
    fake.add_connection(connection_id="new-one", tags={"end_user_id": "u1"})
    add_connection(
        sync_engine, connection_id="gone", updated_at=datetime.now(UTC) - timedelta(hours=1)
    )
    settings: Settings = make_settings()
    code = await reconcile_command(settings, transport=fake.transport())
    assert code == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert printed["counts"] == {
        "seen": 1,
        "created": 1,
        "updated": 0,
        "deleted": 1,
        "unattributed": 0,
        "details": 1,
    }
    assert connection_row(sync_engine, "new-one").end_user_id == "u1"
    with sync_engine.connect() as conn:
        assert conn.execute(select(RUNS.c.trigger)).scalar_one() == "cli"


@pytest.mark.anyio
async def test_cli_reconcile_reports_nango_failure(
    make_settings: Any, sync_engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeNango(secret_key="another-key")
    code = await reconcile_command(make_settings(), transport=fake.transport())
    assert code == 1
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert "401" in printed["error"]
    assert "test-nango-secret-key" not in printed["error"]
