"""What one `make bench` run measured: a frozen dataclass per measurement, and the run's whole.

Plain data, no I/O: the targets (`targets.py`) and the report (`report.py`)
read only these, so both are tested from hand-made values.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

MIB = 2**20


@dataclass(frozen=True)
class LoadResult:
    """One load generator run against one URL. Paced runs have no latencies (NaN)."""

    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    generator_cpu_percent: float
    generator: str


@dataclass(frozen=True)
class IngestRounds:
    """(a) the framework floor and (b) single-event ingest, alternating round by round."""

    floor: LoadResult  # the round with the median throughput
    single: LoadResult  # likewise
    ratios: tuple[float, ...]  # single ÷ floor, one per round
    single_p99_worst_ms: float
    single_errors: int  # over all rounds
    # Single-event p99 minus the floor's, one per round: (b) runs the default
    # `serve`, its flusher process landing the events meanwhile.
    p99_gaps_ms: tuple[float, ...] = ()

    @property
    def ratio(self) -> float:
        """Single-event ingest as a share of the floor: the median of the rounds' ratios."""
        return statistics.median(self.ratios)

    @property
    def p99_gap_ms(self) -> float:
        """How far single-event p99 is above the floor's: the median of the rounds."""
        return statistics.median(self.p99_gaps_ms) if self.p99_gaps_ms else math.nan


@dataclass(frozen=True)
class Drain:
    """The flushers alone, emptying what (c) queued."""

    rows_per_second: float


@dataclass(frozen=True)
class EndToEnd:
    """(d) events landed in PostgreSQL at a paced rate, and the 202 → row freshness."""

    seconds: int
    paced_from_events_per_second: float
    offered_events_per_second: float
    landed_events_per_second: float
    errors: int
    freshness_p50_s: float
    freshness_p99_s: float
    probes: int


@dataclass(frozen=True)
class RollupsWorking:
    """(h) (d) again while a rollup refresh works through a marked past day."""

    end_to_end: EndToEnd
    backlog_events: int  # stored into the past day and marked before the run
    marks_left: int  # the day's hours the refresh had not rolled up when the run ended
    # From the load's end until no hour of the day was marked; None: not within the wait.
    caught_up_seconds: float | None = None


@dataclass(frozen=True)
class CopyCeiling:
    """(e) raw asyncpg COPY into `events`: the storage ceiling."""

    rows_per_second: float


@dataclass(frozen=True)
class Soak:
    """The API's RSS early in a run at half the sustained rate, and at its end."""

    seconds: int
    early_bytes: float
    late_bytes: float

    @property
    def growth_percent(self) -> float:
        return 100 * (self.late_bytes - self.early_bytes) / self.early_bytes


@dataclass(frozen=True)
class RssPeaks:
    """The API's peak RSS (all workers), in bytes, while ingesting and end to end."""

    ingest: int
    end_to_end: int


@dataclass(frozen=True)
class Compat:
    """(f) the legacy route, 10 data points a request; (g) Segment batches of 100 messages."""

    legacy: LoadResult
    segment: LoadResult


@dataclass(frozen=True)
class BenchResults:
    workers: int  # `serve --workers`
    connections: int  # the load generator's, for (a), (b) and (c)
    ingest: IngestRounds  # (a) and (b)
    batch: LoadResult  # (c), 100 events per request
    drain: Drain
    end_to_end: EndToEnd  # (d)
    copy: CopyCeiling  # (e)
    rss: RssPeaks
    soak: Soak | None  # None when run with --soak 0
    compat: Compat | None = None  # (f) and (g)
    rollups: RollupsWorking | None = None  # (h)

    @property
    def legacy_share_of_floor(self) -> float | None:
        if self.compat is None:
            return None
        return self.compat.legacy.requests_per_second / self.ingest.floor.requests_per_second

    @property
    def segment_share_of_batch(self) -> float | None:
        """Segment messages/s over native batch events/s (both 100 per request)."""
        if self.compat is None:
            return None
        return self.compat.segment.requests_per_second / self.batch.requests_per_second

    @property
    def end_to_end_share_of_copy(self) -> float:
        return self.end_to_end.landed_events_per_second / self.copy.rows_per_second

    @property
    def rollup_refresh_cost(self) -> float | None:
        """How much less (h) landed than (d): 1 - (h) / (d). NaN (no target met)
        when the refresh ran out of work inside (h)'s window: then (h) measured
        a refresh for part of the run only."""
        if self.rollups is None:
            return None
        if self.rollups.marks_left == 0:
            return math.nan
        landed = self.rollups.end_to_end.landed_events_per_second
        return 1 - landed / self.end_to_end.landed_events_per_second
