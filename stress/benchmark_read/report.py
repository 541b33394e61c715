"""The text of a run: the console table, and BENCHMARKS.md's "Read benchmark" section.

Pure functions of the results and the machine: `section` renders it,
`replace_section` puts it into the file's text in place of the previous one
(or at the end), leaving every other section as it was.
"""

from __future__ import annotations

from stress.benchmark.machine import Machine

from .results import MIB, DashboardResult, ExportResult, ProbeResult, ReadResults, Timing
from .targets import TARGETS, ReadTarget, check_all

HEADING = "## Read benchmark"
DEFAULT_HEADER = "# Benchmarks\n\n"


def _ms(timing: Timing | None) -> str:
    return "—" if timing is None else f"{timing.p50_ms:,.1f} / {timing.p95_ms:,.1f}"


def probe_row(probe: ProbeResult) -> tuple[str, ...]:
    speedup = probe.speedup
    return (
        probe.label,
        _ms(probe.http),
        probe.source or "raw",
        _ms(probe.rollup_in_process) if probe.source == "rollup" else "—",
        _ms(probe.raw_in_process) if probe.raw_in_process is not None else "(raw only)",
        "—" if speedup is None or probe.source != "rollup" else f"{speedup:,.1f}x",
    )


COLUMNS = (
    "request",
    "HTTP p50 / p95 ms",
    "source",
    "rollups in-process p50 / p95 ms",
    "raw rows only, in-process p50 / p95 ms",
    "speed-up (p50)",
)


def export_line(export: ExportResult) -> str:
    return (
        f"{export.rows:,} rows in {export.rows / export.rows_per_second:.1f} s: "
        f"{export.rows_per_second:,.0f} rows/s (median of {export.runs}); the exporting "
        f"worker's RSS {export.rss_rest_process_bytes / MIB:.0f} → "
        f"{export.rss_peak_process_bytes / MIB:.0f} MiB; all serve processes "
        f"{export.rss_before_bytes / MIB:.0f} → {export.rss_peak_bytes / MIB:.0f} MiB"
    )


def dashboard_line(dashboard: DashboardResult | None) -> str:
    if dashboard is None:
        return "not measured"
    if dashboard.loads is None:
        return f"skipped: {dashboard.skipped}"
    return (
        f"{_ms(dashboard.loads)} ms (p50 / p95 of {len(dashboard.loads.samples_ms)} loads, "
        f"`/dashboard?{dashboard.view}`, navigation start to the page's `dashboard:ready` "
        "mark: every panel painted)"
    )


def table(results: ReadResults) -> list[str]:
    rows = [probe_row(p) for p in results.probes]
    return [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(row) + " |" for row in rows),
        f"| export, NDJSON, 30 days, streamed | {export_line(results.export)} | raw | — | — | — |",
        f"| dashboard overview in Chromium | {dashboard_line(results.dashboard)} | — | — | — | — |",
    ]


def section(
    results: ReadResults, machine: Machine, targets: tuple[ReadTarget, ...] = TARGETS
) -> str:
    data = results.data
    lines = [
        HEADING,
        "",
        f"Written by `make bench-read` (stress/bench_read.py). "
        f"{machine.when:%Y-%m-%d %H:%M} UTC, commit `{machine.commit}`, {machine.cores} cores, "
        f"{machine.memory_gib:.0f} GiB, {machine.platform}; **{data.events:,} events** over "
        f"{data.days} days, {data.products} products, {data.users:,} users; measured on "
        f"`{data.product}` ({data.product_events:,} events); `serve --workers {results.workers}"
        f" --no-flusher`; {results.runs} runs of each request after 2 warm-ups.",
        "",
        f"Loaded by COPY at {data.load_rows_per_second:,.0f} rows/s ({data.load_seconds:.0f} s, "
        f"generated in parallel); rollups built from scratch ({data.rollup_hours:,} hours "
        f"marked) in {data.rollup_seconds:.1f} s, "
        f"{data.rollup_seconds / data.events * 1e6:.1f} µs per event on one connection (what "
        f"keeping them current costs per event flushed: each hour and each day is rolled up "
        f"once, as here, plus again for late events); "
        f"database {data.database_bytes / 2**30:.2f} GiB.",
        "",
        *table(results),
        "",
        "HTTP: the whole request as a client sees it. In-process: the same /v1/query body "
        "through `ReadService.answer`, with the rollups and with raw rows only "
        "(`use_rollups=False`; both answers checked equal); the speed-up is raw ÷ rollups. "
        "Funnels, retention and the export always read raw rows; the user summary reads the "
        "rollups for whole clean UTC days (in-process: `user_summary`, with and without them).",
        "",
        "| target | met | measured |",
        "|---|---|---|",
        *(
            f"| {check.text} | {'yes' if check.met else '**no**'} | {check.measured} |"
            for check in check_all(results, targets)
        ),
    ]
    return "\n".join(lines) + "\n"


def console(results: ReadResults, targets: tuple[ReadTarget, ...] = TARGETS) -> str:
    """The table and the targets, as plain text for the terminal."""
    rows = [COLUMNS, *(probe_row(p) for p in results.probes)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.append(f"export: {export_line(results.export)}")
    lines.append(f"dashboard: {dashboard_line(results.dashboard)}")
    lines.append("")
    for check in check_all(results, targets):
        lines.append(f"{'met ' if check.met else 'MISS'}  {check.text}: {check.measured}")
    return "\n".join(lines)


def replace_section(existing: str, new: str) -> str:
    """BENCHMARKS.md with ``new`` in place of its "Read benchmark" section, or appended.

    Everything before the section, and from the next "## " heading on, is kept.
    """
    if HEADING not in existing:
        base = existing or DEFAULT_HEADER
        return base.rstrip("\n") + "\n\n" + new
    before, rest = existing.split(HEADING, 1)
    after = rest.split("\n## ", 1)
    tail = ("\n## " + after[1]) if len(after) > 1 else ""
    return before + new + tail
