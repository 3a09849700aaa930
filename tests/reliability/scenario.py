"""Shared parts of the load scenarios: the server's settings and the stored-exactly-once check."""

from __future__ import annotations

from collections import Counter
from typing import Any

import psycopg

from tests.conftest import TEST_API_KEY, TEST_SIGNING_KEY
from tests.reliability.pgcluster import PgCluster
from tests.reliability.sender import Delivery

NANGO_SECRET = "nango-secret-key-reliability-7c1e2b9d4f"  # distinctive: scanned for in logs
SECRET_KEY = "cursor-secret-key-reliability-3a8f6e0c21"


def server_env(cluster: PgCluster, nango_host: str = "http://127.0.0.1:9") -> dict[str, str]:
    return {
        "DATABASE_URL": cluster.url,
        "NANGO_WEBHOOK_SIGNING_KEYS": TEST_SIGNING_KEY,
        "REGISTRY_API_KEYS": TEST_API_KEY,
        "NANGO_SECRET_KEY": NANGO_SECRET,
        "NANGO_HOST": nango_host,
        "NANGO_ENVIRONMENT": "prod",
        "SECRET_KEY": SECRET_KEY,
        "LOG_LEVEL": "info",
        "DATABASE_POOL_TIMEOUT_SECONDS": "5",
    }


def stored_counts(cluster: PgCluster) -> Counter[str]:
    with psycopg.connect(cluster.admin_conninfo.rsplit("/", 1)[0] + f"/{cluster.database}") as c:
        rows = c.execute("SELECT dedupe_key, count(*) FROM deliveries GROUP BY dedupe_key")
        return Counter({key: int(number) for key, number in rows})


def stored_connections(cluster: PgCluster) -> dict[str, str | None]:
    with psycopg.connect(cluster.admin_conninfo.rsplit("/", 1)[0] + f"/{cluster.database}") as c:
        rows = c.execute("SELECT connection_id, end_user_id FROM connections")
        return {connection_id: end_user_id for connection_id, end_user_id in rows}


def reset(cluster: PgCluster) -> None:
    with psycopg.connect(cluster.admin_conninfo.rsplit("/", 1)[0] + f"/{cluster.database}") as c:
        c.execute(
            "TRUNCATE connection_events, connection_tags, deliveries, connections "
            "RESTART IDENTITY CASCADE"
        )


def check_stored_exactly_once(cluster: PgCluster, deliveries: list[Delivery]) -> dict[str, Any]:
    """Every acknowledged delivery is stored exactly once; nothing unknown is stored."""
    counts = stored_counts(cluster)
    sent = {delivery.dedupe_key: delivery for delivery in deliveries}
    acknowledged = [delivery for delivery in deliveries if delivery.acknowledged]
    not_once = {
        delivery.connection_id: counts.get(delivery.dedupe_key, 0)
        for delivery in acknowledged
        if counts.get(delivery.dedupe_key, 0) != 1
    }
    assert not not_once, f"acknowledged deliveries not stored exactly once: {not_once}"
    unknown = [key for key in counts if key not in sent]
    assert not unknown, f"stored deliveries that were never sent (or archived twice): {unknown}"
    connections = stored_connections(cluster)
    missing = [d.connection_id for d in acknowledged if d.connection_id not in connections]
    assert not missing, f"acknowledged creations without a connection: {missing}"
    wrong_owner = [
        d.connection_id for d in acknowledged if connections[d.connection_id] != d.end_user_id
    ]
    assert not wrong_owner, f"connections stored with the wrong owner: {wrong_owner}"
    lost = [delivery for delivery in deliveries if delivery.lost]
    return {
        "deliveries_sent": len(deliveries),
        "attempts": sum(len(delivery.attempts) for delivery in deliveries),
        "acknowledged": len(acknowledged),
        "stored": sum(counts.values()),
        "stored_exactly_once": len(acknowledged) - len(not_once),
        "stored_but_not_acknowledged": sum(1 for d in lost if counts.get(d.dedupe_key)),
        "lost_by_a_nango_like_sender": len(lost),
    }
