"""The records the code reads rows into agree with the tables the migrations create."""

from __future__ import annotations

from sqlmodel import SQLModel

import app.db.tables  # noqa: F401  (registers the tables on the metadata)
from app.connections.model import CONNECTION_FIELDS
from app.connections.store import MUTABLE_COLUMNS, NEW_COLUMNS


def columns(table: str) -> list[str]:
    return [column.name for column in SQLModel.metadata.tables[table].columns]


def test_connection_record_has_every_column_in_table_order() -> None:
    # Rows are built by position (Connection(*row)) from SELECT COLUMNS: the order matters.
    assert list(CONNECTION_FIELDS) == columns("connections")


def test_inserts_and_updates_name_real_columns() -> None:
    known = set(columns("connections"))
    assert set(NEW_COLUMNS) <= known
    assert set(MUTABLE_COLUMNS) <= known
    # The identity of a connection never changes once stored.
    assert not {"id", "environment", "integration_id", "connection_id"} & set(MUTABLE_COLUMNS)
