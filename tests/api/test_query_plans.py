"""Lookups by end user, organization, integration and tag are driven by an index.

The plans are read from the database itself, over enough rows (and fresh statistics) that a
planner that preferred a full scan would show it: ``EXPLAIN`` on Postgres, ``EXPLAIN QUERY PLAN``
on SQLite.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, text

from app.connections.queries import connections_query

ROWS = 20_000

_SERIES = {
    "postgresql": "SELECT i FROM generate_series(1, :n) AS i",
    "sqlite": "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :n) "
    "SELECT i FROM s",
}
_CONCAT = {"postgresql": "{0} || ({1})::text", "sqlite": "{0} || ({1})"}


@pytest.fixture
def many_connections(sync_engine: Engine) -> Engine:
    dialect = sync_engine.dialect.name
    series = _SERIES[dialect]

    def concat(prefix: str, expression: str) -> str:
        return _CONCAT[dialect].format(f"'{prefix}'", expression)

    # The SQL is assembled from the constants above only (hence the S608 exemptions).
    with sync_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO connections (environment, integration_id, connection_id, "  # noqa: S608
                "end_user_id, organization_id, tags, status, created_at, updated_at) "
                f"SELECT 'prod', {concat('int-', 'i % 400')}, {concat('c-', 'i')}, "
                f"{concat('user-', 'i % 5000')}, {concat('org-', 'i % 1000')}, '{{}}', "
                f"'active', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP FROM ({series}) AS series"
            ),
            {"n": ROWS},
        )
        conn.execute(
            text(
                "INSERT INTO connection_tags (connection_pk, key, value) "  # noqa: S608
                f"SELECT id, 'team', {concat('team-', 'id % 2000')} FROM connections"
            )
        )
        conn.execute(
            text("ANALYZE" if dialect == "sqlite" else "ANALYZE connections, connection_tags")
        )
    return sync_engine


def plan(engine: Engine, **filters: Any) -> str:
    """The plan of the very statement the service sends, with its parameters bound."""
    statement, params = connections_query(limit=50, **filters)
    if engine.dialect.name == "postgresql":
        sql = "EXPLAIN " + statement.postgres
    else:
        sql = "EXPLAIN QUERY PLAN " + statement.sqlite
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(sql, params).all()
    return "\n".join(str(row[-1]) for row in rows)


LOOKUPS: list[tuple[dict[str, Any], str]] = [
    ({"end_user_id": "user-42"}, "ix_connections_end_user_id_id"),
    ({"organization_id": "org-42"}, "ix_connections_organization_id_id"),
    ({"integration_id": "int-42"}, "ix_connections_integration_id_id"),
    ({"tags": {"team": "team-42"}}, "ix_connection_tags_key_value_connection"),
    # The next page of a lookup keeps the same index.
    ({"end_user_id": "user-42", "after_id": 10_000}, "ix_connections_end_user_id_id"),
]


def test_lookups_use_an_index(many_connections: Engine) -> None:
    # One test over one data set: loading 20 000 rows per case would slow the suite down.
    for filters, index in LOOKUPS:
        text_plan = plan(many_connections, **filters)
        assert index in text_plan, (filters, text_plan)
        assert "Seq Scan on connections" not in text_plan, (filters, text_plan)
        # SQLite: "SCAN connections" alone is a full table scan.
        assert "SCAN connections\n" not in text_plan + "\n", (filters, text_plan)
