"""``/openapi.json`` describes every mounted route, and the app answers as it describes.

The document is generated from the routes and their pydantic shapes (``app.api.openapi``). The
schema-driven test runs schemathesis's checks (no 5xx, status codes, content types, response
bodies against their schemas, negative data rejected) over every operation, with a full-access
key.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.testclient import TestClient

from app.api import openapi
from app.application import create_app
from app.settings import Settings
from tests.conftest import TEST_API_KEY
from tests.fakes.nango import FakeNango
from tests.rows import add_connection, add_delivery, add_event

AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}


def mounted(app: Starlette) -> set[tuple[str, str]]:
    """(path template, method) of every handler the app serves, from its routes."""
    return {
        (re.sub(r"{(\w+)(:\w+)?}", r"{\1}", route.path), method)
        for route, method, _ in openapi.handlers(app.routes)
    }


def described(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items() for method in item}


def arrange(engine: Engine) -> None:
    """Rows for every shape a response can take: errors, syncs, deletions, ambiguous IDs."""
    active = add_connection(
        engine,
        connection_id="active",
        end_user_id="u1",
        end_user_email="u1@example.com",
        organization_id="o1",
        tags={"team": "a"},
        last_sync_name="contacts",
        last_sync_at=datetime(2026, 6, 1, tzinfo=UTC),
        last_sync_success=False,
        last_sync_error="rate limited",
    )
    add_connection(
        engine,
        connection_id="broken",
        end_user_id="u1",
        integration_id="slack",
        status="auth_error",
        error_type="refresh_token_external_error",
        error_since=datetime(2026, 6, 2, tzinfo=UTC),
    )
    add_connection(
        engine, connection_id="gone", status="deleted", deleted_at=datetime(2026, 6, 3, tzinfo=UTC)
    )
    add_connection(engine, connection_id="legacy", integration_id="github", provider=None)
    add_connection(engine, connection_id="legacy", integration_id="slack", auth_mode=None)
    delivery = add_delivery(engine, connection_id="active")
    add_event(engine, active, delivery_id=delivery)
    add_event(engine, active, action="sync", source="webhook", success=None, to_status=None)


@pytest.fixture
def app(settings: Settings, sync_engine: Engine) -> Starlette:
    arrange(sync_engine)
    assert settings.nango_secret_key is not None
    # The action routes call Nango: a fake one answers, through the real client code.
    nango = FakeNango(secret_key=settings.nango_secret_key.get_secret_value())
    # Subscriptions it creates name generated URLs: nothing may be sent to them.
    quiet = settings.model_copy(update={"subscription_dispatch": False})
    return create_app(quiet, nango_transport=nango.transport())


def _load_schema() -> Any:
    # Cases are generated at collection time, before the test database exists, from an app
    # that is never started; each test sends them to its own app (`app=`) on the test database.
    # (schemathesis.pytest.from_fixture would fit better but fails under pytest 9: it reads
    # the removed `Function._nodeid`.)
    blueprint = create_app(Settings(_env_file=None, database_url="sqlite://"))
    loaded = schemathesis.openapi.from_dict(openapi.document(blueprint.routes))
    loaded.app = blueprint
    return loaded


schema = _load_schema()


@pytest.fixture
def api_schema(app: Starlette) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


# A stream never ends by itself: tests/api/test_events.py drives it over a real socket.
@schema.exclude(operation_id="streamEvents").parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_app_answers_as_its_openapi_document_says(case: Any, app: Starlette) -> None:
    # A cursor is an opaque token the server issued: any string fits its schema, and all but
    # issued ones are refused with 400 by design, so "valid data is accepted" cannot hold for it.
    # A case whose headers were generated to break the schema (no or a bad Authorization) is sent
    # as generated: the app must refuse it, so the key is not added on top.
    negative_headers = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
    headers = None if negative_headers else AUTH
    case.call_and_validate(app=app, headers=headers, excluded_checks=[positive_data_acceptance])


def test_every_mounted_route_is_described(app: Starlette) -> None:
    assert openapi.undocumented(app.routes) == []
    assert mounted(app) == described(openapi.document(app.routes))


@pytest.mark.parametrize(
    ("path", "method", "query", "status"),
    [
        ("/v1/connections", "GET", {}, 200),
        ("/v1/connections", "GET", {"status": "deleted,active", "limit": 1}, 200),
        ("/v1/connections", "GET", {"status": "nope"}, 400),
        ("/v1/connections/{connection_id}", "GET", {}, 200),
        ("/v1/connections/{connection_id}", "GET", {"integration_id": "x"}, 404),
        ("/v1/connections/{connection_id}/events", "GET", {"limit": 1}, 200),
        ("/v1/end-users/{end_user_id}/summary", "GET", {}, 200),
        ("/healthz", "GET", {}, 200),
        ("/readyz", "GET", {}, 200),
        ("/openapi.json", "GET", {}, 200),
    ],
)
def test_real_answers_match_their_schemas(
    api_schema: Any, path: str, method: str, query: dict[str, Any], status: int
) -> None:
    """Generated IDs rarely exist; these cases make sure full objects are validated too."""
    operation = api_schema[path][method]
    params = {"connection_id": "active", "end_user_id": "u1"}
    path_parameters = {k: v for k, v in params.items() if "{" + k + "}" in path}
    case = operation.Case(path_parameters=path_parameters, query=query)
    response = case.call_and_validate(headers=AUTH)
    assert response.status_code == status


def test_ambiguous_and_bad_cursor_answers_match_their_schemas(api_schema: Any) -> None:
    operation = api_schema["/v1/connections/{connection_id}"]["GET"]
    conflict = operation.Case(path_parameters={"connection_id": "legacy"}).call_and_validate(
        headers=AUTH
    )
    assert conflict.status_code == 409
    listing = api_schema["/v1/connections"]["GET"]
    bad = listing.Case(query={"cursor": "forged"}).call_and_validate(
        headers=AUTH, excluded_checks=[positive_data_acceptance]
    )
    assert bad.status_code == 400


def test_document_is_openapi_3_1_with_bearer_security(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    for path, item in document["paths"].items():
        for operation in item.values():
            if path.startswith("/v1/"):
                assert operation["security"] == [{"bearerAuth": []}]
                assert "401" in operation["responses"]


def test_answers_built_from_records_validate_against_their_models(sync_engine: Engine) -> None:
    """The ``*_json`` builders and the models the document is generated from agree."""
    from app.api import shapes
    from app.connections.model import Connection
    from app.connections.queries import DeliverySummary, HistoryEntry, IntegrationSummary

    now = datetime(2026, 6, 1, tzinfo=UTC)
    broken = Connection(
        1, "prod", "slack", "c1", "slack", "OAUTH2", "u1", "u@x.io", "U", "o1", "O",
        {"team": "a"}, "auth_error", "refresh_token_external_error", "invalid_grant", now,
        "contacts", "Contact", False, now, "rate limited", now, now, None,
        {"subdomain": "acme"}, {"nested": {"a": [1, None]}},
    )  # fmt: skip
    shapes.ConnectionPublic.model_validate(shapes.connection_json(broken), strict=False)
    delivery = DeliverySummary(7, now, "auth", "refresh", False, "applied")
    entry = HistoryEntry(3, "webhook", "refresh", False, "active", "auth_error", {}, now, delivery)
    shapes.HistoryEntryPublic.model_validate(shapes.history_json(entry))
    summary = IntegrationSummary("slack", "prod", broken)
    shapes.SummaryAnswer.model_validate(shapes.summary_json("u1", [summary]))
