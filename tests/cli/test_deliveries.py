"""``nango-registry deliveries list|show`` and ``replay --dry-run``, in process."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from app.cli import main
from tests.rows import add_delivery

START = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def stored(sync_engine: Engine) -> list[int]:
    return [
        add_delivery(sync_engine, received_at=START),
        add_delivery(
            sync_engine,
            received_at=START + timedelta(minutes=1),
            outcome="failed",
            error="KeyError: 'tags'\nTraceback...",
            connection_id="c-2",
        ),
        add_delivery(
            sync_engine,
            received_at=START + timedelta(minutes=2),
            webhook_type="sync",
            operation=None,
            success=None,
            outcome="recorded",
        ),
    ]


def out(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> list[str]:
    assert main(list(argv)) == code
    return capsys.readouterr().out.splitlines()


@pytest.mark.usefixtures("cli_env")
def test_list_as_a_table_and_as_json(stored: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    table = out(capsys, "deliveries", "list")
    assert table[0].split() == [
        "ID", "RECEIVED_AT", "TYPE", "OPERATION", "SUCCESS", "CONNECTION", "OUTCOME", "ERROR"
    ]  # fmt: skip
    assert [line.split()[0] for line in table[1:]] == [str(i) for i in stored[::-1]]
    assert table[1].split()[2:] == ["sync", "-", "-", "conn-1", "recorded", "-"]
    failed_row = table[2].split()
    assert failed_row[-3:] == ["failed", "KeyError:", "'tags'"]
    as_json = [json.loads(line) for line in out(capsys, "deliveries", "list", "--json")]
    assert [item["id"] for item in as_json] == stored[::-1]
    assert "body" not in as_json[0]


@pytest.mark.usefixtures("cli_env")
def test_filters_and_pages(stored: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    def ids(*argv: str) -> list[int]:
        return [
            json.loads(line)["id"] for line in out(capsys, "deliveries", "list", "--json", *argv)
        ]

    assert ids("--outcome", "failed") == [stored[1]]
    assert ids("--type", "sync") == [stored[2]]
    assert ids("--connection", "c-2") == [stored[1]]
    assert ids("--integration", "github", "--environment", "prod") == stored[::-1]
    assert ids("--since", "2026-11-01T00:01:00", "--until", "2026-11-01T00:02:00+00:00") == [
        stored[1]
    ]
    first = out(capsys, "deliveries", "list", "--limit", "2")
    assert first[-1] == f"(more: add --after {stored[1]})"
    assert ids("--limit", "2", "--after", str(stored[1])) == [stored[0]]


@pytest.mark.usefixtures("cli_env")
def test_bad_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--limit", "0"], ["--since", "yesterday"], ["--outcome", "lost"]):
        with pytest.raises(SystemExit):
            main(["deliveries", "list", *argv])
    assert "is not an ISO 8601 time" in capsys.readouterr().err


@pytest.mark.usefixtures("cli_env")
def test_show_one(stored: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    shown = json.loads("\n".join(out(capsys, "deliveries", "show", str(stored[1]))))
    assert shown["outcome"] == "failed"
    assert shown["body"] == '{"type":"auth"}'
    assert shown["headers"] == {"content-type": "application/json"}
    assert main(["deliveries", "show", "999999"]) == 1
    assert capsys.readouterr() == ("", "nango-registry: no delivery 999999\n")


@pytest.mark.usefixtures("cli_env")
def test_replay_dry_run_lists_and_changes_nothing(
    stored: list[int], capsys: pytest.CaptureFixture[str], sync_engine: Engine
) -> None:
    dry = out(capsys, "replay", "--dry-run")
    assert [line.split()[0] for line in dry[1:-1]] == [str(stored[1])]
    assert dry[-1] == "1 to replay (dry run: nothing changed)"
    everything = out(capsys, "replay", "--dry-run", "--all")
    assert [line.split()[0] for line in everything[1:-1]] == [str(i) for i in stored]
    after = out(capsys, "replay", "--dry-run", "--all", "--after-id", str(stored[0]))
    assert after[-1] == "2 to replay (dry run: nothing changed)"
    assert out(capsys, "replay", "--dry-run")[-1] == "1 to replay (dry run: nothing changed)"


def test_a_missing_database_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["deliveries", "list"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.endswith("run nango-registry migrate (or check DATABASE_URL)\n")
    assert not (tmp_path / "nango-registry.db").exists()
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:9/x")
    monkeypatch.setenv("DATABASE_POOL_TIMEOUT_SECONDS", "0.5")
    assert main(["migrate"]) == 1
    assert capsys.readouterr().err == (
        "nango-registry: the database is unavailable:"
        " cannot reach Postgres at 127.0.0.1:9: Connection refused\n"
    )
