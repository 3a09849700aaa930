"""``/openapi.json`` describes every mounted route, and the app answers as it describes.

The schema-driven test runs schemathesis's checks (no 5xx, status codes, content types, response
bodies against their schemas, negative data rejected) over every described operation that is
mounted in this app, with a full-access key. Operations described but not mounted here (the
webhook receiver and ``/metrics``, until their branches are merged) are left out of the run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from app.api import openapi
from app.application import create_app
from app.settings import Settings
from tests.api.conftest import add_connection, add_delivery, add_event
from tests.conftest import TEST_API_KEY
from tests.fakes.nango import FakeNango

AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}


def mounted(app: Starlette) -> set[tuple[str, str]]:
    operations = set()
    for route in app.routes:
        if isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":
                    # "{id:path}" is Starlette's converter; OpenAPI names the parameter only.
                    operations.add((route.path.replace(":path}", "}"), method.lower()))
    # A trailing-slash alias of a described route is the same operation, not another one.
    return {
        (path, method)
        for path, method in operations
        if not (path.endswith("/") and (path.rstrip("/"), method) in operations)
    }


def described() -> set[tuple[str, str]]:
    return {(path, method) for path, item in openapi.PATHS.items() for method in item}


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
    return create_app(settings, nango_transport=nango.transport())


def _load_schema() -> Any:
    # Cases are generated at collection time, before the test database exists, from an app
    # that is never started; each test sends them to its own app (`app=`) on the test database.
    # (schemathesis.pytest.from_fixture would fit better but fails under pytest 9: it reads
    # the removed `Function._nodeid`.)
    blueprint = create_app(Settings(_env_file=None, database_url="sqlite://"))  # type: ignore[call-arg]
    loaded = schemathesis.openapi.from_dict(openapi.document())
    loaded.app = blueprint
    not_here = sorted({path for path, _ in described() - mounted(blueprint)})
    return loaded.exclude(path=not_here) if not_here else loaded


schema = _load_schema()


@pytest.fixture
def api_schema(app: Starlette) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
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
    assert mounted(app) <= described()
    # Described but not mounted: only routes written on other branches.
    assert described() - mounted(app) <= {("/webhooks/nango", "post"), ("/metrics", "get")}


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


def test_other_modules_can_describe_their_routes() -> None:
    saved = {path: dict(item) for path, item in openapi.PATHS.items()}
    try:
        openapi.add_operation(
            "/v1/connections/{connection_id}",
            "DELETE",
            {"responses": openapi.error_responses(401, 403)},
        )
        document = openapi.document()
        item = document["paths"]["/v1/connections/{connection_id}"]
        assert set(item) == {"get", "delete"}
        assert item["delete"]["responses"]["403"] == {"$ref": "#/components/responses/Forbidden"}
    finally:
        openapi.PATHS.clear()
        openapi.PATHS.update(saved)
