"""The session-wide secret scan (tests/secret_scan.py) sees every kind of log line it claims to."""

from __future__ import annotations

import logging

import structlog

from app.logs import configure_logging, get_logger
from tests import secret_scan
from tests.conftest import TEST_API_KEY, TEST_SIGNING_KEY
from tests.webhooks.helpers import sign


def test_find_leaks_reports_secrets_and_known_signatures_only() -> None:
    signature = sign(b"body")
    unrelated = "ab" * 32
    chunks = [
        ("a", f"key={TEST_SIGNING_KEY}"),
        ("b", f"sig={signature.upper()}"),
        ("c", f"dedupe={unrelated} fine"),
    ]
    leaks = secret_scan.find_leaks(
        chunks, secrets={TEST_SIGNING_KEY}, signatures=secret_scan.CAPTURE.signatures
    )
    assert [leak.split(":")[0] for leak in leaks] == ["a", "b"]
    assert all(TEST_SIGNING_KEY not in leak and signature not in leak for leak in leaks)


def test_signatures_made_by_the_helpers_are_registered() -> None:
    assert sign(b"registered?") in secret_scan.CAPTURE.signatures


def _captured(marker: str) -> bool:
    return any(marker in text for _source, text in secret_scan.CAPTURE.chunks)


def test_stdlib_and_structlog_lines_are_captured_whatever_the_handlers() -> None:
    get_logger("scan.test").info("marker", value="structlog-default-marker")
    logging.getLogger("scan.test").warning("stdlib-marker %s", "arg")
    assert _captured("structlog-default-marker")
    assert _captured("stdlib-marker arg")

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_structlog = structlog.get_config()
    try:
        # configure_logging replaces the root handlers; a test may then remove them all.
        configure_logging("info")
        root.handlers.clear()
        get_logger("scan.test").info("marker", value="structlog-stdlib-marker")
        assert _captured("structlog-stdlib-marker")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.configure(**saved_structlog)


def test_an_api_key_is_registered_as_a_secret() -> None:
    assert TEST_API_KEY in secret_scan.CAPTURE.secrets
