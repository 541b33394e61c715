"""Benchmark of the Python SDK: what ``track()`` costs the caller, and events/s end to end.

A script, not a test. It starts what the test session starts (embedded
PostgreSQL and Redis in a temporary directory, the real migrations), then a
real ``labs-analytics serve`` on a free port (one uvicorn worker with its
flusher, no per-key rate limit), creates a key with ``labs-analytics keys
create``, and measures, in this process:

1. **track() cost**: ``--calls`` calls (default 100,000) of a typical event
   (name, user, three properties), each timed with ``perf_counter_ns``, while
   the worker thread is delivering them to the server (so the figure includes
   contention for the GIL and the queue lock). The queue is sized so nothing is
   dropped. Reported: median, p90, p99, p99.9 and mean, in µs; for scale, the
   cost of ``json.dumps`` of the same properties on this machine.
2. **end to end**: ``--events`` events (default 50,000) tracked as fast as
   possible, then the time until ``flush()`` returns (all acknowledged, 202)
   and until every row is in PostgreSQL's ``events`` table, for the default
   ``batch_size`` (100) and for ``batch_size=1000``.

3. **burst**: ``--burst-threads`` threads (default 50) each tracking
   ``--burst-events`` events (default 1,000) at once, into one client with the
   default settings (a 50,000-event queue, ``max_in_flight`` 4, unless
   ``--max-in-flight`` or ``--max-queue-size`` say otherwise): how many were dropped
   (``queue_full``), and the delivery rate while the burst drains.

Run it from the repository root::

    .venv/bin/python stress/sdk_bench.py [--calls 100000] [--events 50000] [--burst-only]
        [--max-in-flight 4] [--max-queue-size 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx

from labs_analytics.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from labs_analytics.settings import to_asyncpg_dsn
from labs_analytics.storage import migrations
from labs_analytics_client import AnalyticsClient

PROPERTIES = {"post_id": 42, "path": "/clubs/chess", "liked": True}
CLI = str(Path(sys.executable).with_name("labs-analytics"))


def machine() -> str:
    cores = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    memory = subprocess.run(["free", "-g"], capture_output=True, text=True, check=False).stdout
    total = next((line.split()[1] for line in memory.splitlines() if line.startswith("Mem:")), "?")
    return f"{cores} cores (nproc), {total} GiB RAM (free -g), Python {platform.python_version()}"


@contextmanager
def stack(base: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Embedded PostgreSQL + Redis, migrated, and `labs-analytics serve`; yields (url, env)."""
    postgres = EmbeddedPostgres(base / "postgres", database="labs_bench")
    redis = EmbeddedRedis(base / "redis")
    postgres.start()
    redis.start()
    server: subprocess.Popen[bytes] | None = None
    try:
        migrations.upgrade(postgres.url)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))},
            "DATABASE_URL": postgres.url,
            "REDIS_URL": redis.url,
            "RATE_LIMIT_EVENTS_PER_SECOND": "0",  # measure the SDK, not the key's quota
            "SPOOL_DIR": str(base / "spool"),
            "LOG_LEVEL": "WARNING",
        }
        port = free_port()
        server = subprocess.Popen(
            [CLI, "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(base / "serve.log").open("wb"),
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("serve did not start; see serve.log")
            time.sleep(0.1)
        yield url, env
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        redis.kill()
        postgres.stop()


def create_key(env: dict[str, str], product: str) -> str:
    done = subprocess.run(
        [CLI, "keys", "create", "--product", product, "--scope", "ingest"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def percentile(sorted_values: list[int], share: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * share))] / 1000


def track_cost(url: str, key: str, calls: int) -> dict[str, float]:
    durations: list[int] = []
    clock = time.perf_counter_ns
    with AnalyticsClient(
        key, base_url=url, max_queue_size=calls + 1, shutdown_timeout=120
    ) as client:
        track = client.track
        for i in range(calls):
            started = clock()
            track("post.click", user="u_123", properties=PROPERTIES)
            durations.append(clock() - started)
            if i % 10_000 == 9_999:
                time.sleep(0.05)  # let the worker catch up, as real traffic would
        pending = client.flush(timeout=120)
        stats = client.stats()
    if pending or stats.dropped or stats.sent != calls:
        raise RuntimeError(f"not every event was delivered: {stats}")
    durations.sort()
    dumps = min(_time_dumps() for _ in range(3))
    return {
        "median_us": percentile(durations, 0.5),
        "p90_us": percentile(durations, 0.9),
        "p99_us": percentile(durations, 0.99),
        "p99.9_us": percentile(durations, 0.999),
        "mean_us": statistics.fmean(durations) / 1000,
        "json_dumps_same_properties_us": dumps,
    }


def _time_dumps(n: int = 20_000) -> float:
    started = time.perf_counter_ns()
    for _ in range(n):
        json.dumps(PROPERTIES)
    return (time.perf_counter_ns() - started) / n / 1000


def end_to_end(
    url: str, key: str, database_url: str, product: str, events: int, batch: int
) -> dict[str, float]:
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(to_asyncpg_dsn(database_url)))

    def rows() -> int:
        query = "SELECT count(*) FROM events WHERE product = $1"
        return int(loop.run_until_complete(conn.fetchval(query, product)))

    try:
        started = time.monotonic()
        with AnalyticsClient(
            key, base_url=url, batch_size=batch, max_queue_size=events + 1, shutdown_timeout=300
        ) as client:
            for i in range(events):
                client.track("bench.event", user=f"u_{i % 1000}", properties={"i": i, **PROPERTIES})
            tracked = time.monotonic()
            if client.flush(timeout=300):
                raise RuntimeError(f"events still pending: {client.stats()}")
            acknowledged = time.monotonic()
            stats = client.stats()
        while rows() < events:
            time.sleep(0.05)
        stored = time.monotonic()
        if rows() != events or stats.sent != events or stats.failed:
            raise RuntimeError(f"rows {rows()} != {events}, or failures: {stats}")
    finally:
        loop.run_until_complete(conn.close())
        loop.close()
    return {
        "batch_size": batch,
        "events": events,
        "track_all_s": round(tracked - started, 3),
        "acknowledged_s": round(acknowledged - started, 3),
        "in_postgres_s": round(stored - started, 3),
        "acknowledged_events_per_s": round(events / (acknowledged - started)),
        "stored_events_per_s": round(events / (stored - started)),
        "requests": stats.batches,
    }


def burst(
    url: str, key: str, threads: int, per_thread: int, options: dict[str, int]
) -> dict[str, float]:
    """Many threads tracking at once into one client with the default settings."""
    start = threading.Barrier(threads + 1)
    with AnalyticsClient(key, base_url=url, shutdown_timeout=300, **options) as client:

        def produce() -> None:
            start.wait()
            for i in range(per_thread):
                client.track("burst.event", user=f"u_{i % 100}", properties=PROPERTIES)

        workers = [threading.Thread(target=produce) for _ in range(threads)]
        for worker in workers:
            worker.start()
        start.wait()
        started = time.monotonic()
        for worker in workers:
            worker.join()
        tracked = time.monotonic()
        if client.flush(timeout=300):
            raise RuntimeError(f"events still pending: {client.stats()}")
        acknowledged = time.monotonic()
        stats = client.stats()
    total = threads * per_thread
    if stats.sent + stats.dropped != total or stats.failed:
        raise RuntimeError(f"the counts do not add up: {stats}")
    return {
        "threads": threads,
        "max_in_flight": client._config.max_in_flight,
        "max_queue_size": client._config.max_queue_size,
        "tracked": total,
        "dropped": stats.dropped,
        "dropped_share": round(stats.dropped / total, 3),
        "sent": stats.sent,
        "track_all_s": round(tracked - started, 3),
        "acknowledged_s": round(acknowledged - started, 3),
        "acknowledged_events_per_s": round(stats.sent / (acknowledged - started)),
        "requests": stats.batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000, help="track() calls timed")
    parser.add_argument("--events", type=int, default=50_000, help="events sent end to end")
    parser.add_argument("--burst-threads", type=int, default=50, help="threads in the burst")
    parser.add_argument("--burst-events", type=int, default=1000, help="events per thread")
    parser.add_argument("--burst-only", action="store_true", help="run the burst alone")
    parser.add_argument(
        "--max-in-flight", type=int, default=None, help="for the burst (default: the client's)"
    )
    parser.add_argument(
        "--max-queue-size", type=int, default=None, help="for the burst (default: the client's)"
    )
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    base = Path(tempfile.mkdtemp(prefix="labs-sdk-bench-"))
    try:
        with stack(base) as (url, env):
            product = f"bench-{uuid.uuid4().hex[:8]}"
            key = create_key(env, product)
            result = burst(
                url,
                create_key(env, f"{product}-burst"),
                args.burst_threads,
                args.burst_events,
                {
                    name: value
                    for name, value in (
                        ("max_in_flight", args.max_in_flight),
                        ("max_queue_size", args.max_queue_size),
                    )
                    if value is not None
                },
            )
            print(f"burst: {json.dumps(result)}", flush=True)
            if args.burst_only:
                return
            cost = track_cost(url, key, args.calls)
            print(f"track() cost over {args.calls} calls, worker delivering to the server:")
            for name, value in cost.items():
                print(f"  {name:32s} {value:8.2f}")
            for batch in (100, 1000):
                run_product = f"{product}-{batch}"
                run_key = create_key(env, run_product)
                result = end_to_end(
                    url, run_key, env["DATABASE_URL"], run_product, args.events, batch
                )
                print(f"end to end: {json.dumps(result)}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
