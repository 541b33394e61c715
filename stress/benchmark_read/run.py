"""The run: its own servers, the data, the rollups, the measurements, the report.

  1. embedded PostgreSQL and Redis under a temporary directory, migrated
  2. the data set (`generate.py`) by COPY into `events`, then ANALYZE
  3. every (product, UTC hour) marked and `refresh_rollups` until no mark is
     left, timed: the rollups built from scratch, as the flushers would
  4. `serve --no-flusher` with a read key: each probe over HTTP, and the
     /v1/query ones in-process with and without the rollups; then the export
  5. the report: printed, and BENCHMARKS.md's "Read benchmark" section replaced

The temporary directory (the data with it) is removed at the end.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
from stress.benchmark.machine import this_machine
from stress.benchmark.stack import (
    BIN,
    embedded_stack,
    process,
    serve_command,
    stack_env,
    wait_http,
)

from labs_analytics.embedded import free_port
from labs_analytics.read.service import ReadService, create_read_pool
from labs_analytics.settings import Settings, to_asyncpg_dsn
from labs_analytics.storage.rollups import refresh_rollups

from . import measure, report
from .dashboard import measure_overview
from .generate import HTTP_REQUEST, PRODUCTS, Shape, load
from .queries import Facts, export_params, probes
from .results import DataSet, ReadResults

# Raw-only answers of a large data set take seconds; a run measures, it does not time out.
QUERY_TIMEOUT_SECONDS = 300
# ROLLUP_PROPERTIES for the run: the generated data's low-cardinality keys
# (the top-N probe breaks down by club_id).
ROLLUP_PROPERTIES = ("club_id", "route", "status_code")
EXPORT_RUNS = 3


@dataclass(frozen=True)
class Options:
    events: int
    runs: int  # measured runs of each request over HTTP (and in-process with rollups)
    raw_runs: int  # of the raw-only answers
    workers: int  # `serve --workers`
    output: Path  # BENCHMARKS.md


def main(options: Options) -> None:
    with embedded_stack("bench_read") as stack:
        results = asyncio.run(run(options, stack.work, stack.database_url, stack.redis_url))
    write_report(options.output, results)


async def run(options: Options, work: Path, database_url: str, redis_url: str) -> ReadResults:
    dsn = to_asyncpg_dsn(database_url)
    end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    shape = Shape(events=options.events, end=end)
    print(
        f"bench-read: generating {shape.events:,} events, {shape.start:%Y-%m-%d %H:00} to "
        f"{shape.end:%Y-%m-%d %H:00} UTC",
        flush=True,
    )
    loaded = await load(dsn, shape)
    print(f"    loaded {loaded.rows:,} rows at {loaded.rows_per_second:,.0f} rows/s", flush=True)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ANALYZE events")
        rollup_hours, rollup_seconds = await build_rollups(dsn, conn)
        print(f"    rollups: {rollup_hours:,} hours in {rollup_seconds:.1f} s", flush=True)
        facts, product_events = await read_facts(conn, end.date())
        database_bytes = await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await conn.close()
    data = DataSet(
        events=loaded.rows,
        days=shape.days,
        products=len(PRODUCTS),
        users=shape.users,
        product=facts.product,
        product_events=product_events,
        load_seconds=loaded.seconds,
        load_rows_per_second=loaded.rows_per_second,
        rollup_seconds=rollup_seconds,
        rollup_hours=rollup_hours,
        database_bytes=database_bytes,
    )

    env = stack_env(database_url, redis_url, work)
    env.update(
        READ_RATE_LIMIT_PER_SECOND="10000",  # measuring queries, not the limiter
        QUERY_TIMEOUT_SECONDS=str(QUERY_TIMEOUT_SECONDS),
        ROLLUP_PROPERTIES=",".join(ROLLUP_PROPERTIES),
    )
    key = await asyncio.to_thread(create_read_key, env, facts.product)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        query_timeout_seconds=QUERY_TIMEOUT_SECONDS,
        read_rate_limit_per_second=10_000,
        rollup_properties=list(ROLLUP_PROPERTIES),
    )
    serve = [*serve_command(port, options.workers), "--no-flusher"]
    with process(serve, env, work / "serve.log") as api:
        await asyncio.to_thread(wait_http, f"{base}/healthz")
        pool = await create_read_pool(settings)
        try:
            async with httpx.AsyncClient(
                base_url=base,
                headers={"Authorization": f"Bearer {key}"},
                timeout=QUERY_TIMEOUT_SECONDS + 30,
            ) as client:
                reads = ReadService(pool, settings)
                measured = []
                for probe in probes(facts):
                    result = await measure.measure_probe(
                        client, reads, facts.product, probe, options.runs, options.raw_runs
                    )
                    print("    " + " | ".join(report.probe_row(result)), flush=True)
                    measured.append(result)
                export = await measure.export(client, export_params(facts), api.pid, EXPORT_RUNS)
                print(f"    export: {report.export_line(export)}", flush=True)
                shown = await asyncio.to_thread(measure_overview, base, key, options.runs)
                print(f"    dashboard: {report.dashboard_line(shown)}", flush=True)
        finally:
            await pool.close()
    return ReadResults(
        data=data,
        workers=options.workers,
        runs=options.runs,
        probes=tuple(measured),
        export=export,
        dashboard=shown,
    )


async def build_rollups(dsn: str, conn: asyncpg.Connection) -> tuple[int, float]:
    """Mark every (product, hour) holding events, then refresh until none is left.

    Marks are stamped with their own hour, so the refresh (oldest marks first)
    goes through the data in time order, as marks made by flushes would.
    """
    started = time.monotonic()
    await conn.execute(
        """
        INSERT INTO rollup_dirty (product, hour, marked_at)
        SELECT DISTINCT product, date_trunc('hour', "timestamp", 'UTC'),
               date_trunc('hour', "timestamp", 'UTC')
        FROM events
        ON CONFLICT DO NOTHING
        """
    )
    max_buckets = Settings.model_fields["rollup_max_buckets"].default
    hours = 0
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        while done := await refresh_rollups(
            pool, max_buckets=max_buckets, property_keys=ROLLUP_PROPERTIES
        ):
            hours += done
    await conn.execute(
        "ANALYZE rollup_hourly, rollup_user_daily, rollup_users, rollup_hourly_props, "
        "rollup_user_daily_names, rollup_user_daily_props, rollup_user_hours, rollup_daily_props"
    )
    return hours, time.monotonic() - started


async def read_facts(conn: asyncpg.Connection, today: dt.date) -> tuple[Facts, int]:
    """The product with the most events, its most frequent name (after http.request) and
    its most active user, from the rollups; and that product's event count."""
    product, events = await conn.fetchrow(
        "SELECT product, sum(events)::bigint FROM rollup_hourly GROUP BY 1 ORDER BY 2 DESC LIMIT 1"
    )
    name = await conn.fetchval(
        "SELECT name FROM rollup_hourly WHERE product = $1 AND name <> $2 "
        "GROUP BY 1 ORDER BY sum(events) DESC LIMIT 1",
        product,
        HTTP_REQUEST,
    )
    user = await conn.fetchval(
        "SELECT user_id FROM rollup_user_daily WHERE product = $1 "
        "GROUP BY 1 ORDER BY sum(events) DESC LIMIT 1",
        product,
    )
    return Facts(product=product, today=today, popular_name=name, user=user), events


def create_read_key(env: dict[str, str], product: str) -> str:
    created = subprocess.run(
        [str(BIN / "labs-analytics"), "keys", "create", "--product", product, "--scope", "read"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return created.stdout.strip().splitlines()[-1]


def write_report(output: Path, results: ReadResults) -> None:
    """Print the run, and put its section into ``output`` (read and written only now: the
    file may have changed during the run)."""
    new = report.section(results, this_machine())
    print("\n" + report.console(results))
    existing = output.read_text() if output.exists() else ""
    output.write_text(report.replace_section(existing, new))
    print(f"bench-read: wrote the {report.HEADING[3:]!r} section of {output}")
