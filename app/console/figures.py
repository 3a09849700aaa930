"""The overview's figures, which would scan large tables: computed at most once per
``CONSOLE_CACHE_SECONDS`` and refreshed in the background while the last ones are shown.

Counting a million connections by status takes tens of milliseconds on Postgres and more on
SQLite; a page that waited for it on every view would not stay under the console's 300 ms.
The first computation starts with the process (``start_figures``), so the first view finds the
figures ready or waits for the one computation under way; after that a view never waits for a
count: when the figures are older than the setting, the page shows them (with their age) and
one task recomputes them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from app.db.database import Database, sql
from app.db.types import utcnow
from app.logs import get_logger
from app.metrics import collect
from app.state import AppState
from app.webhooks.deliveries import count_failed

log = get_logger(__name__)

BY_STATUS = sql(
    "SELECT environment, status, COUNT(*) FROM connections GROUP BY environment, status"
)
# Hours as text, "YYYY-MM-DD HH", the same on both databases: SQLite keeps datetimes as ISO text
# in UTC, Postgres as timestamptz.
DELIVERIES_BY_HOUR = sql(
    "SELECT substr(received_at, 1, 13), COALESCE(webhook_type, 'unknown'), outcome, COUNT(*)"
    " FROM deliveries WHERE received_at >= :since GROUP BY 1, 2, 3",
    postgres=(
        "SELECT to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24'),"
        " COALESCE(webhook_type, 'unknown'), outcome, COUNT(*)"
        " FROM deliveries WHERE received_at >= :since GROUP BY 1, 2, 3"
    ),
)
HOURS = 24


@dataclass(frozen=True)
class Figures:
    computed_at: datetime
    # (environment, status) -> count
    connections: dict[tuple[str, str], int]
    # (hour "YYYY-MM-DD HH", type, outcome) -> count, over the last HOURS hours
    deliveries: dict[tuple[str, str, str], int]
    failed_deliveries: int

    @property
    def environments(self) -> list[str]:
        return sorted({environment for environment, _ in self.connections})

    @property
    def statuses(self) -> list[str]:
        return sorted({status for _, status in self.connections})

    @property
    def by_type_and_outcome(self) -> dict[tuple[str, str], int]:
        totals: Counter[tuple[str, str]] = Counter()
        for (_, webhook_type, outcome), count in self.deliveries.items():
            totals[webhook_type, outcome] += count
        return dict(sorted(totals.items()))


async def compute_figures(database: Database) -> Figures:
    now = utcnow()
    since = (now - timedelta(hours=HOURS - 1)).replace(minute=0, second=0, microsecond=0)
    async with database.reader() as tx:
        statuses = await tx.fetchall(BY_STATUS)
        hours = await tx.fetchall(DELIVERIES_BY_HOUR, {"since": since})
    failed = await count_failed(database)
    return Figures(
        computed_at=now,
        connections={(row[0], row[1]): int(row[2]) for row in statuses},
        deliveries={(row[0], row[1], row[2]): int(row[3]) for row in hours},
        failed_deliveries=failed,
    )


@dataclass
class FigureCache:
    """The last figures, and the one task refreshing them."""

    max_age_seconds: float
    figures: Figures | None = None
    loaded_at: float = field(default=-1e18)
    refreshing: asyncio.Task[None] | None = None

    def prime(self, load: Callable[[], Awaitable[Figures]]) -> asyncio.Task[None]:
        """Start computing now (at start-up), so that the first view finds the figures ready."""
        self.refreshing = asyncio.create_task(self._refresh(load), name="console-figures")
        return self.refreshing

    async def get(self, load: Callable[[], Awaitable[Figures]]) -> Figures:
        if self.figures is None and self.refreshing is not None and not self.refreshing.done():
            await asyncio.shield(self.refreshing)
        if self.figures is None:
            self.figures = await load()
            self.loaded_at = time.monotonic()
            return self.figures
        stale = time.monotonic() - self.loaded_at > self.max_age_seconds
        if stale and (self.refreshing is None or self.refreshing.done()):
            self.refreshing = asyncio.create_task(self._refresh(load), name="console-figures")
        return self.figures

    async def _refresh(self, load: Callable[[], Awaitable[Figures]]) -> None:
        try:
            self.figures = await load()
            self.loaded_at = time.monotonic()
        except Exception as error:  # the page keeps the last figures; the next view retries
            log.warning("console_figures_failed", error_type=type(error).__name__)


def start_figures(state: AppState) -> asyncio.Task[None]:
    """The console's figure cache, its first computation started (``lifespan``, console on)."""
    state.console_figures = FigureCache(state.settings.console_cache_seconds)
    return state.console_figures.prime(lambda: compute_figures(state.database))


def signature_failures(multiprocess_dir: str | None) -> dict[str, int]:
    """Refused webhook signatures by reason, since the process (or the workers) started.

    Refused deliveries are not stored (only verified ones are), so the counter is the record.
    """
    reasons: dict[str, int] = {}
    for metric in collect(multiprocess_dir=multiprocess_dir).collect():
        if metric.name != "nango_registry_webhook_signature_failures":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                reason = sample.labels.get("reason", "unknown")
                reasons[reason] = reasons.get(reason, 0) + int(sample.value)
    return reasons
