"""The overview's figures: cached, refreshed in the background, never waited for twice."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from app.console import figures as figures_module
from app.console.figures import FigureCache, Figures, signature_failures
from app.metrics import SIGNATURE_FAILURES


def _figures(failed: int) -> Figures:
    return Figures(
        computed_at=datetime(2026, 1, 1, tzinfo=UTC),
        connections={("prod", "active"): 2, ("dev", "deleted"): 1},
        deliveries={
            ("2026-01-01 00", "auth", "applied"): 3,
            ("2026-01-01 01", "auth", "failed"): 1,
        },
        failed_deliveries=failed,
    )


def test_figures_group_what_the_page_shows() -> None:
    shown = _figures(0)
    assert shown.environments == ["dev", "prod"]
    assert shown.statuses == ["active", "deleted"]
    assert shown.by_type_and_outcome == {("auth", "applied"): 3, ("auth", "failed"): 1}


class Loader:
    """Figures whose failed count is the number of computations so far."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> Figures:
        self.calls += 1
        return _figures(self.calls)


@pytest.mark.anyio
async def test_the_first_view_waits_then_stale_figures_are_refreshed_behind() -> None:
    load = Loader()
    cache = FigureCache(max_age_seconds=0.0)
    assert (await cache.get(load)).failed_deliveries == 1
    # Stale: the last figures are answered at once, one refresh runs behind.
    assert (await cache.get(load)).failed_deliveries == 1
    assert (await cache.get(load)).failed_deliveries == 1
    assert cache.refreshing is not None
    await cache.refreshing
    assert load.calls == 2
    assert (await cache.get(load)).failed_deliveries == 2


@pytest.mark.anyio
async def test_fresh_figures_are_not_recomputed() -> None:
    load = Loader()
    cache = FigureCache(max_age_seconds=3600.0)
    await cache.get(load)
    await cache.get(load)
    await asyncio.sleep(0)
    assert load.calls == 1
    assert cache.refreshing is None


@pytest.mark.anyio
async def test_a_failed_refresh_keeps_the_last_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = 0

    async def load() -> Figures:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            raise OSError("the database went away")
        return _figures(7)

    cache = FigureCache(max_age_seconds=0.0)
    await cache.get(load)
    await cache.get(load)
    assert cache.refreshing is not None
    await cache.refreshing
    assert (await cache.get(load)).failed_deliveries == 7


def test_signature_failures_read_the_counter() -> None:
    before = signature_failures(None).get("mismatch", 0)
    SIGNATURE_FAILURES.labels(reason="mismatch").inc()
    assert signature_failures(None)["mismatch"] == before + 1
    assert figures_module.HOURS == 24


@pytest.mark.anyio
async def test_a_primed_cache_answers_its_first_view_from_the_start_up_computation() -> None:
    calls = 0
    release = asyncio.Event()

    async def load() -> Figures:
        nonlocal calls
        calls += 1
        await release.wait()
        return _figures(calls)

    cache = FigureCache(max_age_seconds=3600.0)
    task = cache.prime(load)
    view = asyncio.ensure_future(cache.get(load))
    await asyncio.sleep(0)
    release.set()
    assert (await view).failed_deliveries == 1
    await task
    assert calls == 1
