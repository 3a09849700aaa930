"""Issue 13, point 7: metric labels come from known sets, whatever a signed body says."""

from __future__ import annotations

from starlette.testclient import TestClient

from tests.webhooks.helpers import nango_json, signed_headers


def test_webhook_types_outside_nangos_four_are_counted_as_other(
    client: TestClient, auth_headers: dict[str, str]
) -> None:
    for n in range(5):
        body = nango_json({"type": f"chosen-by-attacker-{n}", "connectionId": f"c{n}"})
        answer = client.post("/webhooks/nango", content=body, headers=signed_headers(body))
        assert answer.status_code == 200
    sync = nango_json({"type": "sync", "connectionId": "c", "providerConfigKey": "github"})
    client.post("/webhooks/nango", content=sync, headers=signed_headers(sync))
    metrics = client.get("/metrics", headers=auth_headers).text
    assert "chosen-by-attacker" not in metrics
    types = {
        line.split('type="')[1].split('"')[0]
        for line in metrics.splitlines()
        if line.startswith("nango_registry_webhook_deliveries_total{")
    }
    assert types <= {"auth", "sync", "forward", "async_action", "other", "invalid"}
    assert {"other", "sync"} <= types
