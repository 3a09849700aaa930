"""How times and bodies are shown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.console.rendering import age, iso, pretty_body, utc

NOW = datetime(2026, 3, 4, 15, 0, tzinfo=UTC)


def test_age_reads_at_a_glance() -> None:
    assert age(NOW, NOW) == "just now"
    assert age(NOW - timedelta(seconds=42), NOW) == "42 s ago"
    assert age(NOW - timedelta(minutes=3, seconds=5), NOW) == "3 min ago"
    assert age(NOW - timedelta(hours=5), NOW) == "5 h ago"
    assert age(NOW - timedelta(days=400), NOW) == "400 d ago"
    assert age(NOW + timedelta(hours=2), NOW) == "in 2 h"
    assert age(None) == ""
    assert age(datetime.now(UTC)) == "just now"


def test_times_are_utc() -> None:
    other_zone = NOW.astimezone(datetime.now().astimezone().tzinfo)
    assert utc(other_zone) == "2026-03-04 15:00:00 UTC"
    assert utc(None) == "—"
    assert iso(NOW) == "2026-03-04T15:00:00+00:00"
    assert iso(None) == ""


def test_bodies_are_indented_when_json() -> None:
    assert pretty_body('{"b":1,"a":[1]}') == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}'
    assert pretty_body("not json") == "not json"
