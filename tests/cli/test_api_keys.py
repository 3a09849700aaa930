from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.api.keys import REFRESH_SECONDS
from app.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.usefixtures("cli_env")
def test_create_list_revoke(
    client: TestClient, sync_engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "api-keys", "create", "--name", "billing")
    assert code == 0
    key = out.strip()
    assert key.startswith("nreg_")
    assert len(key) > 40
    code, out, _ = run(capsys, "api-keys", "create", "--name", "dashboard", "--read-only")
    read_only_key = out.strip()

    with sync_engine.connect() as conn:
        stored = conn.execute(text("SELECT name, key_hash FROM api_keys ORDER BY name")).all()
    assert [row.name for row in stored] == ["billing", "dashboard"]
    assert all(row.key_hash not in (key, read_only_key) for row in stored)

    assert client.get("/v1/connections", headers={"Authorization": f"Bearer {key}"}).is_success
    assert client.get(
        "/v1/connections", headers={"Authorization": f"Bearer {read_only_key}"}
    ).is_success

    # The use is written after the answer, by a task of its own (app.api.keys).
    deadline = time.monotonic() + 3
    while True:
        code, out, _ = run(capsys, "api-keys", "list")
        lines = out.splitlines()
        if lines[1].split()[3] != "-" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert code == 0
    assert lines[1].split()[3] != "-", "billing's use was never recorded"
    assert lines[0].split() == ["NAME", "READ_ONLY", "CREATED_AT", "LAST_USED_AT", "REVOKED_AT"]
    assert lines[1].split()[:2] == ["billing", "false"]
    assert lines[1].split()[4] == "-"
    assert lines[2].split()[:2] == ["dashboard", "true"]
    for row in stored:
        assert row.key_hash not in out
    assert key not in out

    code, out, _ = run(capsys, "api-keys", "revoke", "billing")
    assert code == 0
    assert "revoked" in out
    # Every instance drops a revoked key within REFRESH_SECONDS (app.api.keys).
    deadline = time.monotonic() + REFRESH_SECONDS + 1
    while client.get("/v1/connections", headers={"Authorization": f"Bearer {key}"}).is_success:
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.1)
    code, out, _ = run(capsys, "api-keys", "list")
    assert out.splitlines()[1].split()[4] != "-"
    code, out, _ = run(capsys, "api-keys", "revoke", "billing")
    assert code == 0
    assert "already revoked" in out


@pytest.mark.usefixtures("cli_env")
def test_names_are_unique_and_plain(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "api-keys", "create", "--name", "svc")[0] == 0
    code, out, err = run(capsys, "api-keys", "create", "--name", "svc")
    assert code == 1
    assert out == ""
    assert "exists" in err
    code, out, err = run(capsys, "api-keys", "create", "--name", "env:1")
    assert code == 1
    assert "--name" in err
    code, _, err = run(capsys, "api-keys", "revoke", "nobody")
    assert code == 1
    assert "no key named" in err
