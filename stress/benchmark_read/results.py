"""What one `make bench-read` run measured: frozen dataclasses, no I/O.

The targets (`targets.py`) and the report (`report.py`) read only these, so
both can be checked from hand-made values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIB = 2**20


def nearest_rank(samples: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (p95 of 20 runs: the 19th fastest); NaN without samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass(frozen=True)
class Timing:
    """Milliseconds of each measured run (warm-ups left out)."""

    samples_ms: tuple[float, ...]

    @property
    def p50_ms(self) -> float:
        return nearest_rank(self.samples_ms, 0.50)

    @property
    def p95_ms(self) -> float:
        return nearest_rank(self.samples_ms, 0.95)


@dataclass(frozen=True)
class ProbeResult:
    """One measured request: over HTTP, and where it has a rollup path, both paths in-process."""

    key: str  # the probe's key in queries.py
    label: str
    http: Timing
    source: str | None  # "rollup" or "raw": meta.source of /v1/query, source of the summary
    rollup_in_process: Timing | None  # ReadService.answer(use_rollups=True); None: no rollups
    raw_in_process: Timing | None  # ReadService.answer(use_rollups=False)

    @property
    def speedup(self) -> float | None:
        """Raw rows over rollups, both in-process (p50s); None where there is nothing to compare."""
        if self.rollup_in_process is None or self.raw_in_process is None:
            return None
        return self.raw_in_process.p50_ms / self.rollup_in_process.p50_ms


@dataclass(frozen=True)
class ExportResult:
    """``GET /v1/export`` streamed: the median run's rate, and the API's peak RSS over all runs."""

    rows: int
    rows_per_second: float
    runs: int
    rss_before_bytes: int  # the serve tree (master and workers) at rest, before the first run
    rss_peak_bytes: int  # the serve tree, sampled every 0.1 s
    # The process that grew most (the worker serving the export): at rest, and its peak.
    rss_rest_process_bytes: int
    rss_peak_process_bytes: int


@dataclass(frozen=True)
class DashboardResult:
    """The dashboard's overview loaded in Chromium: every panel rendered, per load."""

    loads: Timing | None  # None: skipped
    view: str  # the query string of the view loaded
    skipped: str | None  # why it was not measured


@dataclass(frozen=True)
class DataSet:
    events: int
    days: int
    products: int
    users: int
    product: str  # the one measured: most events
    product_events: int
    load_seconds: float
    load_rows_per_second: float
    rollup_seconds: float  # every hour marked, then refresh_rollups until none is left
    rollup_hours: int
    database_bytes: int


@dataclass(frozen=True)
class ReadResults:
    data: DataSet
    workers: int  # `serve --workers`
    runs: int  # measured runs per probe (after the warm-ups)
    probes: tuple[ProbeResult, ...]
    export: ExportResult
    dashboard: DashboardResult | None = None

    def probe(self, key: str) -> ProbeResult | None:
        return next((p for p in self.probes if p.key == key), None)
