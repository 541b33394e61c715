"""The text of a run: console lines while it runs, and BENCHMARKS.md's "Latest run" section.

Pure functions of the results (and the machine they were measured on):
`latest_run` renders the section, `replace_latest_run` puts it into the
file's text in place of the previous one, keeping what comes before and the
history after it.
"""

from __future__ import annotations

import math

from .machine import Machine
from .results import (
    MIB,
    BenchResults,
    CopyCeiling,
    Drain,
    EndToEnd,
    LoadResult,
    RollupsWorking,
    Soak,
)
from .targets import TARGETS, Target, check_all

HEADING = "## Latest run"
DEFAULT_HEADER = "# Benchmarks\n\nWritten by `make bench` (stress/bench.py).\n\n"


# --- the console, while the run goes ------------------------------------------------


def load_line(label: str, result: LoadResult) -> str:
    return (
        f"{label}: {result.requests_per_second:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
        f"p99 {result.p99_ms:.2f} ms, errors {result.errors}, "
        f"generator CPU {result.generator_cpu_percent:.0f}% ({result.generator})"
    )


def drain_line(drain: Drain) -> str:
    return f"    drain (flushers alone): {drain.rows_per_second:,.0f} rows/s"


def rollups_line(rollups: RollupsWorking) -> str:
    return (
        end_to_end_line(rollups.end_to_end).replace("(d) end to end", "(h) with a refresh", 1)
        + f"; {rollups.marks_left} marked hours left, caught up after "
        + (f"{rollups.caught_up_seconds:.0f} s" if rollups.caught_up_seconds is not None else "-")
    )


def end_to_end_line(e2e: EndToEnd) -> str:
    return (
        f"(d) end to end: {e2e.landed_events_per_second:,.0f} events/s landed "
        f"(offered {e2e.offered_events_per_second:,.0f}, paced from "
        f"{e2e.paced_from_events_per_second:,.0f}), freshness p50 "
        f"{e2e.freshness_p50_s:.2f} s p99 {e2e.freshness_p99_s:.2f} s"
    )


def copy_line(copy: CopyCeiling) -> str:
    return f"(e) raw COPY: {copy.rows_per_second:,.0f} rows/s"


def soak_line(soak: Soak) -> str:
    return (
        f"    soak {soak.seconds} s: RSS {soak.early_bytes / MIB:.0f} → "
        f"{soak.late_bytes / MIB:.0f} MiB ({soak.growth_percent:+.1f}%)"
    )


# --- BENCHMARKS.md -----------------------------------------------------------------


def latest_run(
    results: BenchResults, machine: Machine, targets: tuple[Target, ...] = TARGETS
) -> str:
    """The "Latest run" section: the machine, the measures table, the targets table."""
    lines = [
        HEADING,
        "",
        f"{machine.when:%Y-%m-%d %H:%M} UTC, commit `{machine.commit}`, "
        f"{machine.cores} cores, {machine.memory_gib:.0f} GiB, {machine.platform}; "
        f"`serve --workers {results.workers}`, {results.connections} connections, generator "
        f"{results.ingest.single.generator}.",
        "",
        "| measure | result |",
        "|---|---|",
        *(f"| {measure} | {result} |" for measure, result in measures(results)),
        "",
        "| target | met | measured |",
        "|---|---|---|",
        *(
            f"| {check.text} | {'yes' if check.met else '**no**'} | {check.measured} |"
            for check in check_all(results, targets)
        ),
    ]
    return "\n".join(lines) + "\n"


def measures(r: BenchResults) -> list[tuple[str, str]]:
    """The rows of the measures table: (what was measured, what came out)."""
    floor, single, batch, e2e = r.ingest.floor, r.ingest.single, r.batch, r.end_to_end
    rounds = ", ".join(f"{ratio:.0%}" for ratio in r.ingest.ratios)
    rows = [
        (
            f"(a) floor: bare FastAPI POST → 202 (median of {len(r.ingest.ratios)} rounds)",
            f"{floor.requests_per_second:,.0f} req/s, "
            f"p50 {floor.p50_ms:.2f} ms, p99 {floor.p99_ms:.2f} ms",
        ),
        (
            "(b) `POST /v1/events`, 1 event, the default `serve` (its flusher process landing "
            "the events meanwhile; median round)",
            f"{single.requests_per_second:,.0f} req/s, p50 {single.p50_ms:.2f} ms, "
            f"p99 {single.p99_ms:.2f} ms (worst round {r.ingest.single_p99_worst_ms:.1f} ms; "
            f"{r.ingest.p99_gap_ms:+.1f} ms from the floor's), "
            f"**{r.ingest.ratio:.0%} of (a)** (rounds: {rounds}), "
            f"{r.ingest.single_errors} errors in all rounds",
        ),
        (
            "(c) `POST /v1/events`, 100 events",
            f"{batch.requests_per_second * 100:,.0f} events/s "
            f"({batch.requests_per_second:,.0f} req/s, p99 {batch.p99_ms:.1f} ms), "
            f"{batch.errors} errors",
        ),
        *_compat_rows(r),
        ("flushers draining alone", f"{r.drain.rows_per_second:,.0f} rows/s"),
        (
            f"(d) end to end, paced, {e2e.seconds} s",
            f"{e2e.landed_events_per_second:,.0f} events/s landed "
            f"(offered {e2e.offered_events_per_second:,.0f}), "
            f"**{r.end_to_end_share_of_copy:.0%} of (e)**; freshness p50 "
            f"{e2e.freshness_p50_s:.2f} s, p99 {e2e.freshness_p99_s:.2f} s "
            f"({e2e.probes} probes), {e2e.errors} errors",
        ),
        *_rollup_rows(r),
        ("(e) raw asyncpg COPY into `events`", f"{r.copy.rows_per_second:,.0f} rows/s"),
        (
            "API peak RSS (all workers)",
            f"ingest {r.rss.ingest / MIB:.0f} MiB, end to end {r.rss.end_to_end / MIB:.0f} MiB",
        ),
    ]
    if r.soak is not None:
        rows.append(
            (
                f"soak {r.soak.seconds} s at half rate",
                f"RSS {r.soak.early_bytes / MIB:.0f} → {r.soak.late_bytes / MIB:.0f} MiB "
                f"({r.soak.growth_percent:+.1f}%)",
            )
        )
    rows.append(
        (
            "load generator CPU",
            f"(a) {floor.generator_cpu_percent:.0f}%, (b) {single.generator_cpu_percent:.0f}%, "
            f"(c) {batch.generator_cpu_percent:.0f}% of one core",
        )
    )
    return rows


def _rollup_rows(r: BenchResults) -> list[tuple[str, str]]:
    if r.rollups is None or r.rollup_refresh_cost is None:
        return []
    h = r.rollups.end_to_end
    cost = r.rollup_refresh_cost
    if math.isnan(cost):
        shown = "cost not measured: the refresh ran out of work"
    else:
        shown = f"{cost:.1%} below (d)" if cost >= 0 else f"{-cost:.1%} above (d)"
    return [
        (
            f"(h) (d) again, the flusher's rollup refresh working through "
            f"{r.rollups.backlog_events:,} events of a marked past day throughout",
            f"{h.landed_events_per_second:,.0f} events/s landed "
            f"(offered {h.offered_events_per_second:,.0f}), **{shown}**; freshness "
            f"p50 {h.freshness_p50_s:.2f} s, p99 {h.freshness_p99_s:.2f} s; "
            f"{r.rollups.marks_left} of the day's 24 hours not rolled up at the end, "
            + (
                f"all rolled up {r.rollups.caught_up_seconds:.0f} s after the load"
                if r.rollups.caught_up_seconds is not None
                else "not all rolled up 10 minutes after the load"
            ),
        )
    ]


def _compat_rows(r: BenchResults) -> list[tuple[str, str]]:
    if r.compat is None:
        return []
    legacy, segment = r.compat.legacy, r.compat.segment
    return [
        (
            "(f) `POST /analytics/` (legacy), 10 data points, a cached Platform JWT",
            f"{legacy.requests_per_second:,.0f} req/s "
            f"({legacy.requests_per_second * 10:,.0f} events/s), p50 {legacy.p50_ms:.2f} ms, "
            f"p99 {legacy.p99_ms:.2f} ms, **{r.legacy_share_of_floor:.0%} of (a)**, "
            f"{legacy.errors} errors",
        ),
        (
            "(g) `POST /v1/batch` (Segment), 100 `track` messages",
            f"{segment.requests_per_second * 100:,.0f} events/s "
            f"({segment.requests_per_second:,.0f} req/s, p99 {segment.p99_ms:.1f} ms), "
            f"**{r.segment_share_of_batch:.0%} of (c)**, {segment.errors} errors",
        ),
    ]


def replace_latest_run(existing: str, latest: str) -> str:
    """BENCHMARKS.md with ``latest`` in place of its "Latest run" section.

    What comes before the section is kept (a new file gets a default header),
    and so is everything from the next "## " heading on: the history and the
    sections other scripts write.
    """
    if HEADING not in existing:
        return (existing or DEFAULT_HEADER) + latest + "\n"
    before, rest = existing.split(HEADING, 1)
    after = rest.split("\n## ", 1)
    history = ("## " + after[1]) if len(after) > 1 else ""
    return before + latest + "\n" + history
