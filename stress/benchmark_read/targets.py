"""Every target `make bench-read` checks, as data, in one place (as in `stress.benchmark`).

A target names a measured number of a probe (or of the export), the bound and
the threshold; its text in BENCHMARKS.md is written from the threshold, so
the two cannot disagree. Latency targets hold the HTTP p95 of 20 runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from stress.benchmark.targets import Bound, Check

from .results import MIB, ReadResults


@dataclass(frozen=True)
class ReadTarget:
    text: str  # as BENCHMARKS.md shows it; format field: {threshold}
    measured: Callable[[ReadResults], float | None]  # None: not measured this run
    bound: Bound
    threshold: float
    shown: str  # a format string for the measured value

    def check(self, results: ReadResults) -> Check | None:
        value = self.measured(results)
        if value is None:
            return None
        return Check(
            text=self.text.format(threshold=self.threshold),
            met=self.bound.holds(value, self.threshold),
            measured=self.shown.format(value),
        )


def http_p95(*keys: str) -> Callable[[ReadResults], float | None]:
    """The slowest HTTP p95 among the probes ``keys`` (those measured)."""

    def measured(results: ReadResults) -> float | None:
        found = [p.http.p95_ms for key in keys if (p := results.probe(key)) is not None]
        return max(found) if found else None

    return measured


TARGETS: tuple[ReadTarget, ...] = (
    ReadTarget(
        "30-day daily series p95 ≤ {threshold:g} ms", http_p95("series"), Bound.AT_MOST, 100,
        "{:.1f} ms",
    ),
    ReadTarget(
        "top-20 breakdown by a property p95 ≤ {threshold:g} ms", http_p95("top_property"),
        Bound.AT_MOST, 100, "{:.1f} ms",
    ),
    ReadTarget(
        "DAU/WAU/MAU over 90 days p95 ≤ {threshold:g} ms (the slowest of the three)",
        http_p95("users_day", "users_week", "users_month"), Bound.AT_MOST, 300, "{:.1f} ms",
    ),
    ReadTarget(
        "latency p50/p95/p99 by route over 7 days p95 ≤ {threshold:g} ms", http_p95("latency"),
        Bound.AT_MOST, 500, "{:.1f} ms",
    ),
    ReadTarget(
        "3-step funnel over 30 days p95 ≤ {threshold:g} ms", http_p95("funnel"), Bound.AT_MOST,
        2000, "{:.0f} ms",
    ),
    ReadTarget(
        "one user's year summary p95 ≤ {threshold:g} ms", http_p95("user_summary"),
        Bound.AT_MOST, 50, "{:.1f} ms",
    ),
    ReadTarget(
        "export ≥ {threshold:,.0f} rows/s", lambda r: r.export.rows_per_second, Bound.AT_LEAST,
        100_000, "{:,.0f} rows/s",
    ),
    ReadTarget(
        "dashboard overview, every panel rendered in Chromium, p95 ≤ {threshold:g} ms",
        lambda r: r.dashboard.loads.p95_ms if r.dashboard and r.dashboard.loads else None,
        Bound.AT_MOST, 1500, "{:.0f} ms",
    ),
    ReadTarget(
        "RSS of the API process serving the export ≤ {threshold:g} MiB (peak)",
        lambda r: r.export.rss_peak_process_bytes / MIB, Bound.AT_MOST, 200, "{:.0f} MiB",
    ),
)  # fmt: skip


def check_all(results: ReadResults, targets: tuple[ReadTarget, ...] = TARGETS) -> list[Check]:
    """The targets table of a run, in the order above."""
    return [check for target in targets if (check := target.check(results)) is not None]
