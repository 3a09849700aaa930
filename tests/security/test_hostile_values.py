"""Issue 13, point 3: no 500 from any path or query value.

Every operation of /openapi.json gets, in each of its path and query parameters and body
fields, the values a database refuses in text (NUL) or that test a parser's edges; the answer
is never a 5xx and no log line carries SQL.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from app.logs import configure_logging
from tests.conftest import TEST_API_KEY
from tests.fakes.nango import FakeNango

HOSTILE = ["a\x00b", "\x00", "%00", "a\ud7ffb", "x" * 5000, "🦀\x01\x1f", "'; DROP TABLE x;--"]
SQL_WORDS = ("SELECT ", "INSERT ", "UPDATE ", "DELETE FROM", "%(")


def _operations(client: TestClient) -> list[tuple[str, str, dict[str, Any]]]:
    document = client.get("/openapi.json").json()
    return [
        (method.upper(), path, operation)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        # An accepted event stream never ends; its parameters are the pull route's, tested here.
        if path.startswith("/v1/") and not path.endswith("/stream")
    ]


def _requests(path: str, operation: dict[str, Any], value: str) -> list[tuple[str, Any]]:
    """(url, json body) pairs: the value in each parameter and body field in turn."""
    parameters = operation.get("parameters", [])
    base = path
    for parameter in parameters:
        if parameter["in"] == "path":
            base = base.replace("{" + parameter["name"] + "}", "someone")
    found: list[tuple[str, Any]] = []
    for parameter in parameters:
        name = parameter["name"]
        if parameter["in"] == "path":
            found.append((path.replace("{" + name + "}", quote(value, safe="")), None))
        elif parameter["in"] == "query":
            key = "tag[plan]" if name == "tag" else name
            found.append((f"{base}?{quote(key)}={quote(value, safe='')}", None))
    if "requestBody" in operation:
        for field in ("tags", "integration_id", "connection_id", "end_user", "organization"):
            found.append((base, {field: value}))
            found.append((base, {field: {"end_user_id": value, "id": value}}))
    return found


@pytest.mark.parametrize("value", HOSTILE)
def test_no_value_makes_a_500_or_logs_sql(
    make_client: Any, fake_nango: FakeNango, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    client: TestClient = make_client()
    headers = {"Authorization": f"Bearer {TEST_API_KEY}"}
    configure_logging("debug")
    try:
        answers = []
        for method, path, operation in _operations(client):
            for url, body in _requests(path, operation, value):
                response = client.request(method, url, headers=headers, json=body)
                answers.append((method, url, response.status_code))
        output = capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
        configure_logging("info")
    assert answers, "no operation of /openapi.json was tried"
    failures = [answer for answer in answers if answer[2] >= 500 and answer[2] != 502]
    assert not failures, failures
    for line in output.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            assert event.get("event") != "unhandled_error", line
        assert not any(word in line for word in SQL_WORDS), line
