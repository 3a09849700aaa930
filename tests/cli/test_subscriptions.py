"""``nango-registry subscriptions ...``: the same operations as the API, on stdout."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine

from app.cli import main
from tests import secret_scan
from tests.api.test_subscriptions import add_attempts
from tests.conftest import TEST_SECRET


@pytest.fixture
def cli_env(cli_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_KEY", TEST_SECRET)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["subscriptions", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.usefixtures("cli_env")
def test_create_list_show_pause_resume_delete(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "create", "--url", "http://billing.internal/hook",
        "--event-type", "connection.created", "--event-type", "connection.deleted",
        "--end-user-id", "u1",
    )  # fmt: skip
    assert code == 0
    created = json.loads(out)
    secret_scan.register_secret(created["secret"])
    assert created["secret"].startswith("whsec_")
    assert created["event_types"] == ["connection.created", "connection.deleted"]
    assert created["filters"]["end_user_id"] == "u1"
    ident = str(created["id"])

    code, out, _ = run(capsys, "list")
    assert code == 0
    assert "connection.created,connection.deleted" in out
    assert "end_user_id=u1" in out
    assert "http://billing.internal/hook" in out

    assert run(capsys, "pause", ident)[:2] == (0, f"subscription {ident} paused\n")
    code, out, _ = run(capsys, "show", ident)
    assert json.loads(out)["status"] == "paused"
    assert "secret" not in json.loads(out)
    assert run(capsys, "resume", ident)[:2] == (0, f"subscription {ident} resumed\n")
    assert run(capsys, "delete", ident)[:2] == (0, f"subscription {ident} deleted\n")
    for action in ("show", "pause", "delete", "attempts"):
        code, _, err = run(capsys, action, ident)
        assert code == 1
        assert f"no subscription {ident}" in err
    assert run(capsys, "replay", ident, "--after", "0")[0] == 1


@pytest.mark.usefixtures("cli_env")
def test_attempts_and_replay(capsys: pytest.CaptureFixture[str], sync_engine: Engine) -> None:
    code, out, _ = run(capsys, "create", "--url", "http://billing.internal/hook")
    created = json.loads(out)
    secret_scan.register_secret(created["secret"])
    add_attempts(sync_engine, created["id"], 2)
    code, out, _ = run(capsys, "attempts", str(created["id"]), "--limit", "1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("ID")
    assert len(lines) == 2
    assert "succeeded" in lines[1]
    assert run(capsys, "attempts", str(created["id"]), "--limit", "0")[0] == 1
    assert run(capsys, "replay", str(created["id"]), "--after", "-1")[0] == 1


@pytest.mark.usefixtures("cli_env")
def test_create_refuses_bad_urls_and_a_missing_secret_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "create", "--url", "ftp://x")
    assert code == 1
    assert "--url" in err
    monkeypatch.delenv("SECRET_KEY")
    code, _, err = run(capsys, "create", "--url", "http://billing.internal/hook")
    assert code == 1
    assert "SECRET_KEY" in err
