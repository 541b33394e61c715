"""`make bench-read`'s data shape, targets and report, from hand-made values: no servers."""

from __future__ import annotations

import dataclasses
import datetime as dt

from stress.benchmark.machine import Machine
from stress.benchmark_read.generate import COLUMNS, Shape, day_rows
from stress.benchmark_read.report import HEADING, replace_section, section
from stress.benchmark_read.results import (
    MIB,
    DashboardResult,
    DataSet,
    ExportResult,
    ProbeResult,
    ReadResults,
    Timing,
    nearest_rank,
)
from stress.benchmark_read.targets import check_all

MACHINE = Machine(
    when=dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC),
    commit="dcad5b6",
    cores=2,
    memory_gib=23.0,
    platform="Linux x86_64, Python 3.11.7",
)


def timing(ms: float) -> Timing:
    return Timing(tuple(ms + i for i in range(20)))


RESULTS = ReadResults(
    data=DataSet(
        events=2_000_000,
        days=90,
        products=5,
        users=50_000,
        product="clubs",
        product_events=800_000,
        load_seconds=30,
        load_rows_per_second=66_000,
        rollup_seconds=60,
        rollup_hours=10_800,
        database_bytes=2**30,
    ),
    workers=2,
    runs=20,
    probes=(
        ProbeResult("series", "series", timing(5), "rollup", timing(3), timing(30)),
        ProbeResult("user_summary", "summary", timing(40), None, None, None),
    ),
    export=ExportResult(
        rows=300_000,
        rows_per_second=150_000,
        runs=3,
        rss_before_bytes=300 * MIB,
        rss_peak_bytes=420 * MIB,
        rss_rest_process_bytes=100 * MIB,
        rss_peak_process_bytes=220 * MIB,
    ),
)


def test_p95_of_twenty_runs_is_the_nineteenth_fastest() -> None:
    assert nearest_rank(list(range(1, 21)), 0.95) == 19
    assert nearest_rank(list(range(1, 21)), 0.50) == 10


def test_targets_hold_the_http_p95_and_leave_out_probes_not_measured() -> None:
    checks = {check.text: check for check in check_all(RESULTS)}
    assert checks["30-day daily series p95 ≤ 100 ms"].met
    assert not checks["one user's year summary p95 ≤ 50 ms"].met  # 40 + 18 ms
    assert not checks["RSS of the API process serving the export ≤ 200 MiB (peak)"].met
    assert not any("funnel" in text for text in checks)


def test_the_speed_up_is_raw_over_rollups_in_process() -> None:
    assert RESULTS.probes[0].speedup == 39 / 12  # the p50s: the 10th of 20 runs each
    assert RESULTS.probes[1].speedup is None


def test_the_section_replaces_only_itself() -> None:
    new = section(RESULTS, MACHINE)
    existing = f"# Benchmarks\n\n## Latest run\n\nA\n\n{HEADING}\n\nold\n\n## Under attack\n\nB\n"
    replaced = replace_section(existing, new)
    assert replaced == f"# Benchmarks\n\n## Latest run\n\nA\n\n{new}\n## Under attack\n\nB\n"
    assert replace_section(replaced, new) == replaced
    assert replace_section("# Benchmarks\n\nC\n", new) == f"# Benchmarks\n\nC\n\n{new}"
    assert "**2,000,000 events**" in new
    assert "commit `dcad5b6`" in new


def test_a_day_of_data_is_the_same_every_time_and_copy_shaped() -> None:
    shape = Shape(events=9_000, end=dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC))
    first = day_rows(shape, 3)
    assert first == day_rows(shape, 3)
    lines = first.decode().splitlines()
    assert len(lines) == shape.day_counts()[3]
    assert sum(shape.day_counts()) == 9_000
    assert all(len(line.split("\t")) == len(COLUMNS) for line in lines)


def test_the_dashboard_target_holds_its_p95_and_says_why_it_was_skipped() -> None:
    measured = dataclasses.replace(
        RESULTS,
        dashboard=DashboardResult(loads=timing(1490), view="view=overview", skipped=None),
    )
    (check,) = [c for c in check_all(measured) if c.text.startswith("dashboard overview")]
    assert not check.met  # p95: 1490 + 18 ms
    assert check.measured == "1508 ms"
    skipped = dataclasses.replace(
        RESULTS, dashboard=DashboardResult(loads=None, view="", skipped="no Chromium on PATH")
    )
    assert not any(c.text.startswith("dashboard") for c in check_all(skipped))
    assert "skipped: no Chromium on PATH" in section(skipped, MACHINE)
