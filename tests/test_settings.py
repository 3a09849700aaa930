from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import (
    Settings,
    SigningKey,
    configuration_summary,
    configuration_warnings,
    load_settings,
    normalise_database_url,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgresql://u@h/db?sslmode=require", "postgresql+psycopg://u@h/db?sslmode=require"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///./x.db", "sqlite:///./x.db"),
        ("sqlite:////abs/x.db", "sqlite:////abs/x.db"),
    ],
)
def test_database_urls_are_normalised(given: str, expected: str) -> None:
    assert normalise_database_url(given) == expected


def test_defaults_use_sqlite_in_the_working_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    settings = Settings(_env_file=None)
    assert settings.database_url == "sqlite:///./nango-registry.db"
    assert settings.is_sqlite
    assert settings.webhook_max_body_bytes == 2 * 1024 * 1024


def test_comma_separated_keys_with_environment_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANGO_WEBHOOK_SIGNING_KEYS", " old-key , prod=new-key,dev=dev-key ")
    monkeypatch.setenv("REGISTRY_API_KEYS", "a,b")
    settings = Settings(_env_file=None)
    assert settings.signing_keys == (
        SigningKey(b"old-key"),
        SigningKey(b"new-key", "prod"),
        SigningKey(b"dev-key", "dev"),
    )
    assert [key.get_secret_value() for key in settings.registry_api_keys] == ["a", "b"]


def test_env_file_is_read(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORT", raising=False)
    monkeypatch.chdir(str(tmp_path))
    with open(".env", "w") as env:
        env.write("PORT=9123\n")
    assert Settings().port == 9123


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://u@h/db"),
        ("WEBHOOK_MAX_BODY_BYTES", "lots"),
        ("PORT", "70000"),
        ("NANGO_HOST", "api.nango.dev"),
        ("NANGO_WEBHOOK_SIGNING_KEYS", "prod="),
        ("RECONCILE_INTERVAL_SECONDS", "5"),
    ],
)
def test_invalid_setting_stops_with_one_clear_line(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        load_settings(_env_file=None)
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"nango-registry: invalid setting {name}:")


def test_the_console_script_stops_without_a_traceback(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        env={"PATH": "/usr/bin:/bin", "NANGO_WEBHOOK_SIGNING_KEYS": "prod=,secret-key-value"},
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "nango-registry: invalid setting NANGO_WEBHOOK_SIGNING_KEYS: "
        "each entry is KEY or ENVIRONMENT=KEY, with neither part empty"
    ]
    assert "secret-key-value" not in result.stderr + result.stdout


def test_subscription_retry_schedule_is_comma_separated_seconds() -> None:
    default = Settings(_env_file=None)
    assert default.subscription_retry_schedule == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert default.subscription_disable_after_seconds == 5 * 24 * 3600
    custom = Settings(_env_file=None, subscription_retry_schedule="0.5, 1,2")
    assert custom.subscription_retry_schedule == [0.5, 1, 2]
    empty = Settings(_env_file=None, subscription_retry_schedule="")
    assert empty.subscription_retry_schedule == []
    for bad in ("-1", "5,x", ",".join(["1"] * 21), "999999999"):
        with pytest.raises(ValidationError):
            Settings(_env_file=None, subscription_retry_schedule=bad)


def test_readme_names_the_release_that_brought_the_hmac_header() -> None:
    """X-Nango-Hmac-Sha256 shipped in 0.69.15, not 0.69.14 (docs/nango.md, Correction 6)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    row = next(line for line in readme.splitlines() if "`NANGO_ACCEPT_LEGACY_SIGNATURE` |" in line)
    assert "0.69.15" in row
    assert "0.69.14" not in readme


@pytest.mark.parametrize("level", ["DEBUG", "Debug", " warning ", "ERROR"])
def test_log_level_in_any_case(level: str) -> None:
    assert Settings(_env_file=None, log_level=level).log_level == level.strip().lower()


@pytest.mark.parametrize(
    ("given", "expected"),
    [("TRUE", True), ("True", True), (" yes ", True), ("On", True), ("FALSE", False), ("0", False)],
)
def test_booleans_in_any_case(monkeypatch: pytest.MonkeyPatch, given: str, expected: bool) -> None:
    monkeypatch.setenv("NANGO_ACCEPT_LEGACY_SIGNATURE", given)
    monkeypatch.setenv("METRICS_ENABLED", given)
    settings = Settings(_env_file=None)
    assert settings.nango_accept_legacy_signature is expected
    assert settings.metrics_enabled is expected


def test_the_configuration_summary_names_no_secret() -> None:
    settings = Settings(
        _env_file=None,
        nango_webhook_signing_keys="prod=signing-secret-1,any-secret-2",
        registry_api_keys="k" * 40,
        nango_secret_key="nango-secret",
        reconcile_interval_seconds=3600,
    )
    summary = configuration_summary(settings)
    assert summary == {
        "database": "sqlite",
        "signing_key_environments": ["*", "prod"],
        "api_keys_configured": 1,
        "nango_host": "https://api.nango.dev",
        "nango_secret_key": True,
        "nango_environment": "prod",
        "reconcile_interval_seconds": 3600,
        "legacy_signature": False,
        "log_level": "info",
    }
    assert configuration_warnings(settings) == []


def test_warnings_for_what_will_surely_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANGO_WEBHOOK_SIGNING_KEYS", ",")
    monkeypatch.setenv("REGISTRY_API_KEYS", "short,")
    monkeypatch.setenv("SECRET_KEY", "also-short")
    monkeypatch.setenv("NANGO_ENVIRONMENT", "")
    warnings = configuration_warnings(Settings(_env_file=None))
    assert warnings == [
        "NANGO_WEBHOOK_SIGNING_KEYS is not set: every webhook will be refused (503)",
        "NANGO_WEBHOOK_SIGNING_KEYS has an empty entry (a stray comma): it is ignored",
        "REGISTRY_API_KEYS has an empty entry (a stray comma): it is ignored",
        "NANGO_ENVIRONMENT is empty: set it to the Nango environment, e.g. prod",
        "REGISTRY_API_KEYS is shorter than 32 characters: easy to guess",
        "SECRET_KEY is shorter than 32 characters: easy to guess",
    ]
