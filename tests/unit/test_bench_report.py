"""`make bench`'s targets and report, from hand-made results: no servers, no load.

The sample results are the numbers of a real run, and the section they
render is the one that run wrote to BENCHMARKS.md, so a change to the
report's text shows here before a later `make bench` rewrites the file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

import pytest
from stress.benchmark.load import parse_wrk_output
from stress.benchmark.machine import Machine
from stress.benchmark.report import DEFAULT_HEADER, latest_run, measures, replace_latest_run
from stress.benchmark.results import (
    MIB,
    BenchResults,
    Compat,
    CopyCeiling,
    Drain,
    EndToEnd,
    IngestRounds,
    LoadResult,
    RollupsWorking,
    RssPeaks,
    Soak,
)
from stress.benchmark.targets import TARGETS, Bound, Check, Target, check_all

MACHINE = Machine(
    when=dt.datetime(2026, 12, 1, 2, 41, tzinfo=dt.UTC),
    commit="03c05ff",
    cores=2,
    memory_gib=24.0,
    platform="Linux x86_64, Python 3.11.7",
)


def wrk(rps: float, p50_ms: float, p99_ms: float, cpu: float) -> LoadResult:
    return LoadResult(rps, p50_ms, p99_ms, 0, cpu, "wrk -t2 -c32")


RESULTS = BenchResults(
    workers=2,
    connections=32,
    ingest=IngestRounds(
        floor=wrk(17_691, 1.76, 5.10, 25),
        single=wrk(14_430, 2.09, 5.71, 17),
        ratios=(0.77, 0.92, 0.79),
        single_p99_worst_ms=6.1,
        single_errors=0,
        p99_gaps_ms=(0.61, 1.2, 0.3),
    ),
    batch=wrk(1_618.15, 19.8, 73.6, 3),
    drain=Drain(rows_per_second=64_626),
    end_to_end=EndToEnd(
        seconds=60,
        paced_from_events_per_second=40_517,
        offered_events_per_second=40_593,
        landed_events_per_second=41_062,
        errors=0,
        freshness_p50_s=0.23,
        freshness_p99_s=0.52,
        probes=417,
    ),
    copy=CopyCeiling(rows_per_second=66_749),
    rss=RssPeaks(ingest=292 * MIB, end_to_end=327 * MIB),
    soak=Soak(seconds=60, early_bytes=305 * MIB, late_bytes=305 * MIB * 1.011),
)

LATEST_RUN = """\
## Latest run

2026-12-01 02:41 UTC, commit `03c05ff`, 2 cores, 24 GiB, Linux x86_64, Python 3.11.7; \
`serve --workers 2`, 32 connections, generator wrk -t2 -c32.

| measure | result |
|---|---|
| (a) floor: bare FastAPI POST → 202 (median of 3 rounds) | 17,691 req/s, p50 1.76 ms, \
p99 5.10 ms |
| (b) `POST /v1/events`, 1 event, the default `serve` (its flusher process landing the events \
meanwhile; median round) | 14,430 req/s, p50 2.09 ms, p99 5.71 ms (worst round 6.1 ms; +0.6 ms \
from the floor's), **79% of (a)** (rounds: 77%, 92%, 79%), 0 errors in all rounds |
| (c) `POST /v1/events`, 100 events | 161,815 events/s (1,618 req/s, p99 73.6 ms), 0 errors |
| flushers draining alone | 64,626 rows/s |
| (d) end to end, paced, 60 s | 41,062 events/s landed (offered 40,593), **62% of (e)**; \
freshness p50 0.23 s, p99 0.52 s (417 probes), 0 errors |
| (e) raw asyncpg COPY into `events` | 66,749 rows/s |
| API peak RSS (all workers) | ingest 292 MiB, end to end 327 MiB |
| soak 60 s at half rate | RSS 305 → 308 MiB (+1.1%) |
| load generator CPU | (a) 25%, (b) 17%, (c) 3% of one core |

| target | met | measured |
|---|---|---|
| single-event ingest ≥ 70% of the floor | yes | 79% |
| single-event p99 ≤ 25 ms at 32 connections (worst round) | yes | 6.1 ms |
| p99 above the floor's ≤ 5 ms, default `serve` flushing meanwhile (median round) | yes | +0.6 ms |
| end to end ≥ 50% of raw COPY | yes | 62% |
| freshness p99 ≤ 2 s | yes | 0.52 s |
| API RSS flat within 10% over a 60 s soak | yes | +1.1% |
"""


# --- targets ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bound", "measured", "met"),
    [
        (Bound.AT_LEAST, 0.69, False),
        (Bound.AT_LEAST, 0.70, True),
        (Bound.AT_LEAST, 0.71, True),
        (Bound.AT_MOST, 24.9, True),
        (Bound.AT_MOST, 25.0, True),
        (Bound.AT_MOST, 25.1, False),
        (Bound.WITHIN, -10.1, False),
        (Bound.WITHIN, -10.0, True),
        (Bound.WITHIN, 0.0, True),
        (Bound.WITHIN, 10.0, True),
        (Bound.WITHIN, 10.1, False),
    ],
)
def test_a_bound_holds_at_its_threshold_and_on_its_side_of_it(
    bound: Bound, measured: float, met: bool
) -> None:
    threshold = 0.70 if bound is Bound.AT_LEAST else 25.0 if bound is Bound.AT_MOST else 10.0
    assert bound.holds(measured, threshold) is met


@pytest.mark.parametrize("bound", list(Bound))
def test_an_unmeasured_value_meets_no_bound(bound: Bound) -> None:
    assert bound.holds(float("nan"), 1.0) is False


def with_ingest_ratio(value: float) -> BenchResults:
    return dataclasses.replace(RESULTS, ingest=dataclasses.replace(RESULTS.ingest, ratios=(value,)))


def with_worst_p99(value: float) -> BenchResults:
    ingest = dataclasses.replace(RESULTS.ingest, single_p99_worst_ms=value)
    return dataclasses.replace(RESULTS, ingest=ingest)


def with_p99_gap(value: float) -> BenchResults:
    ingest = dataclasses.replace(RESULTS.ingest, p99_gaps_ms=(value,))
    return dataclasses.replace(RESULTS, ingest=ingest)


def with_share_of_copy(value: float) -> BenchResults:
    landed = value * RESULTS.copy.rows_per_second
    e2e = dataclasses.replace(RESULTS.end_to_end, landed_events_per_second=landed)
    return dataclasses.replace(RESULTS, end_to_end=e2e)


def with_freshness_p99(value: float) -> BenchResults:
    e2e = dataclasses.replace(RESULTS.end_to_end, freshness_p99_s=value)
    return dataclasses.replace(RESULTS, end_to_end=e2e)


def with_rollup_cost(cost: float, marks_left: int = 5) -> BenchResults:
    landed = (1 - cost) * RESULTS.end_to_end.landed_events_per_second
    working = dataclasses.replace(RESULTS.end_to_end, landed_events_per_second=landed)
    rollups = RollupsWorking(working, 2_000_000, marks_left, caught_up_seconds=41.2)
    return dataclasses.replace(RESULTS, rollups=rollups)


def with_soak_growth(percent: float) -> BenchResults:
    soak = Soak(seconds=60, early_bytes=100 * MIB, late_bytes=(100 + percent) * MIB)
    return dataclasses.replace(RESULTS, soak=soak)


# Each target, with the results a value just under, at and just over its threshold gives.
AROUND_THRESHOLDS: list[tuple[str, Callable[[float], BenchResults], float, float, float]] = [
    ("single-event ingest", with_ingest_ratio, 0.69, 0.70, 0.71),
    ("single-event p99", with_worst_p99, 24.9, 25.0, 25.1),
    ("p99 above the floor", with_p99_gap, 4.9, 5.0, 5.1),
    ("end to end", with_share_of_copy, 0.49, 0.50, 0.51),
    ("freshness p99", with_freshness_p99, 1.9, 2.0, 2.1),
    ("API RSS flat", with_soak_growth, 9.5, 10.0, 10.5),
    ("rollup refresh working", with_rollup_cost, 0.09, 0.10, 0.11),
]


def check_named(prefix: str, results: BenchResults) -> Check:
    [check] = [check for check in check_all(results) if check.text.startswith(prefix)]
    return check


@pytest.mark.parametrize(("prefix", "results_with", "under", "at", "over"), AROUND_THRESHOLDS)
def test_each_target_is_met_at_its_threshold_and_missed_past_it(
    prefix: str,
    results_with: Callable[[float], BenchResults],
    under: float,
    at: float,
    over: float,
) -> None:
    [target] = [t for t in TARGETS if t.text.startswith(prefix)]
    met_under, met_over = (False, True) if target.bound is Bound.AT_LEAST else (True, False)
    assert check_named(prefix, results_with(under)).met is met_under
    assert check_named(prefix, results_with(at)).met is True
    assert check_named(prefix, results_with(over)).met is met_over


def test_rss_shrinking_past_the_threshold_misses_the_flat_rss_target() -> None:
    check = check_named("API RSS flat", with_soak_growth(-12.0))
    assert (check.met, check.measured) == (False, "-12.0%")


WITH_COMPAT = dataclasses.replace(
    with_rollup_cost(0.04),
    compat=Compat(legacy=wrk(13_000, 2.2, 9.5, 20), segment=wrk(1_400, 21.0, 80.0, 5)),
)


def test_every_target_of_a_run_with_the_compatibility_routes_is_checked() -> None:
    checks = check_all(WITH_COMPAT)
    assert len(checks) == len(TARGETS)
    compat = {check.text: (check.met, check.measured) for check in checks[-4:-1]}
    assert compat == {
        "legacy route (10 data points, a cached JWT) ≥ 70% of the floor's req/s": (True, "73%"),
        "legacy route p99 ≤ 25 ms at 32 connections": (True, "9.5 ms"),
        "Segment batches (100 messages) ≥ 80% of the native batch route's events/s": (
            True,
            "87%",
        ),
    }
    rows = dict(measures(WITH_COMPAT))
    legacy_row = "(f) `POST /analytics/` (legacy), 10 data points, a cached Platform JWT"
    assert rows[legacy_row].startswith("13,000 req/s (130,000 events/s)")
    assert "**87% of (c)**" in rows["(g) `POST /v1/batch` (Segment), 100 `track` messages"]


def test_a_run_without_the_compatibility_routes_or_h_leaves_their_targets_out() -> None:
    assert len(check_all(RESULTS)) == len(TARGETS) - 4


def test_a_refresh_that_ran_out_of_work_inside_h_meets_no_target() -> None:
    """(h) measured the refresh for part of its window only: the cost is unknown."""
    check = check_named("rollup refresh working", with_rollup_cost(0.01, marks_left=0))
    assert check.met is False
    rows = dict(measures(with_rollup_cost(0.01, marks_left=0)))
    [row] = [value for measure, value in rows.items() if measure.startswith("(h)")]
    assert "**cost not measured: the refresh ran out of work**" in row
    assert "0 of the day's 24 hours not rolled up" in row


def test_h_is_reported_beside_d() -> None:
    rows = dict(measures(with_rollup_cost(0.04, marks_left=7)))
    [(measure, row)] = [(m, v) for m, v in rows.items() if m.startswith("(h)")]
    assert "2,000,000 events of a marked past day" in measure
    assert row.startswith("39,420 events/s landed")
    assert "**4.0% below (d)**" in row
    faster = dict(measures(with_rollup_cost(-0.007)))
    assert "**0.7% above (d)**" in faster[measure]
    assert "7 of the day's 24 hours not rolled up at the end, all rolled up 41 s after" in row


def test_a_run_without_a_soak_leaves_the_soak_target_out() -> None:
    checks = check_all(dataclasses.replace(RESULTS, soak=None))
    assert [check.text for check in checks] == [
        "single-event ingest ≥ 70% of the floor",
        "single-event p99 ≤ 25 ms at 32 connections (worst round)",
        "p99 above the floor's ≤ 5 ms, default `serve` flushing meanwhile (median round)",
        "end to end ≥ 50% of raw COPY",
        "freshness p99 ≤ 2 s",
    ]


def test_a_target_text_is_written_from_its_threshold() -> None:
    stricter = Target(
        text="freshness p99 ≤ {threshold:g} s",
        measure="end_to_end.freshness_p99_s",
        bound=Bound.AT_MOST,
        threshold=0.5,
        shown="{:.2f} s",
    )
    assert check_all(RESULTS, (stricter,)) == [
        Check(text="freshness p99 ≤ 0.5 s", met=False, measured="0.52 s")
    ]


# --- the report -------------------------------------------------------------------


def test_the_latest_run_section_is_rendered_as_benchmarks_md_shows_it() -> None:
    assert latest_run(RESULTS, MACHINE) == LATEST_RUN


def test_a_missed_target_is_marked_no_in_bold() -> None:
    section = latest_run(with_freshness_p99(2.5), MACHINE)
    assert "| freshness p99 ≤ 2 s | **no** | 2.50 s |" in section.splitlines()


def test_a_run_without_a_soak_has_no_soak_row() -> None:
    lines = latest_run(dataclasses.replace(RESULTS, soak=None), MACHINE).splitlines()
    assert not [line for line in lines if "soak" in line]
    rss = lines.index("| API peak RSS (all workers) | ingest 292 MiB, end to end 327 MiB |")
    assert lines[rss + 1] == "| load generator CPU | (a) 25%, (b) 17%, (c) 3% of one core |"


def test_the_latest_run_replaces_the_previous_one_and_keeps_the_rest() -> None:
    header = "# Benchmarks\n\nWritten by `make bench` (stress/bench.py).\n\n"
    history = "## What moved the numbers\n\nA table.\n\n## Under attack\n\nAnother.\n"
    existing = header + "## Latest run\n\nan older run\n\n" + history
    assert replace_latest_run(existing, LATEST_RUN) == header + LATEST_RUN + "\n" + history


def test_a_new_benchmarks_file_gets_the_default_header() -> None:
    assert replace_latest_run("", LATEST_RUN) == DEFAULT_HEADER + LATEST_RUN + "\n"


def test_a_file_without_a_latest_run_keeps_its_text_before_the_new_section() -> None:
    existing = "# Benchmarks\n\n## Under attack\n\nA table.\n"
    assert replace_latest_run(existing, LATEST_RUN) == existing + LATEST_RUN + "\n"


# --- the load generator's output ----------------------------------------------------

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:8000/v1/events
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.81ms  512.31us   9.12ms   80.12%
    Req/Sec     8.85k   401.23     9.40k    75.00%
  176910 requests in 10.00s, 24.46MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  17691.03
Transfer/sec:      2.45MB
JSON {"p50": 1760, "p99": 5100}
"""


def test_wrk_output_gives_the_rate_latencies_and_every_error() -> None:
    result = parse_wrk_output(WRK_OUTPUT, generator_cpu_percent=25.0, generator="wrk -t2 -c32")
    assert result == LoadResult(17691.03, 1.76, 5.1, 7, 25.0, "wrk -t2 -c32")
