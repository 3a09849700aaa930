"""The report of a bench run: the service ÷ reference table, every measurement, the targets."""

from __future__ import annotations

from typing import Any

# Targets of the issue "Hot paths at the speed of the stack", checked on every run: the service
# within 0.8 of the reference handler on each hot path (Postgres and SQLite), a bounded tail.
TARGET_RATIO = 0.8
TARGETED = (
    "postgres_ingest_1w",
    "postgres_lookup",
    "postgres_getbyid",
    "postgres_summary",
    "sqlite_ingest_1w",
    "sqlite_lookup",
)
TARGET_INGEST_P99_MS = 60.0
# Kept from the earlier rounds: lookups do not slow down as the table grows; memory stays bounded.
TARGET_SCALE_RATIO = 0.9
TARGET_RSS_MB = 150.0
# Per-round ratios further apart than this get a note: the machine drifted within the run.
SPREAD_NOTE = 0.15


def ratio(numerator: dict[str, Any] | None, denominator: dict[str, Any] | None) -> float | None:
    if not numerator or not denominator or "rps" not in numerator or "rps" not in denominator:
        return None
    if not denominator["rps"]:
        return None
    return round(float(numerator["rps"]) / float(denominator["rps"]), 3)


def round_ratios(comparison: dict[str, Any]) -> list[float | None]:
    """Service ÷ reference of each round (round *i* of both sides ran back to back)."""
    service, reference = comparison.get("service"), comparison.get("reference")
    if not service or not reference:
        return []
    return [ratio(s, r) for s, r in zip(service["rounds"], reference["rounds"], strict=True)]


def spread(comparison: dict[str, Any]) -> tuple[float, float] | None:
    """The lowest and highest per-round ratio, when there are two or more."""
    values = [value for value in comparison.get("round_ratios", []) if value is not None]
    return (min(values), max(values)) if len(values) > 1 else None


def spread_note(comparison: dict[str, Any]) -> str:
    """A warning when the per-round ratios differ by more than ``SPREAD_NOTE``."""
    bounds = spread(comparison)
    if bounds is None or bounds[1] - bounds[0] <= SPREAD_NOTE:
        return ""
    low, high = bounds
    return (
        f"per-round ratios {low:.2f} to {high:.2f} (spread {high - low:.2f} > {SPREAD_NOTE:g}):"
        " the machine drifted within the run; rerun before trusting a small difference"
    )


def _console_verdict(results: dict[str, Any]) -> list[dict[str, Any]]:
    console = results.get("console")
    if not console:
        return []
    slowest = console["slowest_ms"]
    failed = [name for name, page in console["pages"].items() if page.get("status") != 200]
    return [
        {
            "check": "console: slowest page, max ms",
            "value": slowest,
            "target": f"< {console['target_ms']:g}",
            "met": slowest < console["target_ms"] and not failed,
            "required": False,
            "note": f"pages not answering 200: {', '.join(failed)}" if failed else "",
        }
    ]


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target; ``required`` rows say whether the comparison is sound at all."""
    comparisons: dict[str, Any] = results.get("comparisons", {})
    checks: list[dict[str, Any]] = []

    def check(
        name: str,
        value: float | None,
        target: str,
        met: bool | None,
        required: bool = False,
        note: str = "",
    ) -> None:
        checks.append(
            {
                "check": name,
                "value": value,
                "target": target,
                "met": met,
                "required": required,
                "note": note,
            }
        )

    for key, comparison in comparisons.items():
        value = comparison.get("ratio")  # all rounds: total answered ÷ total seconds, per side
        name = f"{comparison['label']}: service ÷ reference"
        if key in TARGETED:
            met = None if value is None else value >= TARGET_RATIO
            check(name, value, f">= {TARGET_RATIO}", met, note=spread_note(comparison))
        else:
            check(name, value, "reported", None, note=spread_note(comparison))
        if key == "postgres_ingest_1w":
            p99 = (comparison.get("service") or {}).get("p99_ms")
            met = None if p99 is None else p99 < TARGET_INGEST_P99_MS
            check(
                f"{comparison['label']}: service p99 (ms)", p99, f"< {TARGET_INGEST_P99_MS:g}", met
            )

    checks += _console_verdict(results)

    scale = results.get("lookup_scale", {})
    sizes = sorted(int(size) for size in scale if size != "skipped")
    if len(sizes) > 1:
        value = ratio(scale[str(sizes[-1])], scale[str(sizes[0])])
        met = None if value is None else value >= TARGET_SCALE_RATIO
        name = f"service list by end user, {sizes[-1]:,} ÷ {sizes[0]:,} connections"
        check(name, value, f">= {TARGET_SCALE_RATIO}", met)

    ingests = [c for key, c in comparisons.items() if "_ingest_" in key]
    rss = [mb for c in ingests if c.get("service") for mb in c["service"]["rss_mb"]]
    if rss:
        check(
            "service worker RSS after ingest (MB)",
            max(rss),
            f"< {TARGET_RSS_MB:g}",
            max(rss) < TARGET_RSS_MB,
        )
    for kind in ("service", "reference"):
        stored = [c[kind]["correctness"]["ok"] for c in ingests if c.get(kind)]
        if stored:
            check(f"{kind}: acknowledged deliveries stored once", None, "all", all(stored), True)
    answered = [c["answers"]["different"] == 0 for c in comparisons.values() if "answers" in c]
    if answered:
        check("reference answers the same JSON as the service", None, "all", all(answered), True)
    return checks


def _number(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    return "\n".join(
        [
            *_comparisons(results),
            "",
            *_details(results),
            "",
            *_footer(results),
            "",
            *_console(results),
            *_targets(results),
        ]
    )


def _comparisons(results: dict[str, Any]) -> list[str]:
    """Service beside reference, one row per pair, with the drift notes."""
    options = results.get("options", {})
    lines = []
    if "rounds" in options:
        rounds, seconds = options["rounds"], options["duration"] / options["rounds"]
        lines += [
            f"Each pair in {rounds} alternating rounds of {seconds:.0f} s per server (service,"
            " reference, reference, service, ...); req/s and CPU over all rounds, p50 and p99"
            " from the latencies of all rounds merged.",
            "",
        ]
    lines += [
        "| Measurement | Service req/s | Reference req/s | Service ÷ reference |"
        " Per-round ratios, min to max | Service p50 ms (merged) | Reference p50 ms (merged) |"
        " Service p99 ms (merged) | Reference p99 ms (merged) | Service CPU ms/req |"
        " Reference CPU ms/req |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    drifted = []
    for comparison in results.get("comparisons", {}).values():
        service, reference = comparison.get("service") or {}, comparison.get("reference") or {}
        bounds = spread(comparison)
        cells = [
            _number(service.get("rps")),
            _number(reference.get("rps")),
            _number(comparison.get("ratio"), 2),
            "" if bounds is None else f"{bounds[0]:.2f} to {bounds[1]:.2f}",
            *(_number(r.get("p50_ms"), 1) for r in (service, reference)),
            *(_number(r.get("p99_ms"), 1) for r in (service, reference)),
            *(_number(r.get("cpu_ms_per_request"), 2) for r in (service, reference)),
        ]
        lines.append(f"| {comparison['label']} | {' | '.join(cells)} |")
        if spread_note(comparison):
            drifted.append(f"Note, {comparison['label']}: {spread_note(comparison)}.")
    return lines + (["", *drifted] if drifted else [])


def _row(name: str, result: dict[str, Any] | None, notes: str = "") -> list[str]:
    if not result:
        return []
    if "skipped" in result:
        return [f"| {name} | | | | | skipped: {result['skipped']} |"]
    cpu = _number(result.get("cpu_ms_per_request"), 2)
    return [
        f"| {name} | {result['rps']:.0f} | {result['p50_ms']:.2f} | {result['p99_ms']:.2f} |"
        f" {cpu} | {notes} |"
    ]


def _notes(result: dict[str, Any]) -> str:
    notes = f"non-2xx {result['failed']}"
    if "correctness" in result:
        correctness = result["correctness"]
        notes = (
            f"RSS {', '.join(f'{mb:.0f}' for mb in result['rss_mb'])} MB;"
            f" {correctness['acknowledged']} acknowledged, {correctness['stored']} stored;"
            f" {correctness['verdict']}; {notes}"
        )
    if len(result.get("rounds", [])) > 1:
        each = ", ".join(f"{r['rps']:.0f}" for r in result["rounds"])
        notes = f"{notes}; rounds {each} req/s"
    return notes


def _details(results: dict[str, Any]) -> list[str]:
    """Every measurement on its own row, the ceilings for context."""
    lines = [
        "| Measurement | req/s | p50 ms | p99 ms | CPU ms/req | Notes |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    http = results.get("http_ceiling", {})
    lines += _row("HTTP ceiling: bare Starlette GET", http.get("get"))
    lines += _row("HTTP ceiling: bare Starlette POST (webhook bodies)", http.get("post"))
    lines += _row("DB ceiling: pgbench, receiver transaction", results.get("db_ceiling"), "tx/s")
    for comparison in results.get("comparisons", {}).values():
        for kind in ("service", "reference"):
            result = comparison.get(kind)
            if result:
                lines += _row(f"{comparison['label']}, {kind}", result, _notes(result))
    scale = results.get("lookup_scale", {})
    if "skipped" in scale:
        return lines + _row("Lookup by end user", scale)
    for size, result in scale.items():
        lines += _row(
            f"Postgres list by end user, {int(size):,} connections, service", result, "scale"
        )
    return lines


def _footer(results: dict[str, Any]) -> list[str]:
    lines = [
        f"Reconcile from the fake Nango, {int(size):,} connections: {result['seconds']} s"
        f" (second run, nothing to change: {result['second_run_seconds']} s)."
        for size, result in results.get("reconcile", {}).items()
    ]
    if "seconds" in results:
        lines.append(f"Run time: {results['seconds'] // 60} min {results['seconds'] % 60} s.")
    return lines


def _console(results: dict[str, Any]) -> list[str]:
    """The console's pages on a million connections and deliveries, one request at a time."""
    console = results.get("console")
    if not console:
        return []
    lines = [
        f"Console pages, {console['connections']:,} connections and {console['deliveries']:,}"
        f" deliveries, {console['requests_per_page']} requests each, one at a time:",
        "",
        "| Page | p50 ms | p95 ms | max ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, page in console["pages"].items():
        if "p50_ms" in page:
            lines.append(f"| {name} | {page['p50_ms']} | {page['p95_ms']} | {page['max_ms']} |")
        elif "ms" in page:
            lines.append(f"| {name} | {page['ms']} | | |")
        else:
            lines.append(f"| {name} | HTTP {page['status']} | | |")
    return [*lines, ""]


def _targets(results: dict[str, Any]) -> list[str]:
    lines = ["| Target | Value | Goal | Met | Note |", "| --- | ---: | ---: | --- | --- |"]
    for check in results.get("targets", []):
        met = {True: "yes", False: "**no**", None: "not measured"}[check["met"]]
        if check["target"] == "reported":
            met = "(reported)"
        value = "" if check["value"] is None else f"{check['value']:g}"
        note = check.get("note", "")
        lines.append(f"| {check['check']} | {value} | {check['target']} | {met} | {note} |")
    return lines
