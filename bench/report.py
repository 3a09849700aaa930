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


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target; ``required`` rows say whether the comparison is sound at all."""
    comparisons: dict[str, Any] = results.get("comparisons", {})
    checks: list[dict[str, Any]] = []

    def check(
        name: str, value: float | None, target: str, met: bool | None, required: bool = False
    ) -> None:
        checks.append(
            {"check": name, "value": value, "target": target, "met": met, "required": required}
        )

    for key, comparison in comparisons.items():
        value = comparison.get("ratio")
        if key in TARGETED:
            met = None if value is None else value >= TARGET_RATIO
            check(f"{comparison['label']}: service ÷ reference", value, f">= {TARGET_RATIO}", met)
        else:
            check(f"{comparison['label']}: service ÷ reference", value, "reported", None)
        if key == "postgres_ingest_1w":
            p99 = (comparison.get("service") or {}).get("p99_ms")
            met = None if p99 is None else p99 < TARGET_INGEST_P99_MS
            check(
                f"{comparison['label']}: service p99 (ms)", p99, f"< {TARGET_INGEST_P99_MS:g}", met
            )

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
    comparisons: dict[str, Any] = results.get("comparisons", {})
    lines = [
        "| Measurement | Service req/s | Reference req/s | Service ÷ reference |"
        " Service p99 ms | Reference p99 ms | Service CPU ms/req | Reference CPU ms/req |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for comparison in comparisons.values():
        service, reference = comparison.get("service") or {}, comparison.get("reference") or {}
        cells = [
            _number(service.get("rps")),
            _number(reference.get("rps")),
            _number(comparison.get("ratio"), 2),
            *(_number(r.get("p99_ms"), 1) for r in (service, reference)),
            *(_number(r.get("cpu_ms_per_request"), 2) for r in (service, reference)),
        ]
        lines.append(f"| {comparison['label']} | {' | '.join(cells)} |")

    lines += [
        "",
        "| Measurement | req/s | p50 ms | p99 ms | CPU ms/req | Notes |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]

    def row(name: str, result: dict[str, Any] | None, notes: str = "") -> None:
        if not result:
            return
        if "skipped" in result:
            lines.append(f"| {name} | | | | | skipped: {result['skipped']} |")
            return
        cpu = _number(result.get("cpu_ms_per_request"), 2)
        lines.append(
            f"| {name} | {result['rps']:.0f} | {result['p50_ms']:.2f} | {result['p99_ms']:.2f} |"
            f" {cpu} | {notes} |"
        )

    http = results.get("http_ceiling", {})
    row("HTTP ceiling: bare Starlette GET", http.get("get"))
    row("HTTP ceiling: bare Starlette POST (webhook bodies)", http.get("post"))
    row("DB ceiling: pgbench, receiver transaction", results.get("db_ceiling"), "tx/s")
    for comparison in comparisons.values():
        for kind in ("service", "reference"):
            result = comparison.get(kind)
            notes = f"non-2xx {result['failed']}" if result else ""
            if result and "correctness" in result:
                correctness = result["correctness"]
                notes = (
                    f"RSS {', '.join(f'{mb:.0f}' for mb in result['rss_mb'])} MB;"
                    f" {correctness['acknowledged']} acknowledged, {correctness['stored']} stored;"
                    f" {correctness['verdict']}; {notes}"
                )
            row(f"{comparison['label']}, {kind}", result, notes)
    scale = results.get("lookup_scale", {})
    if "skipped" in scale:
        row("Lookup by end user", scale)
    else:
        for size, result in scale.items():
            row(f"Postgres list by end user, {int(size):,} connections, service", result, "scale")
    lines.append("")
    for size, result in results.get("reconcile", {}).items():
        lines.append(
            f"Reconcile from the fake Nango, {int(size):,} connections: {result['seconds']} s"
            f" (second run, nothing to change: {result['second_run_seconds']} s)."
        )
    if "seconds" in results:
        lines.append(f"Run time: {results['seconds'] // 60} min {results['seconds'] % 60} s.")

    lines += ["", "| Target | Value | Goal | Met |", "| --- | ---: | ---: | --- |"]
    for check in results.get("targets", []):
        met = {True: "yes", False: "**no**", None: "not measured"}[check["met"]]
        if check["target"] == "reported":
            met = "(reported)"
        value = "" if check["value"] is None else f"{check['value']:g}"
        lines.append(f"| {check['check']} | {value} | {check['target']} | {met} |")
    return "\n".join(lines)
