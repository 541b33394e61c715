"""Every target `make bench` checks, as data, in one place.

A target names a measured value by its path in `BenchResults`, the bound it
must keep and the threshold. Its text in BENCHMARKS.md is written from the
threshold, so the two cannot disagree; a value that was not measured in a
run (no soak with `--soak 0`) leaves its target out of that run's table.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .results import BenchResults


class Bound(enum.Enum):
    AT_LEAST = "≥"
    AT_MOST = "≤"
    WITHIN = "±"  # the value's size, either sign, at most the threshold

    def holds(self, measured: float, threshold: float) -> bool:
        """False for NaN (e.g. no freshness probe landed): an unmeasured value meets nothing."""
        if math.isnan(measured):
            return False
        if self is Bound.AT_LEAST:
            return measured >= threshold
        if self is Bound.AT_MOST:
            return measured <= threshold
        return abs(measured) <= threshold


@dataclass(frozen=True)
class Target:
    text: str  # as BENCHMARKS.md shows it; format fields: {threshold} and {r} (the results)
    measure: str  # dotted path into BenchResults; a None on the way: not measured this run
    bound: Bound
    threshold: float
    shown: str  # how the measured value is written, a format string for one value

    def measured(self, results: BenchResults) -> float | None:
        value: object = results
        for name in self.measure.split("."):
            value = getattr(value, name)
            if value is None:
                return None
        if not isinstance(value, float | int):
            raise TypeError(f"{self.measure} is {value!r}, not a number")
        return float(value)

    def check(self, results: BenchResults) -> Check | None:
        measured = self.measured(results)
        if measured is None:
            return None
        return Check(
            text=self.text.format(threshold=self.threshold, r=results),
            met=self.bound.holds(measured, self.threshold),
            measured=self.shown.format(measured),
        )


@dataclass(frozen=True)
class Check:
    """One row of the targets table."""

    text: str
    met: bool
    measured: str


TARGETS: tuple[Target, ...] = (
    Target(
        text="single-event ingest ≥ {threshold:.0%} of the floor",
        measure="ingest.ratio",
        bound=Bound.AT_LEAST,
        threshold=0.70,
        shown="{:.0%}",
    ),
    Target(
        text="single-event p99 ≤ {threshold:g} ms at {r.connections} connections (worst round)",
        measure="ingest.single_p99_worst_ms",
        bound=Bound.AT_MOST,
        threshold=25,
        shown="{:.1f} ms",
    ),
    Target(
        text="p99 above the floor's ≤ {threshold:g} ms, default `serve` flushing meanwhile "
        "(median round)",
        measure="ingest.p99_gap_ms",
        bound=Bound.AT_MOST,
        threshold=5,
        shown="{:+.1f} ms",
    ),
    Target(
        text="end to end ≥ {threshold:.0%} of raw COPY",
        measure="end_to_end_share_of_copy",
        bound=Bound.AT_LEAST,
        threshold=0.50,
        shown="{:.0%}",
    ),
    Target(
        text="freshness p99 ≤ {threshold:g} s",
        measure="end_to_end.freshness_p99_s",
        bound=Bound.AT_MOST,
        threshold=2,
        shown="{:.2f} s",
    ),
    Target(
        text="rollup refresh working throughout: end to end ≤ {threshold:.0%} below (d)",
        measure="rollup_refresh_cost",
        bound=Bound.AT_MOST,
        threshold=0.10,
        shown="{:.1%}",
    ),
    Target(
        text="legacy route (10 data points, a cached JWT) ≥ {threshold:.0%} of the floor's req/s",
        measure="legacy_share_of_floor",
        bound=Bound.AT_LEAST,
        threshold=0.70,
        shown="{:.0%}",
    ),
    Target(
        text="legacy route p99 ≤ {threshold:g} ms at {r.connections} connections",
        measure="compat.legacy.p99_ms",
        bound=Bound.AT_MOST,
        threshold=25,
        shown="{:.1f} ms",
    ),
    Target(
        text="Segment batches (100 messages) ≥ {threshold:.0%} of the native batch route's "
        "events/s",
        measure="segment_share_of_batch",
        bound=Bound.AT_LEAST,
        threshold=0.80,
        shown="{:.0%}",
    ),
    Target(
        text="API RSS flat within {threshold:g}% over a {r.soak.seconds} s soak",
        measure="soak.growth_percent",
        bound=Bound.WITHIN,
        threshold=10,
        shown="{:+.1f}%",
    ),
)


def check_all(results: BenchResults, targets: tuple[Target, ...] = TARGETS) -> list[Check]:
    """The targets table of a run, in the order above."""
    return [check for target in targets if (check := target.check(results)) is not None]
