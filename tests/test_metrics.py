from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from app.application import create_app
from app.metrics import UNMATCHED_ROUTE
from app.middleware import RequestContextMiddleware

METRIC_FAMILIES = (
    "nango_registry_webhook_deliveries",
    "nango_registry_webhook_signature_failures",
    "nango_registry_lookups",
    "nango_registry_reconcile_runs",
    "nango_registry_database_errors",
    "nango_registry_request_duration_seconds",
)


def _latency_count(method: str, route: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "nango_registry_request_duration_seconds_count",
        {"method": method, "route": route, "status": status},
    )
    return value or 0.0


def test_metrics_need_an_api_key(client: TestClient) -> None:
    missing = client.get("/metrics")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    wrong = client.get("/metrics", headers={"Authorization": "Bearer not-a-key"})
    assert wrong.status_code == 401
    assert "nango_registry" not in wrong.text


def test_metrics_are_prometheus_text_with_every_family(
    client: TestClient, auth_headers: dict[str, str]
) -> None:
    response = client.get("/metrics", headers=auth_headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    for family in METRIC_FAMILIES:
        assert f"# HELP {family}" in response.text
    kinds = {
        line.split()[2]: line.split()[3]
        for line in response.text.splitlines()
        if line.startswith("# TYPE ")
    }
    assert kinds["nango_registry_request_duration_seconds"] == "histogram"
    assert kinds["nango_registry_webhook_deliveries_total"] == "counter"


def test_openmetrics_is_served_when_asked_for(
    client: TestClient, auth_headers: dict[str, str]
) -> None:
    response = client.get(
        "/metrics", headers={**auth_headers, "Accept": "application/openmetrics-text"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_request_latency_is_counted_by_route_and_status_class(
    client: TestClient, auth_headers: dict[str, str]
) -> None:
    healthz_before = _latency_count("GET", "/healthz", "2xx")
    unmatched_before = _latency_count("GET", UNMATCHED_ROUTE, "4xx")
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    assert client.get("/no/such/path/42").status_code == 404
    assert _latency_count("GET", "/healthz", "2xx") == healthz_before + 3
    assert _latency_count("GET", UNMATCHED_ROUTE, "4xx") == unmatched_before + 1
    exposed = client.get("/metrics", headers=auth_headers).text
    assert 'route="/healthz",status="2xx"' in exposed
    # Raw paths never become label values.
    assert "/no/such/path/42" not in exposed


def test_request_latency_uses_the_route_template() -> None:
    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["item_id"])

    app = Starlette(routes=[Route("/items/{item_id}", item)])
    app.add_middleware(RequestContextMiddleware)
    before = _latency_count("GET", "/items/{item_id}", "2xx")
    with TestClient(app) as client:
        assert client.get("/items/a").text == "a"
        assert client.get("/items/b").text == "b"
        assert client.request("BREW", "/items/c").status_code == 405
    assert _latency_count("GET", "/items/{item_id}", "2xx") == before + 2
    assert _latency_count("OTHER", "/items/{item_id}", "4xx") >= 1
    assert _latency_count("GET", "/items/a", "2xx") == 0


def test_metrics_can_be_disabled(make_settings: Any, auth_headers: dict[str, str]) -> None:
    with TestClient(create_app(make_settings(metrics_enabled=False))) as client:
        response = client.get("/metrics", headers=auth_headers)
        anonymous = client.get("/metrics")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    # Disabled means absent, even to a caller without a key.
    assert anonymous.status_code == 404


def test_an_unreachable_database_is_503_and_counted(make_settings: Any) -> None:
    from starlette.routing import Route

    from app.db.database import sql
    from app.state import app_state

    async def probe(request: Any) -> Any:
        async with app_state(request).database.reader() as tx:
            await tx.fetchone(sql("SELECT 1"))
        raise AssertionError("unreachable")

    settings = make_settings(
        database_url="postgresql://nobody@127.0.0.1:1/none", database_pool_timeout_seconds=1
    )
    app = create_app(settings)
    app.router.routes.append(Route("/probe", probe))
    labels = {"operation": "/probe"}
    before = REGISTRY.get_sample_value("nango_registry_database_errors_total", labels) or 0.0
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/probe")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "database_unavailable"
    assert REGISTRY.get_sample_value("nango_registry_database_errors_total", labels) == before + 1
