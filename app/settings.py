"""The one typed settings object. Nothing else in the app reads ``os.environ``."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./nango-registry.db"
# 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: Svix's schedule (issue 16).
DEFAULT_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
MAX_RETRIES = 20
MAX_RETRY_DELAY = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A webhook signing key, optionally bound to one Nango environment (``prod=KEY``)."""

    key: bytes
    environment: str | None = None


def normalise_database_url(url: str) -> str:
    """Return the one spelling of a user-facing database URL that every part of the app reads.

    Heroku and Render hand out ``postgres://`` URLs, which SQLAlchemy (used by the migrations)
    no longer accepts; every Postgres spelling is mapped to psycopg 3 and every SQLite spelling
    to the standard library's driver.
    """
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("must be a URL such as postgresql://user@host/db or sqlite:///file.db")
    base = scheme.split("+", 1)[0].lower()
    if base in {"postgres", "postgresql"}:
        return f"postgresql+psycopg://{rest}"
    if base == "sqlite":
        return f"sqlite://{rest}"
    raise ValueError(f"unsupported scheme {scheme!r}: use postgresql:// or sqlite://")


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


COMMA_LISTS = ("nango_webhook_signing_keys", "registry_api_keys")
MIN_SECRET_LENGTH = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Service
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    web_concurrency: int = Field(default=1, ge=1, le=64)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    forwarded_allow_ips: str = "127.0.0.1"
    request_body_timeout_seconds: float = Field(default=15.0, gt=0, le=600)
    secret_key: SecretStr | None = None
    graceful_shutdown_seconds: int = Field(default=20, ge=1, le=300)

    # Database
    database_url: str = DEFAULT_DATABASE_URL
    database_pool_size: int = Field(default=5, ge=1, le=100)
    database_max_overflow: int = Field(default=2, ge=0, le=100)
    database_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    database_statement_timeout_seconds: float = Field(default=5.0, gt=0, le=600)

    # Webhook receiver
    nango_webhook_signing_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # X-Nango-Signature alone: what self-hosted Nango before 0.69.15 sends (docs/nango.md,
    # Correction 6); 0.69.15 and later also send X-Nango-Hmac-Sha256.
    nango_accept_legacy_signature: bool = False
    webhook_max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    webhook_dedupe_window_seconds: int = Field(default=300, ge=0, le=7 * 24 * 3600)

    # Lookup API
    registry_api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    metrics_enabled: bool = True
    # prometheus_client's own variable: where workers share their samples. `serve` sets it to a
    # fresh temporary directory when it starts more than one worker and it is unset.
    prometheus_multiproc_dir: str | None = None

    # Nango API
    nango_host: str = "https://api.nango.dev"
    nango_secret_key: SecretStr | None = None
    nango_environment: str = "prod"
    nango_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    nango_max_retries: int = Field(default=2, ge=0, le=10)
    nango_legacy_hmac_key: SecretStr | None = None
    reconcile_interval_seconds: int | None = Field(default=None, ge=10)
    # Connection details (configuration and metadata) fetched from Nango: after a creation or
    # override webhook, in the background, this many tries with doubling waits; then by reconcile,
    # at most this many connections per run (each is one call to Nango's rate-limited API).
    connection_details_attempts: int = Field(default=3, ge=1, le=10)
    connection_details_retry_seconds: float = Field(default=10.0, ge=0, le=300)
    reconcile_details_per_run: int = Field(default=200, ge=0, le=100_000)

    # Subscriptions (push). Svix's schedule: a first try at once, then retries after these delays.
    subscription_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE)
    )
    subscription_disable_after_seconds: float = Field(default=5 * 24 * 3600, ge=0)
    subscription_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    subscription_max_in_flight: int = Field(default=4, ge=1, le=64)
    subscription_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    subscription_dispatch: bool = True
    subscription_require_https: bool = False
    # Set by `nango-registry serve` when it had to make SECRET_KEY up: subscription secrets are
    # derived from it, so none can be created on a key that will not survive a restart.
    secret_key_generated: bool = False
    # Operator console (/console/): on only when both are set
    console_username: str | None = None
    console_password: SecretStr | None = None
    console_read_only: bool = False
    console_csrf_max_age_seconds: int = Field(default=4 * 3600, ge=60, le=7 * 24 * 3600)
    console_cache_seconds: float = Field(default=5.0, ge=0, le=3600)

    # Comma lists that held an empty entry ("KEY,", ","): dropped, and warned about at start.
    _blank_entries: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _note_blank_entries(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        blank = tuple(
            name.upper()
            for name in COMMA_LISTS
            if isinstance(data, dict)
            and isinstance(data.get(name), str)
            and any(not part.strip() for part in data[name].split(","))
        )
        settings = handler(data)
        if isinstance(settings, Settings):
            settings._blank_entries = blank
        return settings

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "nango_accept_legacy_signature", "metrics_enabled", "console_read_only", mode="before"
    )
    @classmethod
    def _boolean_in_any_case(cls, value: object) -> object:
        # pydantic already takes true/True/TRUE, yes, on, 1...; surrounding spaces too here.
        return value.strip() if isinstance(value, str) else value

    # Change feed (streams and Connect-session long polls)
    feed_heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)
    feed_poll_interval_seconds: float = Field(default=1.0, gt=0, le=60)

    @field_validator("nango_webhook_signing_keys", "registry_api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("subscription_retry_schedule", mode="before")
    @classmethod
    def _schedule(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("subscription_retry_schedule")
    @classmethod
    def _schedule_bounds(cls, value: list[float]) -> list[float]:
        if len(value) > MAX_RETRIES:
            raise ValueError(f"at most {MAX_RETRIES} retry delays")
        if any(not 0 <= delay <= MAX_RETRY_DELAY for delay in value):
            raise ValueError(f"each delay is 0 to {MAX_RETRY_DELAY} seconds")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalise_database_url(value)

    @field_validator("nango_host")
    @classmethod
    def _nango_host(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("reconcile_interval_seconds", mode="before")
    @classmethod
    def _blank_is_off(cls, value: object) -> object:
        return None if value in ("", "0", 0, "off") else value

    @field_validator("nango_webhook_signing_keys")
    @classmethod
    def _signing_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        for entry in value:
            environment, sep, key = entry.get_secret_value().partition("=")
            if sep and (not environment.strip() or not key.strip()):
                raise ValueError("each entry is KEY or ENVIRONMENT=KEY, with neither part empty")
        return value

    @field_validator("console_username", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def console_enabled(self) -> bool:
        return bool(
            self.console_username
            and self.console_password is not None
            and self.console_password.get_secret_value()
        )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @cached_property
    def signing_keys(self) -> tuple[SigningKey, ...]:
        keys = []
        for entry in self.nango_webhook_signing_keys:
            raw = entry.get_secret_value()
            # A UUID key never contains "=", so "ENV=KEY" is unambiguous.
            environment, sep, key = raw.partition("=")
            if sep:
                keys.append(SigningKey(key=key.strip().encode(), environment=environment.strip()))
            else:
                keys.append(SigningKey(key=raw.encode()))
        return tuple(keys)


def configuration_summary(settings: Settings) -> dict[str, Any]:
    """What matters about this configuration, without a secret: the start-up log line."""
    environments = sorted({key.environment or "*" for key in settings.signing_keys})
    return {
        "database": "sqlite" if settings.is_sqlite else "postgresql",
        "signing_key_environments": environments,
        "api_keys_configured": len(settings.registry_api_keys),
        "nango_host": settings.nango_host,
        "nango_secret_key": settings.nango_secret_key is not None,
        "nango_environment": settings.nango_environment,
        "reconcile_interval_seconds": settings.reconcile_interval_seconds,
        "legacy_signature": settings.nango_accept_legacy_signature,
        "log_level": settings.log_level,
    }


def configuration_warnings(settings: Settings) -> list[str]:
    """What will surely fail with this configuration (each logged at start, as a warning)."""
    warnings = []
    if not settings.signing_keys:
        warnings.append(
            "NANGO_WEBHOOK_SIGNING_KEYS is not set: every webhook will be refused (503)"
        )
    warnings += [
        f"{name} has an empty entry (a stray comma): it is ignored"
        for name in settings._blank_entries
    ]
    if not settings.nango_environment.strip():
        warnings.append("NANGO_ENVIRONMENT is empty: set it to the Nango environment, e.g. prod")
    short = [
        f"{name} is shorter than {MIN_SECRET_LENGTH} characters: easy to guess"
        for name, values in (
            ("REGISTRY_API_KEYS", settings.registry_api_keys),
            ("SECRET_KEY", [settings.secret_key] if settings.secret_key else []),
        )
        if any(len(value.get_secret_value()) < MIN_SECRET_LENGTH for value in values)
    ]
    return warnings + short


class SettingsError(SystemExit):
    """Raised instead of a traceback when the environment holds an invalid setting."""


def describe_validation_error(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        name = str(item["loc"][0]).upper() if item["loc"] else "settings"
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{name}: {message}")
    return "invalid setting " + "; ".join(problems)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (and ``.env``), stopping with one clear line on error."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        message = f"nango-registry: {describe_validation_error(error)}"
        print(message, file=sys.stderr)
        raise SettingsError(2) from None
