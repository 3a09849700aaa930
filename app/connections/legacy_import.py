"""Importing legacy connections (IDs the company chose under the public-key flow) from a CSV.

Every row is validated before anything is written, and the rows are written in one transaction:
a file imports completely or not at all, so a fixed file can simply be run again. Rows already
known here are merged (attribution filled in, never erased), so a second run changes nothing.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from typing import Any

from app.connections import store
from app.connections.model import Attribution
from app.db.database import Database
from app.db.types import utcnow

REQUIRED_COLUMNS = ("integration_id", "connection_id", "end_user_id", "organization_id")
OPTIONAL_COLUMNS = ("environment",)
ENVIRONMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
MAX_ID = 255
# Control characters make IDs that no one can type or see; Nango never issues them.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ImportRow:
    line: int
    environment: str
    integration_id: str
    connection_id: str
    end_user_id: str | None
    organization_id: str | None


@dataclass(frozen=True, slots=True)
class Rejection:
    line: int
    reason: str


class CsvHeaderError(ValueError):
    """The file's header cannot be imported at all (missing or unknown columns)."""


def parse_legacy_csv(
    text: str, *, default_environment: str
) -> tuple[list[ImportRow], list[Rejection]]:
    """Every row, validated; the file imports only if the rejections are empty."""
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    unknown = [name for name in header if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        problems = []
        if missing:
            problems.append("missing column(s) " + ", ".join(missing))
        if unknown:
            problems.append("unknown column(s) " + ", ".join(unknown))
        raise CsvHeaderError("; ".join(problems))
    reader.fieldnames = header
    rows: list[ImportRow] = []
    rejections: list[Rejection] = []
    first_seen: dict[tuple[str, str, str], int] = {}
    try:
        for record in reader:
            line = reader.line_num
            row, reason = _check(record, line=line, default_environment=default_environment)
            if row is not None:
                key = (row.environment, row.integration_id, row.connection_id)
                if key in first_seen:
                    reason = f"duplicate of line {first_seen[key]}"
                else:
                    first_seen[key] = line
                    rows.append(row)
            if reason is not None:
                rejections.append(Rejection(line=line, reason=reason))
    except csv.Error as error:
        rejections.append(Rejection(line=reader.line_num, reason=f"unreadable CSV: {error}"))
    if not rows and not rejections:
        rejections.append(Rejection(line=1, reason="the file has no rows"))
    return rows, rejections


def _check(
    record: dict[str | None, str | list[str] | None], *, line: int, default_environment: str
) -> tuple[ImportRow | None, str | None]:
    if None in record:
        return None, "more fields than columns"
    values: dict[str, str] = {}
    for name in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
        raw = record.get(name)
        if raw is None and name in REQUIRED_COLUMNS:
            return None, "fewer fields than columns"
        text = raw.strip() if isinstance(raw, str) else ""
        if len(text) > MAX_ID:
            return None, f"{name} is longer than {MAX_ID} characters"
        if CONTROL.search(text):
            return None, f"{name} contains control characters"
        values[name] = text
    for name in ("integration_id", "connection_id"):
        if not values[name]:
            return None, f"{name} is empty"
    if not values["end_user_id"] and not values["organization_id"]:
        return None, "end_user_id and organization_id are both empty: nothing to attribute"
    environment = values["environment"] or default_environment
    if not ENVIRONMENT.match(environment):
        return None, f"environment {environment!r} is not a Nango environment name"
    return (
        ImportRow(
            line=line,
            environment=environment,
            integration_id=values["integration_id"],
            connection_id=values["connection_id"],
            end_user_id=values["end_user_id"] or None,
            organization_id=values["organization_id"] or None,
        ),
        None,
    )


async def import_rows(database: Database, *, rows: list[ImportRow]) -> tuple[int, int]:
    """Write validated rows in one transaction. Returns (created, updated)."""
    created_count = updated_count = 0
    history: list[dict[str, Any]] = []
    async with database.transaction() as tx:
        for row in rows:
            now = utcnow()
            attribution = Attribution(
                end_user_id=row.end_user_id, organization_id=row.organization_id
            )
            connection, created = await store.lock_connection(
                tx,
                store.new_connection_values(
                    environment=row.environment,
                    integration_id=row.integration_id,
                    connection_id=row.connection_id,
                    attribution=attribution,
                    now=now,
                ),
            )
            changed = not created and await store.merge_attribution(tx, connection, attribution)
            if changed:
                connection.updated_at = now
                await store.save(tx, connection)
            if created or changed:
                history.append(
                    store.history_row(
                        connection,
                        source="import",
                        action="creation" if created else "attribution",
                        to_status=connection.status if created else None,
                        detail={"line": row.line},
                        now=now,
                    )
                )
            created_count += created
            updated_count += changed
        # Last, after every row lock: the feed's order lock is then held only until commit.
        if history:
            await store.record_history(tx, history)
    return created_count, updated_count
