"""`make bench`: measure ingest against the framework floor and the storage ceiling, in one run.

Starts its own stack (embedded PostgreSQL and Redis, `labs-analytics serve`),
then measures and prints:

  (a) floor      bare FastAPI on uvicorn, one POST route answering 202: req/s, p50/p99
  (b) single     POST /v1/events, one event per request, same load: req/s, p50/p99, b/a
                 ((a) and (b) alternate over ROUNDS rounds; medians are reported)
  (c) batch      POST /v1/events, 100 events per request: events/s acknowledged
  (d) end to end events/s landed in PostgreSQL over SUSTAIN seconds at a paced rate,
                 and freshness (202 → row visible) p50/p99
  (e) ceiling    raw asyncpg COPY into the same `events` table: rows/s, and d/e
  plus the API's peak RSS, its RSS over a soak (SOAK seconds at half the max rate),
  and the load generator's own CPU use.

Results, the machine and the git commit go to BENCHMARKS.md (the "Latest run"
section is replaced; the history below it is kept).

    make bench                    # defaults: WORKERS=2, SUSTAIN=60, SOAK=60, ROUNDS=3
    make bench SOAK=600           # the 10-minute soak
    .venv/bin/python stress/bench.py --help

The load generator is wrk when installed (`apt-get install wrk`), else a
multi-process Python client. Everything runs on this machine, on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from labs_analytics.embedded import EmbeddedPostgres, EmbeddedRedis, free_port  # noqa: E402
from labs_analytics.settings import to_asyncpg_dsn  # noqa: E402
from labs_analytics.storage import migrations  # noqa: E402
from labs_analytics.storage.bulk_writer import STAGING_COLUMNS  # noqa: E402

BIN = Path(sys.executable).parent
CONNECTIONS = 32

SINGLE_EVENT = {"name": "page.view", "user": "u_1842", "properties": {"path": "/clubs/42"}}
BATCH_EVENT = {
    "name": "api.call",
    "user": "u_1842",
    "properties": {"route": "/api/clubs/{id}", "status": 200, "latency_ms": 38},
}


@dataclass
class LoadResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    generator_cpu_percent: float
    generator: str


@dataclass
class Report:
    started: str
    rows: dict[str, Any] = field(default_factory=dict)


# --- processes ---------------------------------------------------------------


def stack_env(database_url: str, redis_url: str, data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        SPOOL_DIR=str(data / "spool"),
        RATE_LIMIT_EVENTS_PER_SECOND="0",  # measuring capacity, not the limiter
        BACKLOG_MAX_EVENTS="0",
        LOG_LEVEL="WARNING",
    )
    return env


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"nothing answered at {url}")


def tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


class RssSampler:
    """Samples the RSS of a process tree in the background; keeps the series."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = False

    async def run(self) -> None:
        while not self._stop:
            self.samples.append((time.monotonic(), tree_rss(self.pid)))
            await asyncio.sleep(self.interval)

    def stop(self) -> None:
        self._stop = True

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)


# --- load generation -----------------------------------------------------------


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
{delay}
done = function(summary, latency, requests)
  io.write(string.format("JSON {\\"p50\\": %d, \\"p99\\": %d}\\n",
    latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(
    url: str,
    key: str,
    body: bytes,
    seconds: int,
    work: Path,
    *,
    connections: int = CONNECTIONS,
    delay_ms: float | None = None,
) -> LoadResult:
    """wrk at full speed, or paced: each connection waits ``delay_ms`` between requests."""
    body_file = work / f"body-{uuid.uuid4().hex[:6]}.json"
    body_file.write_bytes(body)
    script = work / f"post-{uuid.uuid4().hex[:6]}.lua"
    # Random around the mean: the connections drift apart instead of firing together.
    low, high = (round(delay_ms * 0.5), round(delay_ms * 1.5)) if delay_ms else (0, 0)
    delay = f"delay = function() return math.random({low}, {high}) end" if delay_ms else ""
    script.write_text(
        WRK_SCRIPT.replace("{key}", key).replace("{body}", str(body_file)).replace("{delay}", delay)
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = result.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(g) for g in match.groups())
    latency = json.loads(out.split("JSON ", 1)[1].splitlines()[0])
    return LoadResult(
        rps,
        latency["p50"] / 1000,
        latency["p99"] / 1000,
        errors,
        100 * cpu / seconds,
        f"wrk -t2 -c{connections}",
    )


def _python_worker(url: str, key: str, body: bytes, seconds: float, conns: int, out: Any) -> None:
    async def main() -> None:
        latencies: list[float] = []
        errors = 0
        deadline = time.monotonic() + seconds
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def loop() -> None:
                nonlocal errors
                while time.monotonic() < deadline:
                    start = time.perf_counter()
                    try:
                        response = await client.post(url, content=body, headers=headers)
                        if response.status_code >= 300:
                            errors += 1
                    except httpx.HTTPError:
                        errors += 1
                    latencies.append(time.perf_counter() - start)

            await asyncio.gather(*(loop() for _ in range(conns)))
        out.put((latencies, errors))

    asyncio.run(main())


def run_python_load(url: str, key: str, body: bytes, seconds: int) -> LoadResult:
    processes = 4
    queue: Any = multiprocessing.Queue()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = [
        multiprocessing.Process(
            target=_python_worker, args=(url, key, body, seconds, CONNECTIONS // processes, queue)
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    latencies = sorted(lat for lats, _ in results for lat in lats)
    errors = sum(err for _, err in results)
    return LoadResult(
        len(latencies) / seconds,
        1000 * latencies[len(latencies) // 2],
        1000 * latencies[int(len(latencies) * 0.99)],
        errors,
        100 * cpu / seconds,
        f"python x{processes}",
    )


def load(url: str, key: str, body: bytes, seconds: int, work: Path) -> LoadResult:
    if shutil.which("wrk"):
        return run_wrk(url, key, body, seconds, work)
    return run_python_load(url, key, body, seconds)


def _paced_worker(url: str, key: str, body: bytes, rate: float, seconds: float, out: Any) -> None:
    """Send ``rate`` requests/s for ``seconds`` (open loop: late sends are not skipped)."""

    async def main() -> None:
        errors = sent = 0
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as c:
            start = time.monotonic()
            pending: set[asyncio.Task[None]] = set()

            async def one() -> None:
                nonlocal errors
                try:
                    if (await c.post(url, content=body, headers=headers)).status_code != 202:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1

            while (now := time.monotonic() - start) < seconds:
                due = int(now * rate) + 1
                while sent < due:
                    task = asyncio.create_task(one())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    sent += 1
                await asyncio.sleep(0.005)
            await asyncio.gather(*pending)
        out.put((sent, errors))

    asyncio.run(main())


# Many connections, each pausing long between requests: the offered rate then
# depends little on the latency under load.
PACED_CONNECTIONS = 128
E2E_START_SHARE_OF_CAPACITY = 0.8


class BacklogPacer:
    """Between paced segments: slower if the backlog holds more than 1.2 s of
    events (the flushers are falling behind), a little faster while it holds
    less than 0.6 s (a flusher waits up to FLUSH_INTERVAL_MS, 0.5 s, to fill
    a batch, so that much is always queued). (d) reports what was sustained."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def __call__(self, rate: float) -> float:
        backlog_seconds = backlog_of(self.base_url) / (100 * rate)
        if backlog_seconds > 1.2:
            return rate * 0.85
        if backlog_seconds < 0.6:
            return rate * 1.05
        return rate


PACE_SEGMENT_SECONDS = 10


def paced(
    url: str,
    key: str,
    body: bytes,
    rate: float,
    seconds: int,
    work: Path,
    adjust: Callable[[float], float] | None = None,
) -> LoadResult:
    """About ``rate`` requests/s for ``seconds``; what was really sent is in the result.

    ``adjust``, called between segments with the current rate, returns the next one.
    """
    if shutil.which("wrk"):
        # wrk paces by a pause before each request on each connection (random
        # around its mean, so the connections do not fire together), and the
        # rate then also depends on the latency under this load. So the run
        # is cut into segments, and after each the pause is corrected from
        # the rate it really gave.
        period_ms = PACED_CONNECTIONS * 1000 / rate
        delay_ms = period_ms * 0.9
        sent = cpu_seconds = 0.0
        errors = 0
        done = 0
        while done < seconds:
            segment = min(PACE_SEGMENT_SECONDS, seconds - done)
            part = run_wrk(
                url, key, body, segment, work, connections=PACED_CONNECTIONS, delay_ms=delay_ms
            )
            done += segment
            sent += part.requests_per_second * segment
            errors += part.errors
            cpu_seconds += part.generator_cpu_percent / 100 * segment
            latency_ms = PACED_CONNECTIONS * 1000 / max(part.requests_per_second, 1e-6) - delay_ms
            if adjust is not None:
                rate = adjust(rate)
                period_ms = PACED_CONNECTIONS * 1000 / rate
            delay_ms = max(1.0, period_ms - max(0.0, latency_ms))
        return LoadResult(
            sent / seconds,
            float("nan"),
            float("nan"),
            errors,
            100 * cpu_seconds / seconds,
            f"wrk -t2 -c{PACED_CONNECTIONS}, paced",
        )
    workers, queue = paced_load(url, key, body, rate, seconds)
    sent = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    return LoadResult(
        sum(n for n, _ in sent) / seconds,
        float("nan"),
        float("nan"),
        sum(e for _, e in sent),
        float("nan"),
        "python paced",
    )


def paced_load(url: str, key: str, body: bytes, rate: float, seconds: float) -> Any:
    processes = 2
    queue: Any = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(
            target=_paced_worker, args=(url, key, body, rate / processes, seconds, queue)
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    return workers, queue


# --- measurements --------------------------------------------------------------


async def count_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        # An estimate would do for a rate, but the exact count is cheap enough here.
        return int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()


async def landed_rate(dsn: str, start_after: float, end_after: float) -> float:
    """Rows/s landed between two moments of the run."""
    began = time.monotonic()
    await asyncio.sleep(start_after)
    first, first_at = await count_rows(dsn), time.monotonic()
    await asyncio.sleep(max(0.0, end_after - (time.monotonic() - began)))
    return (await count_rows(dsn) - first) / (time.monotonic() - first_at)


async def freshness_probe(url: str, key: str, dsn: str, seconds: float) -> list[float]:
    """Post one marked event every 100 ms; time from its 202 to its row being visible."""
    acked: dict[tuple[dt.datetime, uuid.UUID], float] = {}
    seen: list[float] = []
    conn = await asyncpg.connect(dsn)
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:

        async def poster() -> None:
            while time.monotonic() < deadline:
                event_id = uuid.uuid4()
                moment = dt.datetime.now(dt.UTC)
                body = {
                    "event_id": str(event_id),
                    "name": "bench.probe",
                    "timestamp": moment.isoformat(),
                }
                response = await client.post(f"{url}/v1/events", json=body)
                if response.status_code == 202:
                    acked[(moment, event_id)] = time.monotonic()
                await asyncio.sleep(0.1)

        async def poller() -> None:
            while time.monotonic() < deadline + 10 and (time.monotonic() < deadline or acked):
                if acked:
                    keys = list(acked)
                    rows = await conn.fetch(
                        'SELECT "timestamp", event_id FROM events WHERE ("timestamp", event_id)'
                        " IN (SELECT * FROM unnest($1::timestamptz[], $2::uuid[]))",
                        [k[0] for k in keys],
                        [k[1] for k in keys],
                    )
                    now = time.monotonic()
                    for row in rows:
                        sent = acked.pop((row["timestamp"], row["event_id"]), None)
                        if sent is not None:
                            seen.append(now - sent)
                await asyncio.sleep(0.02)

        await asyncio.gather(poster(), poller())
    await conn.close()
    return seen


async def copy_ceiling(dsn: str, seconds: float) -> float:
    """Raw COPY of event-shaped rows straight into `events`, batches of 5000."""
    conn = await asyncpg.connect(dsn)
    props = json.dumps(BATCH_EVENT["properties"])
    columns = STAGING_COLUMNS  # the flusher's row shape, straight into `events`
    rows = 0
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            now = dt.datetime.now(dt.UTC)
            batch = [
                (now, uuid.uuid4(), "bench", "api.call", "u_1842", props, None, now)
                for _ in range(5000)
            ]
            await conn.copy_records_to_table("events", records=batch, columns=columns)
            rows += len(batch)
    finally:
        await conn.close()
    return rows / (time.monotonic() - start)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


# --- the run -------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "2")))
    parser.add_argument("--seconds", type=int, default=10, help="each load phase (a, b, c)")
    parser.add_argument(
        "--rounds", type=int, default=int(os.environ.get("ROUNDS", "3")), help="(a, b) rounds"
    )
    parser.add_argument("--sustain", type=int, default=int(os.environ.get("SUSTAIN", "60")))
    parser.add_argument("--soak", type=int, default=int(os.environ.get("SOAK", "60")))
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="labs-bench-"))
    print(f"bench: working in {work}", flush=True)
    postgres = EmbeddedPostgres(work / "postgres", database="bench")
    redis = EmbeddedRedis(work / "redis")
    try:
        postgres.start()
        redis.start()
        migrations.upgrade(postgres.url)
        results = asyncio.run(run(args, work, postgres.url, redis.url))
    finally:
        redis.stop()
        postgres.stop()
    write_report(args, results)
    shutil.rmtree(work, ignore_errors=True)


async def run(
    args: argparse.Namespace, work: Path, database_url: str, redis_url: str
) -> dict[str, Any]:
    env = stack_env(database_url, redis_url, work)
    dsn = to_asyncpg_dsn(database_url)
    key = await asyncio.to_thread(create_key, env)
    single = json.dumps(SINGLE_EVENT).encode()
    batch = json.dumps({"events": [BATCH_EVENT] * 100}).encode()
    results: dict[str, Any] = {"workers": args.workers}
    uvicorn_common = ["--workers", str(args.workers), "--log-level", "warning", "--no-access-log"]

    # (a) and (b), interleaved: a round is 10 s of the floor, then 10 s of
    # single-event ingest. Both servers run throughout (the idle one costs
    # nothing), so a machine that speeds up or slows down during the run
    # (other tenants, frequency scaling) moves both alike; the ratio is the
    # median of the rounds' ratios.
    floor_port, port = free_port(), free_port()
    floor_cmd = [
        str(BIN / "uvicorn"),
        "--app-dir",
        str(ROOT / "stress"),
        "floor_app:app",
        "--port",
        str(floor_port),
        *uvicorn_common,
    ]
    serve = [
        str(BIN / "labs-analytics"),
        "serve",
        "--port",
        str(port),
        "--workers",
        str(args.workers),
    ]
    floor_url = f"http://127.0.0.1:{floor_port}/v1/events"
    url = f"http://127.0.0.1:{port}/v1/events"
    with (
        process(floor_cmd, env, work / "floor.log"),
        process([*serve, "--no-flusher"], env, work / "serve-ingest.log") as api,
    ):
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{floor_port}/docs")
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz")
        sampler = RssSampler(api.pid)
        sampling = asyncio.create_task(sampler.run())
        for warm_up in (floor_url, url):
            await asyncio.to_thread(load, warm_up, key, single, 2, work)
        floor_runs: list[LoadResult] = []
        single_runs: list[LoadResult] = []
        for round_number in range(1, args.rounds + 1):
            floor_runs.append(
                await asyncio.to_thread(load, floor_url, key, single, args.seconds, work)
            )
            single_runs.append(await asyncio.to_thread(load, url, key, single, args.seconds, work))
            print_result(f"(a) floor, round {round_number}", floor_runs[-1])
            print_result(f"(b) single, round {round_number}", single_runs[-1])
        results["floor"] = median_run(floor_runs)
        results["single"] = median_run(single_runs)
        results["round_ratios"] = [
            s.requests_per_second / f.requests_per_second
            for f, s in zip(floor_runs, single_runs, strict=True)
        ]
        results["single_p99_worst_ms"] = max(run.p99_ms for run in single_runs)
        results["single_errors"] = sum(run.errors for run in single_runs)
        # (c) on the same server: ingest only, flushers off, so the API has the machine
        results["batch"] = await asyncio.to_thread(load, url, key, batch, args.seconds, work)
        print_result("(c) batch x100", results["batch"])
        sampler.stop()
        await sampling
        results["rss_ingest_peak"] = sampler.peak

    # drain what (b) and (c) queued, with the serve process's own flushers
    with process(serve, env, work / "serve-drain.log"):
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz")
        drain_start, rows_before = time.monotonic(), await count_rows(dsn)
        while True:
            await asyncio.sleep(2)
            backlog = await asyncio.to_thread(backlog_of, f"http://127.0.0.1:{port}")
            if backlog == 0:
                break
        drained = await count_rows(dsn) - rows_before
        results["drain_rate"] = drained / (time.monotonic() - drain_start)
    print(f"    drain (flushers alone): {results['drain_rate']:,.0f} rows/s", flush=True)

    # (d) end to end at a paced rate the flushers can sustain, with a freshness probe
    with process(serve, env, work / "serve-e2e.log") as api:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz")
        # Ingest and flushers share the cores, so each event costs the CPU of
        # both stages: the pace starts below the capacity their measured rates
        # imply together, and follows the backlog from there (see below).
        capacity = 1 / (
            1 / results["drain_rate"] + 1 / (100 * results["batch"].requests_per_second)
        )
        rate_events = capacity * E2E_START_SHARE_OF_CAPACITY
        rate_requests = max(1.0, rate_events / 100)
        pace = BacklogPacer(f"http://127.0.0.1:{port}")
        sampler = RssSampler(api.pid)
        sampling = asyncio.create_task(sampler.run())
        # The landed rate is taken over the steady part: after a warm-up, until the load ends.
        warmup = min(10.0, args.sustain / 4)
        offered, probe, landed = await asyncio.gather(
            asyncio.to_thread(paced, url, key, batch, rate_requests, args.sustain, work, pace),
            freshness_probe(f"http://127.0.0.1:{port}", key, dsn, args.sustain),
            landed_rate(dsn, warmup, args.sustain),
        )
        sampler.stop()
        await sampling
        results["e2e"] = {
            "paced_from_events_per_second": rate_events,
            "offered_events_per_second": 100 * offered.requests_per_second,
            "landed_events_per_second": landed,
            "errors": offered.errors,
            "freshness_p50_s": percentile(probe, 0.5),
            "freshness_p99_s": percentile(probe, 0.99),
            "probes": len(probe),
        }
        results["rss_e2e_peak"] = sampler.peak
    e2e = results["e2e"]
    print(
        f"(d) end to end: {e2e['landed_events_per_second']:,.0f} events/s landed "
        f"(offered {e2e['offered_events_per_second']:,.0f}, paced from "
        f"{e2e['paced_from_events_per_second']:,.0f}), freshness p50 "
        f"{e2e['freshness_p50_s']:.2f} s p99 {e2e['freshness_p99_s']:.2f} s",
        flush=True,
    )

    # (e) the storage ceiling
    results["copy_ceiling"] = await copy_ceiling(dsn, args.seconds)
    print(f"(e) raw COPY: {results['copy_ceiling']:,.0f} rows/s", flush=True)

    # soak: half the max rate, RSS over time
    if args.soak > 0:
        with process(serve, env, work / "serve-soak.log") as api:
            await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz")
            sampler = RssSampler(api.pid, interval=2)
            sampling = asyncio.create_task(sampler.run())
            half_rate = results["e2e"]["offered_events_per_second"] / 100 / 2
            await asyncio.to_thread(paced, url, key, batch, half_rate, args.soak, work)
            sampler.stop()
            await sampling
        series = [rss for _, rss in sampler.samples]
        tenth = max(1, len(series) // 10)
        # Past the warm-up: compare the second tenth of the run with the last.
        early = statistics.mean(series[tenth : 2 * tenth] or series[:tenth])
        late = statistics.mean(series[-tenth:])
        results["soak"] = {
            "seconds": args.soak,
            "early_mb": early / 2**20,
            "late_mb": late / 2**20,
            "growth_percent": 100 * (late - early) / early,
        }
        print(
            f"    soak {args.soak} s: RSS {early / 2**20:.0f} → {late / 2**20:.0f} MiB "
            f"({results['soak']['growth_percent']:+.1f}%)",
            flush=True,
        )
    return results


def create_key(env: dict[str, str]) -> str:
    created = subprocess.run(
        [str(BIN / "labs-analytics"), "keys", "create", "--product", "bench", "--scope", "ingest"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return created.stdout.strip().splitlines()[-1]


def backlog_of(base_url: str) -> int:
    return int(httpx.get(f"{base_url}/readyz").json()["backlog"]["events"])


def median_run(runs: list[LoadResult]) -> LoadResult:
    """The run with the median throughput (the lower middle one for an even count)."""
    return sorted(runs, key=lambda run: run.requests_per_second)[(len(runs) - 1) // 2]


def print_result(label: str, result: LoadResult) -> None:
    print(
        f"{label}: {result.requests_per_second:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
        f"p99 {result.p99_ms:.2f} ms, errors {result.errors}, "
        f"generator CPU {result.generator_cpu_percent:.0f}% ({result.generator})",
        flush=True,
    )


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    floor, single, batch, e2e = r["floor"], r["single"], r["batch"], r["e2e"]
    ratio_b = statistics.median(r["round_ratios"])
    rounds = ", ".join(f"{ratio:.0%}" for ratio in r["round_ratios"])
    worst_p99 = r["single_p99_worst_ms"]
    ratio_d = e2e["landed_events_per_second"] / r["copy_ceiling"]
    checks = [
        ("single-event ingest ≥ 70% of the floor", ratio_b >= 0.70, f"{ratio_b:.0%}"),
        (
            "single-event p99 ≤ 25 ms at 32 connections (worst round)",
            worst_p99 <= 25,
            f"{worst_p99:.1f} ms",
        ),
        ("end to end ≥ 50% of raw COPY", ratio_d >= 0.50, f"{ratio_d:.0%}"),
        ("freshness p99 ≤ 2 s", e2e["freshness_p99_s"] <= 2, f"{e2e['freshness_p99_s']:.2f} s"),
    ]
    if "soak" in r:
        growth = r["soak"]["growth_percent"]
        checks.append(
            (
                f"API RSS flat within 10% over a {r['soak']['seconds']} s soak",
                abs(growth) <= 10,
                f"{growth:+.1f}%",
            )
        )
    cpu = psutil.cpu_count()
    memory = psutil.virtual_memory().total / 2**30
    lines = [
        "## Latest run",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit `{git_commit()}`, "
        f"{cpu} cores, {memory:.0f} GiB, {platform_line()}; "
        f"`serve --workers {r['workers']}`, {CONNECTIONS} connections, generator "
        f"{single.generator}.",
        "",
        "| measure | result |",
        "|---|---|",
        f"| (a) floor: bare FastAPI POST → 202 (median of {len(r['round_ratios'])} rounds) | "
        f"{floor.requests_per_second:,.0f} req/s, "
        f"p50 {floor.p50_ms:.2f} ms, p99 {floor.p99_ms:.2f} ms |",
        f"| (b) `POST /v1/events`, 1 event (median round) | "
        f"{single.requests_per_second:,.0f} req/s, p50 {single.p50_ms:.2f} ms, "
        f"p99 {single.p99_ms:.2f} ms (worst round {worst_p99:.1f} ms), "
        f"**{ratio_b:.0%} of (a)** (rounds: {rounds}), {r['single_errors']} errors in all rounds |",
        f"| (c) `POST /v1/events`, 100 events | {batch.requests_per_second * 100:,.0f} events/s "
        f"({batch.requests_per_second:,.0f} req/s, p99 {batch.p99_ms:.1f} ms), "
        f"{batch.errors} errors |",
        f"| flushers draining alone | {r['drain_rate']:,.0f} rows/s |",
        f"| (d) end to end, paced, {args.sustain} s | {e2e['landed_events_per_second']:,.0f} "
        f"events/s landed (offered {e2e['offered_events_per_second']:,.0f}), "
        f"**{ratio_d:.0%} of (e)**; freshness p50 "
        f"{e2e['freshness_p50_s']:.2f} s, p99 {e2e['freshness_p99_s']:.2f} s "
        f"({e2e['probes']} probes), {e2e['errors']} errors |",
        f"| (e) raw asyncpg COPY into `events` | {r['copy_ceiling']:,.0f} rows/s |",
        f"| API peak RSS (all workers) | ingest {r['rss_ingest_peak'] / 2**20:.0f} MiB, "
        f"end to end {r['rss_e2e_peak'] / 2**20:.0f} MiB |",
    ]
    if "soak" in r:
        soak = r["soak"]
        lines.append(
            f"| soak {soak['seconds']} s at half rate | RSS {soak['early_mb']:.0f} → "
            f"{soak['late_mb']:.0f} MiB ({soak['growth_percent']:+.1f}%) |"
        )
    lines.append(
        f"| load generator CPU | (a) {floor.generator_cpu_percent:.0f}%, "
        f"(b) {single.generator_cpu_percent:.0f}%, (c) {batch.generator_cpu_percent:.0f}% "
        "of one core |"
    )
    lines += ["", "| target | met | measured |", "|---|---|---|"]
    lines += [f"| {name} | {'yes' if ok else '**no**'} | {value} |" for name, ok, value in checks]
    latest = "\n".join(lines) + "\n"
    print("\n" + latest)

    existing = args.output.read_text() if args.output.exists() else ""
    header, history = _split_report(existing)
    args.output.write_text(header + latest + "\n" + history)
    print(f"bench: wrote {args.output}")


def platform_line() -> str:
    import platform

    return f"{platform.system()} {platform.machine()}, Python {platform.python_version()}"


def _split_report(text: str) -> tuple[str, str]:
    """(everything before "## Latest run", everything from the next "## " heading on)."""
    default_header = "# Benchmarks\n\nWritten by `make bench` (stress/bench.py).\n\n"
    if "## Latest run" not in text:
        return (text or default_header), ""
    before, rest = text.split("## Latest run", 1)
    after = rest.split("\n## ", 1)
    return before, ("## " + after[1]) if len(after) > 1 else ""


if __name__ == "__main__":
    main()
