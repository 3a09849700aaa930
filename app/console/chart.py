"""The overview's chart: deliveries per hour over the last day, stacked by outcome, drawn on the
server as SVG shapes (no script, no inline style: colours come from classes in console.css)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

OUTCOMES = ("applied", "recorded", "failed")
WIDTH = 720
HEIGHT = 160
AXIS = 20  # room for the hour labels under the bars
BAR_GAP = 2


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    outcome: str
    label: str  # read by screen readers and shown as a tooltip


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    ticks: list[tuple[float, str]]  # (x, "HH:00") every few hours
    peak: int
    total: int


def hour_keys(now: datetime, hours: int) -> list[str]:
    """The last ``hours`` hours as "YYYY-MM-DD HH" keys, oldest first, the current one last."""
    current = now.replace(minute=0, second=0, microsecond=0)
    return [
        (current - timedelta(hours=back)).strftime("%Y-%m-%d %H")
        for back in range(hours - 1, -1, -1)
    ]


def draw(counts: dict[tuple[str, str, str], int], *, now: datetime, hours: int = 24) -> Chart:
    """Bars from ``(hour, type, outcome) -> count`` (types are summed)."""
    keys = hour_keys(now, hours)
    per_hour = {key: dict.fromkeys(OUTCOMES, 0) for key in keys}
    for (hour, _, outcome), count in counts.items():
        if hour in per_hour:
            bucket = per_hour[hour]
            bucket[outcome if outcome in bucket else "recorded"] += count
    peak = max((sum(bucket.values()) for bucket in per_hour.values()), default=0)
    scale = (HEIGHT - AXIS) / peak if peak else 0.0
    slot = WIDTH / hours
    bars: list[Bar] = []
    ticks: list[tuple[float, str]] = []
    for index, key in enumerate(keys):
        x = index * slot + BAR_GAP / 2
        base = float(HEIGHT - AXIS)
        for outcome in OUTCOMES:
            count = per_hour[key][outcome]
            if not count:
                continue
            height = max(count * scale, 1.0)
            base -= height
            label = f"{key}:00 UTC: {count} {outcome}"
            bars.append(
                Bar(
                    round(x, 1),
                    round(base, 1),
                    round(slot - BAR_GAP, 1),
                    round(height, 1),
                    outcome,
                    label,
                )
            )
        if index % 6 == 0:
            ticks.append((round(x, 1), f"{key[-2:]}:00"))
    total = sum(sum(bucket.values()) for bucket in per_hour.values())
    return Chart(WIDTH, HEIGHT, bars, ticks, peak, total)
