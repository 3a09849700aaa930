"""The one list of error codes (app/errors.py) and the README's table say the same."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.testclient import TestClient

from app.errors import (
    ERROR_CODES,
    NANGO_REFUSED,
    Conflict,
    ErrorCode,
    NotFound,
    handle_http_exception,
)

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_table() -> dict[str, ErrorCode]:
    """The rows of the README's "Error codes" table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Error codes\n", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.fullmatch(r"\| `([^`]+)` \| (\d{3}) \| (.+) \|", line)
        if match:
            code, status, meaning = match.groups()
            assert code not in rows, f"{code} twice in the README's table"
            rows[code] = ErrorCode(code, int(status), meaning)
    return rows


def test_the_readme_table_is_the_list_of_codes() -> None:
    table = readme_table()
    assert sorted(table) == sorted(ERROR_CODES), "codes in one but not the other"
    for code, entry in ERROR_CODES.items():
        assert table[code] == entry


def test_every_code_the_readme_quotes_is_in_the_list() -> None:
    text = README.read_text(encoding="utf-8")
    quoted = set(re.findall(r'"code": "([a-z_]+)"', text))
    # Codes in the other tables' `error.code` columns, and the webhook answers' table.
    for line in text.splitlines():
        match = re.match(r"\| (?:\d{3}[^|]*)\| ((?:`[a-z_<>' A-Za-z]+`(?:, | / )?)+) \|", line)
        if match:
            quoted.update(re.findall(r"`([^`]+)`", match.group(1)))
    quoted.discard("nango_invalid_body")  # an example of the nango_<Nango's code> family
    quoted.discard("nango_unknown_account")
    assert quoted, "the README quotes no code: the pattern above went stale"
    assert quoted <= set(ERROR_CODES), quoted - set(ERROR_CODES)


def test_a_code_sets_the_status() -> None:
    error = NotFound("gone", code=ERROR_CODES["unknown_at_nango"])
    assert (error.status_code, error.code) == (404, "unknown_at_nango")
    assert NotFound("no route").code == "not_found"


def test_an_error_without_a_default_needs_a_code() -> None:
    with pytest.raises(TypeError, match="needs a code"):
        Conflict("which one?")


def test_nango_refusals_keep_nangos_code() -> None:
    refused = NANGO_REFUSED.for_nango("unknown_account")
    assert (refused.code, refused.status) == ("nango_unknown_account", 502)


def test_starlettes_other_errors_keep_the_shape() -> None:
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/", "headers": []}

    def answer(error: HTTPException) -> Any:
        return asyncio.run(handle_http_exception(Request(scope), error))

    teapot = answer(HTTPException(418, "short and stout"))
    gateway = answer(HTTPException(504, "slow"))
    assert (teapot.status_code, bytes(teapot.body)) == (
        418,
        b'{"error":{"code":"bad_request","message":"short and stout"}}',
    )
    assert b'"internal_error"' in bytes(gateway.body)


def test_an_unknown_connection_is_connection_not_found(
    client: TestClient, auth_headers: dict[str, str]
) -> None:
    response = client.get("/v1/connections/nobody", headers=auth_headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "connection_not_found"
