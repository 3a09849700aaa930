"""Prometheus metrics. Every module counts through the objects defined here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)

WEBHOOK_DELIVERIES = Counter(
    "nango_registry_webhook_deliveries",
    "Webhook deliveries by type and outcome (applied, recorded, failed, duplicate, rejected)",
    ["type", "outcome"],
)
SIGNATURE_FAILURES = Counter(
    "nango_registry_webhook_signature_failures",
    "Webhook requests refused because the signature did not verify",
    ["reason"],
)
AUTH_FAILURES = Counter(
    "nango_registry_auth_failures",
    "API requests refused for their credentials, by reason (missing, malformed, unknown_key,"
    " read_only, duplicate_header)",
    ["reason"],
)
QUERY_TIMEOUTS = Counter(
    "nango_registry_query_timeouts",
    "Database work cut off at DATABASE_STATEMENT_TIMEOUT_SECONDS (answered 503), by route",
    ["route"],
)
LOOKUPS = Counter(
    "nango_registry_lookups",
    "Lookup API requests by route",
    ["route"],
)
RECONCILE_RUNS = Counter(
    "nango_registry_reconcile_runs",
    "Reconciliation runs by trigger and result",
    ["trigger", "status"],
)
DETAIL_FETCHES = Counter(
    "nango_registry_connection_detail_fetches",
    "Background fetches of a connection's configuration and metadata after a webhook, by"
    " outcome (fetched, unknown, failed, dropped)",
    ["outcome"],
)
FEED_EVENTS_APPENDED = Counter(
    "nango_registry_feed_events_appended",
    "Change-feed events appended, by type (counted when written, before their commit)",
    ["type"],
)
DATABASE_ERRORS = Counter(
    "nango_registry_database_errors",
    "Database operations that failed (answered 503)",
    ["operation"],
)
SUBSCRIPTION_ATTEMPTS = Counter(
    "nango_registry_subscription_attempts",
    "Requests to subscribers by outcome (succeeded, failed, timeout, error)",
    ["outcome"],
)
SUBSCRIPTION_DELIVERIES = Counter(
    "nango_registry_subscription_deliveries",
    "Deliveries to subscribers that ended (succeeded, or failed once the schedule ran out)",
    ["status"],
)
# The same figure in every process (each reads it from the database): the live maximum.
SUBSCRIPTION_BACKLOG_AGE = Gauge(
    "nango_registry_subscription_backlog_age_seconds",
    "Age of the oldest delivery still pending for an active subscription (0: none)",
    multiprocess_mode="livemax",
)
REQUEST_LATENCY = Histogram(
    "nango_registry_request_duration_seconds",
    "HTTP request latency by route template and status class",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def collect(*, multiprocess_dir: str | None) -> CollectorRegistry:
    """The registry to expose: this process's, or every worker's when they share a directory.

    With several uvicorn workers each process counts on its own; prometheus_client's multiprocess
    mode has every worker write its samples to files in ``PROMETHEUS_MULTIPROC_DIR`` and sums
    them at scrape time, so any worker answers for all of them.
    """
    if multiprocess_dir is None:
        return REGISTRY
    registry = CollectorRegistry()
    # prometheus_client ships this constructor without annotations.
    multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    return registry


# Requests that match no route are counted under one label: raw paths would let any scanner
# create unbounded time series. Unusual methods are folded for the same reason.
UNMATCHED_ROUTE = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Mapping[str, Any]) -> str:
    """The path template of the route Starlette matched (it records it in the shared scope)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


# Label children by (method, route, status class): a bounded set (see above), looked up once.
_LATENCY_CHILDREN: dict[tuple[str, str, int], Any] = {}


def observe_request(*, scope: Mapping[str, Any], status: int, seconds: float) -> None:
    key = (scope["method"], route_template(scope), status // 100)
    child = _LATENCY_CHILDREN.get(key)
    if child is None:
        method = key[0] if key[0] in _METHODS else "OTHER"
        child = REQUEST_LATENCY.labels(method=method, route=key[1], status=f"{key[2]}xx")
        if key[0] in _METHODS:
            _LATENCY_CHILDREN[key] = child
    child.observe(seconds)
