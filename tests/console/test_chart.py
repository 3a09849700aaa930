"""The overview's chart: bars per hour, stacked by outcome, within the drawing."""

from __future__ import annotations

from datetime import UTC, datetime

from app.console.chart import HEIGHT, WIDTH, draw, hour_keys

NOW = datetime(2026, 3, 4, 15, 42, tzinfo=UTC)


def test_hours_end_with_the_current_one() -> None:
    keys = hour_keys(NOW, 24)
    assert len(keys) == 24
    assert keys[-1] == "2026-03-04 15"
    assert keys[0] == "2026-03-03 16"


def test_bars_are_stacked_and_scaled_to_the_busiest_hour() -> None:
    chart = draw(
        {
            ("2026-03-04 15", "auth", "applied"): 30,
            ("2026-03-04 15", "sync", "failed"): 10,
            ("2026-03-04 14", "auth", "recorded"): 5,
            ("2026-03-04 14", "auth", "something-new"): 5,
            ("2026-03-01 00", "auth", "applied"): 99,  # older than a day: left out
        },
        now=NOW,
    )
    assert chart.peak == 40
    assert chart.total == 50
    assert {bar.outcome for bar in chart.bars} == {"applied", "failed", "recorded"}
    for bar in chart.bars:
        assert 0 <= bar.x < WIDTH
        assert 0 <= bar.y < HEIGHT
        assert bar.height >= 1
    applied, failed = (bar for bar in chart.bars if bar.label.startswith("2026-03-04 15"))
    assert applied.y > failed.y  # stacked: failed on top of applied
    assert abs(applied.y - (failed.y + failed.height)) < 0.2
    assert [label for _, label in chart.ticks] == ["16:00", "22:00", "04:00", "10:00"]


def test_no_deliveries_draw_no_bars() -> None:
    chart = draw({}, now=NOW)
    assert chart.bars == []
    assert chart.peak == 0
