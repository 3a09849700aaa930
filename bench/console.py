"""The console on big data (issue 15): every page under 300 ms with a million connections and a
million deliveries stored.

One Postgres database is seeded by the server itself (``generate_series``: the connections of
``bench.seed``, then deliveries spread over 30 days and a history row per connection), the
service is started with the console on, and every page is fetched one request at a time, as an
operator would: the first view of the overview (which computes the counts once) is reported
apart, then each page ``--console-requests`` times.
"""

from __future__ import annotations

import base64
import datetime as dt
import statistics
import time
from typing import TYPE_CHECKING, Any

import psycopg

from bench.seed import seed_connections

if TYPE_CHECKING:
    from bench.run import Harness, Options

USER = "bench"
PASSWORD = "bench-console-password-0123456789"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
TARGET_MS = 300.0
DAYS = 30

# Deliveries spread evenly over the last DAYS days, newest last; one in a thousand failed.
SEED_DELIVERIES = """
INSERT INTO deliveries (
    id, dedupe_key, received_at, webhook_type, operation, success, environment, integration_id,
    connection_id, body, headers, outcome, error, processed_at, attempts
)
SELECT
    i, 'bench-' || i, now() - make_interval(secs => (%(stop)s - i) * %(spacing)s),
    (ARRAY['auth', 'auth', 'sync', 'forward'])[i %% 4 + 1],
    CASE WHEN i %% 4 < 2 THEN 'creation' END, true, 'prod',
    (ARRAY['github', 'slack', 'hubspot', 'salesforce'])[i %% 4 + 1],
    'seed-' || (i %% %(connections)s),
    '{"connectionId":"seed-' || (i %% %(connections)s) || '","from":"nango","type":"auth"}',
    '{"content-type": "application/json", "user-agent": "nango"}'::jsonb,
    CASE WHEN i %% 1000 = 7 THEN 'failed' WHEN i %% 4 < 2 THEN 'applied' ELSE 'recorded' END,
    CASE WHEN i %% 1000 = 7 THEN 'OperationalError' END,
    now() - make_interval(secs => (%(stop)s - i) * %(spacing)s), 1
FROM generate_series(1, %(stop)s) AS i
"""
SEED_EVENTS = """
INSERT INTO connection_events (connection_pk, delivery_id, source, action, success, to_status,
    detail, created_at)
SELECT i, CASE WHEN i BETWEEN 1 AND %(deliveries)s THEN i END, 'webhook', 'creation', true,
    'active', '{}'::jsonb, now() - make_interval(secs => i)
FROM generate_series(0, %(connections)s - 1) AS i
"""
# A few broken, deleted and unowned connections, as a real registry has.
SEED_STATES = [
    "UPDATE connections SET status = 'auth_error', error_type = 'refresh_token_external_error'"
    " WHERE id % 200 = 3",
    "UPDATE connections SET status = 'deleted', deleted_at = now() WHERE id % 500 = 4",
    "UPDATE connections SET end_user_id = NULL, organization_id = NULL WHERE id % 1000 = 5",
]


def seed(conninfo: str, *, connections: int, deliveries: int) -> float:
    started = time.perf_counter()
    seed_connections(conninfo, start=0, stop=connections)
    spacing = DAYS * 86400 / max(deliveries, 1)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        with connection.transaction():
            connection.execute("SET LOCAL session_replication_role = replica")
            for statement in SEED_STATES:
                connection.execute(statement)
            connection.execute(
                SEED_DELIVERIES,
                {"stop": deliveries, "spacing": spacing, "connections": connections},
            )
            connection.execute(SEED_EVENTS, {"connections": connections, "deliveries": deliveries})
            for table in ("deliveries", "connection_events"):
                connection.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"  # noqa: S608 (fixed names)
                    f" (SELECT max(id) FROM {table}))"
                )
        for table in ("connections", "deliveries", "connection_events"):
            connection.execute(f"VACUUM (ANALYZE) {table}")
    return time.perf_counter() - started


def pages(connections: int) -> dict[str, str]:
    """Every page, and every kind of search, on ids that exist in the seeded data."""
    middle = connections // 2
    hour = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).strftime("%Y-%m-%dT%H")
    window = f"from={hour}%3A00&to={hour}%3A59"
    return {
        "overview": "/console/",
        "connections": "/console/connections",
        "connections by end user": f"/console/connections?end_user_id=user-{middle // 3}",
        "connections by organization": f"/console/connections?organization_id=org-{middle // 30}",
        "connections by integration": "/console/connections?integration_id=salesforce",
        "connections auth_error": "/console/connections?status=auth_error",
        "connections deleted": "/console/connections?status=deleted",
        "connections unattributed": "/console/connections?unattributed=1",
        "connections by tag": f"/console/connections?tag=end_user_id%3Duser-{middle // 3}",
        "connections by connection ID": f"/console/connections?connection_id=seed-{middle}",
        "connection": f"/console/connections/{middle}",
        "end user": f"/console/end-users/user-{middle // 3}",
        "deliveries": "/console/deliveries",
        "deliveries failed": "/console/deliveries?outcome=failed",
        "deliveries sync": "/console/deliveries?type=sync",
        "deliveries by connection": f"/console/deliveries?connection=seed-{middle}",
        "deliveries in an hour": f"/console/deliveries?{window}",
        "delivery": f"/console/deliveries/{middle}",
        "reconcile": "/console/reconcile",
        "api keys": "/console/api-keys",
    }


def _timed(url: str) -> tuple[int, float]:
    from bench.run import http_get

    started = time.perf_counter()
    status, _ = http_get(url, AUTH)
    return status, (time.perf_counter() - started) * 1000


def measure(base_url: str, paths: dict[str, str], requests: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    status, first = _timed(base_url + paths["overview"])
    results["overview, first view (computes the counts)"] = {"status": status, "ms": round(first)}
    for name, path in paths.items():
        latencies = []
        for _ in range(requests):
            status, elapsed = _timed(base_url + path)
            if status != 200:
                results[name] = {"status": status}
                break
            latencies.append(elapsed)
        else:
            ordered = sorted(latencies)
            results[name] = {
                "status": 200,
                "p50_ms": round(statistics.median(ordered), 1),
                "p95_ms": round(ordered[max(0, round(len(ordered) * 0.95) - 1)], 1),
                "max_ms": round(ordered[-1], 1),
            }
    return results


def console(options: Options, harness: Harness) -> dict[str, Any]:
    """Seed, serve, and fetch every page; the figures for the report."""
    from bench.run import app_command, say

    size = options.console_size
    with harness.database("console") as database:
        seconds = seed(database.url, connections=size, deliveries=size)
        say(f"console: {size} connections and {size} deliveries seeded in {seconds:.0f}s")
        env = harness.app_env(database.url, workers=1)
        env.update({"CONSOLE_USERNAME": USER, "CONSOLE_PASSWORD": PASSWORD})
        with harness.server(app_command(1), env=env, log_name="console") as service:
            pages_measured = measure(service.url, pages(size), options.console_requests)
    slowest = max(
        (page.get("max_ms", 0.0) for page in pages_measured.values() if "p50_ms" in page),
        default=0.0,
    )
    for name, page in pages_measured.items():
        say(f"  {name}: {page}")
    return {
        "connections": size,
        "deliveries": size,
        "seed_seconds": round(seconds),
        "requests_per_page": options.console_requests,
        "pages": pages_measured,
        "slowest_ms": slowest,
        "target_ms": TARGET_MS,
    }
