"""The run: start the stack, take the measurements in order, write the report.

Each phase starts the server processes it needs and stops them after:

  1. the floor app and the default `serve` (flushing meanwhile): (a) and (b) in rounds,
     then `serve --no-flusher`: (c)
  2. `serve` with its flushers: drain what (b) and (c) queued
  3. a fresh `serve`: (d) end to end
  4. a past day's events stored and marked, a fresh `serve`: (h), (d) again with
     the flushers' rollup refresh working throughout
  5. no API: (e) the COPY ceiling
  6. a fresh `serve`: the soak (skipped with --soak 0)
  7. `serve --no-flusher`: the compatibility routes, (f) legacy and (g) Segment batches
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from labs_analytics.embedded import free_port
from labs_analytics.settings import to_asyncpg_dsn

from . import compat, measure, report
from .load import CONNECTIONS
from .machine import this_machine
from .results import BenchResults, RollupsWorking, RssPeaks, Soak
from .stack import (
    create_key,
    embedded_stack,
    floor_command,
    process,
    sampling_rss,
    serve_command,
    stack_env,
    wait_http,
)

# (h)'s marked past day: more than the refresh rolls up in (d)'s 60 s at full
# speed on this machine (about 35 µs per event, alone).
ROLLUP_BACKLOG_EVENTS = 2_000_000
CATCH_UP_SECONDS = 600  # the longest wait for it to finish after (h)'s load


@dataclass(frozen=True)
class Options:
    workers: int  # `serve --workers`, and the floor app's
    seconds: int  # each load phase of (a), (b), (c), and (e)
    rounds: int  # of (a) and (b)
    sustain: int  # (d)
    soak: int  # 0: no soak
    output: Path  # BENCHMARKS.md


def main(options: Options) -> None:
    with embedded_stack("bench") as stack:
        results = asyncio.run(run(options, stack.work, stack.database_url, stack.redis_url))
    write_report(options.output, results)


async def run(options: Options, work: Path, database_url: str, redis_url: str) -> BenchResults:
    platform = compat.Platform()
    with platform.serving() as jwks_url:
        env = {**stack_env(database_url, redis_url, work), **compat.platform_env(jwks_url)}
        return await _run(options, work, database_url, env, platform.token())


async def _run(
    options: Options, work: Path, database_url: str, env: dict[str, str], token: str
) -> BenchResults:
    dsn = to_asyncpg_dsn(database_url)
    key = await asyncio.to_thread(create_key, env)
    floor_port, port = free_port(), free_port()
    floor_base, base = f"http://127.0.0.1:{floor_port}", f"http://127.0.0.1:{port}"
    serve = serve_command(port, options.workers)

    # (a) and (b): the default `serve`, as deployed: its flusher process lands
    # the events while the API answers, and (b)'s p99 is held to the floor's.
    with (
        process(floor_command(floor_port, options.workers), env, work / "floor.log"),
        process(serve, env, work / "serve-ingest.log") as api,
    ):
        await asyncio.to_thread(wait_http, f"{floor_base}/docs")
        await asyncio.to_thread(wait_http, f"{base}/healthz")
        async with sampling_rss(api.pid) as ingest_rss:
            ingest = await measure.ingest_rounds(
                f"{floor_base}/v1/events",
                f"{base}/v1/events",
                key,
                options.rounds,
                options.seconds,
                work,
            )
    # (c) ingest only, flushers off, so the API has the machine; its backlog is (d)'s drain.
    with process([*serve, "--no-flusher"], env, work / "serve-batch.log"):
        await asyncio.to_thread(wait_http, f"{base}/healthz")
        batch = await measure.batch_ingest(f"{base}/v1/events", key, options.seconds, work)

    with process(serve, env, work / "serve-drain.log"):
        await asyncio.to_thread(wait_http, f"{base}/healthz")
        drain = await measure.drain(base, dsn)
    print(report.drain_line(drain), flush=True)

    with process(serve, env, work / "serve-e2e.log") as api:
        await asyncio.to_thread(wait_http, f"{base}/healthz")
        start_rate = measure.E2E_START_SHARE_OF_CAPACITY * measure.pipeline_capacity(drain, batch)
        async with sampling_rss(api.pid) as e2e_rss:
            e2e = await measure.end_to_end(base, key, dsn, start_rate, options.sustain, work)
    print(report.end_to_end_line(e2e), flush=True)

    # (h) (d) again, the flushers' rollup refresh working throughout: more
    # marked events than it can roll up in the window (checked: marks left).
    day = await measure.rollup_backlog(dsn, ROLLUP_BACKLOG_EVENTS)
    with process(serve, env, work / "serve-rollups.log"):
        await asyncio.to_thread(wait_http, f"{base}/healthz")
        working = await measure.end_to_end(base, key, dsn, start_rate, options.sustain, work)
        left = await measure.marks_left(dsn, day)
        # Then, the load over, how long the refresh takes to finish the day.
        catching_up = await measure.caught_up(dsn, day, CATCH_UP_SECONDS)
        rollups = RollupsWorking(working, ROLLUP_BACKLOG_EVENTS, left, catching_up)
    print(report.rollups_line(rollups), flush=True)

    copy = await measure.copy_ceiling(dsn, options.seconds)
    print(report.copy_line(copy), flush=True)

    soak: Soak | None = None
    if options.soak > 0:
        # half the rate (d) sustained
        with process(serve, env, work / "serve-soak.log") as api:
            await asyncio.to_thread(wait_http, f"{base}/healthz")
            soak = await measure.soak(
                base, key, api.pid, e2e.offered_events_per_second / 2, options.soak, work
            )
        print(report.soak_line(soak), flush=True)

    # (f) and (g) last, flushers off as for (c): what they queue is not in (d)'s drain.
    with process([*serve, "--no-flusher"], env, work / "serve-compat.log"):
        await asyncio.to_thread(wait_http, f"{base}/healthz")
        compat_results = await measure.compat_ingest(base, key, token, options.seconds, work)

    return BenchResults(
        workers=options.workers,
        connections=CONNECTIONS,
        ingest=ingest,
        batch=batch,
        drain=drain,
        end_to_end=e2e,
        copy=copy,
        rss=RssPeaks(ingest=ingest_rss.peak, end_to_end=e2e_rss.peak),
        soak=soak,
        compat=compat_results,
        rollups=rollups,
    )


def write_report(output: Path, results: BenchResults) -> None:
    """Print the "Latest run" section and put it into ``output`` in place of the last one."""
    latest = report.latest_run(results, this_machine())
    print("\n" + latest)
    existing = output.read_text() if output.exists() else ""
    output.write_text(report.replace_latest_run(existing, latest))
    print(f"bench: wrote {output}")
