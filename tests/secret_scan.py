"""A pytest plugin: every log line of the whole test session is checked for secrets at the end.

Captured: every standard-library log record (whatever handlers ``configure_logging`` installs or
a test removes, by wrapping ``Logger.callHandlers``), every structlog event (a capturing
processor is put first in every configuration), the stdout/stderr/log sections pytest keeps for
each test, and the output of server subprocesses that tests hand in with ``add_output``.
Checked when the session ends: no signing key, API key, Nango secret key, cursor secret,
database password or signature header value may appear. Signatures are known because
``tests.webhooks.helpers.sign`` and ``legacy_sign`` are wrapped to register every value they
produce.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import structlog

_HEX64 = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])")


@dataclass
class Capture:
    secrets: set[str] = field(default_factory=set)
    signatures: set[str] = field(default_factory=set)
    chunks: list[tuple[str, str]] = field(default_factory=list)  # (source, text)
    lines: int = 0

    def add(self, text: str, source: str) -> None:
        if text:
            self.chunks.append((source, text))
            self.lines += text.count("\n") + 1

    def leaks(self) -> list[str]:
        return find_leaks(self.chunks, secrets=self.secrets, signatures=self.signatures)


CAPTURE = Capture()


def find_leaks(
    chunks: list[tuple[str, str]], *, secrets: set[str], signatures: set[str]
) -> list[str]:
    """Describe each secret found (by source, never the secret itself beyond a short prefix)."""
    found = []
    for source, text in chunks:
        for secret in secrets:
            if secret in text:
                found.append(f"{source}: a secret starting {secret[:4]!r} appears")
        for token in _HEX64.findall(text):
            if token.lower() in signatures:
                found.append(f"{source}: a signature header value starting {token[:8]!r} appears")
    return found


def register_secret(*values: str | None) -> None:
    for value in values:
        if value:
            CAPTURE.secrets.add(value)


def register_database_url(url: str) -> None:
    password = urlsplit(url.replace("+psycopg", "")).password
    register_secret(password)


def add_output(text: str, *, source: str) -> None:
    """Hand in output the session did not log itself (e.g. a server subprocess's stdout)."""
    CAPTURE.add(text, source)


def _record_text(record: logging.LogRecord) -> str:
    try:
        text = record.getMessage()
    except Exception:  # a malformed record is still text worth scanning
        text = f"{record.msg!r} {record.args!r}"
    if record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    return text


def _capture_structlog(logger: Any, method: str, event: Any) -> Any:
    CAPTURE.add(repr(event), "structlog")
    return event


def _wrap_signer(module: Any, name: str) -> None:
    original: Callable[..., str] = getattr(module, name)

    def signer(*args: Any, **kwargs: Any) -> str:
        value = original(*args, **kwargs)
        CAPTURE.signatures.add(value.lower())
        return value

    setattr(module, name, signer)


class SecretScanPlugin:
    def __init__(self) -> None:
        original = logging.Logger.callHandlers

        def call_handlers(logger: logging.Logger, record: logging.LogRecord) -> None:
            CAPTURE.add(_record_text(record), f"log:{record.name}")
            original(logger, record)

        logging.Logger.callHandlers = call_handlers  # type: ignore[method-assign,assignment]
        processors = structlog.get_config()["processors"]
        structlog.configure(processors=[_capture_structlog, *processors])
        # app.logs renders its own events without the standard library: whatever structlog is
        # configured with later, the capture stays first in the chain.
        configure = structlog.configure

        def configure_with_capture(**kwargs: Any) -> None:
            if kwargs.get("processors") is not None:
                kwargs["processors"] = [_capture_structlog, *kwargs["processors"]]
            configure(**kwargs)

        structlog.configure = configure_with_capture  # type: ignore[assignment]
        from tests.webhooks import helpers

        _wrap_signer(helpers, "sign")
        _wrap_signer(helpers, "legacy_sign")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, text in report.sections:
            if name.startswith("Captured"):
                CAPTURE.add(text, f"{report.nodeid} {name}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        leaks = CAPTURE.leaks()
        if leaks:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        summary = (
            f"secret scan: {CAPTURE.lines} log lines, {len(CAPTURE.secrets)} secrets and "
            f"{len(CAPTURE.signatures)} signatures checked, {len(leaks)} leaks"
        )
        reporter.write_sep("=" if not leaks else "!", summary, red=bool(leaks), bold=True)
        for leak in leaks[:50]:
            reporter.write_line(leak, red=True)
