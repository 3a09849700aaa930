"""``nango-registry simulate``: the body Nango would send, byte for byte, signed and posted."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from app.cli import main
from app.cli.simulate import Simulated, build_body, default_url, signing_key_for
from app.settings import Settings, SigningKey
from tests.conftest import TEST_SIGNING_KEY
from tests.rows import connection_row
from tests.webhooks.helpers import BY_NAME

ACME = {"end_user_email": "jane@acme.com", "end_user_id": "user_123", "organization_id": "org_456"}
CONNECTION = "b8a9f6a2-3c1d-4e5f-8a7b-9c0d1e2f3a4b"

# Every vector whose body the simulator can express (it never sends the deprecated endUser).
MATCHING = {
    "auth-creation-tags-only": Simulated(
        kind="creation",
        connection_id="0c2f6d1e-7b7a-4c39-9f4e-3d2a1b0c9e8f",
        integration="hubspot",
        environment="dev",
        tags={"end_user_id": "u_42", "organization_id": "org_7"},
    ),
    "auth-refresh-failure": Simulated(kind="refresh-failed", connection_id=CONNECTION, tags=ACME),
    "auth-creation-failure": Simulated(
        kind="creation", connection_id=CONNECTION, tags=ACME, failure=True
    ),
    "auth-non-ascii": Simulated(
        kind="creation",
        connection_id="c1",
        integration="p",
        environment="dev",
        auth_mode="API_KEY",
        tags={"end_user_display_name": "Zoë"},
    ),
    "sync-success": Simulated(
        kind="sync",
        connection_id=CONNECTION,
        at=datetime(2025, 1, 1, tzinfo=UTC),
        results={"added": 10, "deleted": 0, "updated": 2},
        checkpoints={"from": {"cursor": "abc"}, "to": {"cursor": "def"}},
    ),
    "sync-error": Simulated(
        kind="sync",
        connection_id=CONNECTION,
        failure=True,
        sync_type="INITIAL",
        started_at=datetime(2025, 1, 1, tzinfo=UTC),
        at=datetime(2025, 1, 1, 0, 5, tzinfo=UTC),
    ),
    "forward": Simulated(
        kind="forward",
        connection_id=CONNECTION,
        integration="hubspot",
        payload=[{"objectId": 123, "subscriptionType": "contact.creation"}],
    ),
}


@pytest.mark.parametrize("name", sorted(MATCHING))
def test_bodies_are_the_vectors_byte_for_byte(name: str) -> None:
    assert build_body(MATCHING[name]) == BY_NAME[name]["body"].encode()


def test_every_kind_builds() -> None:
    override = build_body(Simulated(kind="override", connection_id="c", tags={"a": "b"}))
    deletion = build_body(Simulated(kind="deletion", connection_id="c"))
    assert b'"operation":"override","provider":"github"' in override
    assert b'"operation":"deletion"' in deletion
    assert b'"tags"' not in deletion
    refreshed = build_body(Simulated(kind="refresh", connection_id="c", failure=True))
    assert refreshed == build_body(Simulated(kind="refresh-failed", connection_id="c"))


def test_the_key_of_the_environment_else_an_unbound_one() -> None:
    prod, dev, any_env = SigningKey(b"p", "prod"), SigningKey(b"d", "dev"), SigningKey(b"a")
    assert signing_key_for((prod, dev, any_env), "dev") == dev
    assert signing_key_for((prod, any_env), "staging") == any_env
    assert signing_key_for((prod,), "dev") is None


def test_default_url_reaches_the_configured_service() -> None:
    settings = Settings(_env_file=None, host="0.0.0.0", port=8123)
    assert default_url(settings) == "http://127.0.0.1:8123/webhooks/nango"
    assert default_url(Settings(_env_file=None, host="::1")) == "http://[::1]:8000/webhooks/nango"


@pytest.fixture
def through_app(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path
) -> list[httpx2.Request]:
    """simulate's POST goes to the app in this process; the requests it made are kept."""
    sent: list[httpx2.Request] = []

    def post(url: str, *, content: bytes, headers: dict[str, str], **_: Any) -> httpx2.Response:
        sent.append(httpx2.Request("POST", url, content=content, headers=headers))
        answer = client.post("/webhooks/nango", content=content, headers=headers)
        return httpx2.Response(answer.status_code, content=answer.content)

    monkeypatch.setattr(httpx2, "post", post)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("NANGO_WEBHOOK_SIGNING_KEYS", f"prod={TEST_SIGNING_KEY}")
    monkeypatch.chdir(tmp_path)  # no .env but the test's
    return sent


def test_simulate_signs_posts_and_prints(
    through_app: list[httpx2.Request],
    sync_engine: Engine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["simulate", "creation", "--end-user", "user_42", "--organization", "org_7"]
    argv += ["--email", "ada@example.com", "--tag", "Plan=pro", "--connection", "c-42"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "POST http://127.0.0.1:8000/webhooks/nango"
    assert out[2].startswith('200 {"status":"applied","delivery_id":')
    (request,) = through_app
    assert request.content.decode() == out[1]
    row = connection_row(sync_engine, "c-42")
    assert (row.end_user_id, row.organization_id, row.end_user_email) == (
        "user_42",
        "org_7",
        "ada@example.com",
    )
    assert row.tags["plan"] == "pro"
    failed = ["simulate", "refresh", "--failure", "--connection", "c-42"]
    assert main(failed) == 0
    assert connection_row(sync_engine, "c-42").status == "auth_error"


def test_no_key_for_the_environment_is_one_line(
    through_app: list[httpx2.Request], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "sync", "--environment", "dev"]) == 1
    assert "nango-registry: no signing key for environment 'dev'" in capsys.readouterr().err
    assert through_app == []


def test_a_refusal_exits_1(
    through_app: list[httpx2.Request],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("NANGO_WEBHOOK_SIGNING_KEYS", "prod=another-key")
    assert main(["simulate", "deletion", "--connection", "c"]) == 1
    # Posted, and refused by the service: not a failure before sending.
    assert len(through_app) == 1
    answer = capsys.readouterr().out.splitlines()[-1]
    assert answer.startswith("401 "), answer


def test_a_tag_is_key_equals_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "creation", "--tag", "novalue"])
    assert "a tag is KEY=VALUE" in capsys.readouterr().err
