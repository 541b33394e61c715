"""`python stress/chaos.py [--duration 120]`: random faults under steady load, one verdict line.

Starts its own stack in a temporary directory: embedded PostgreSQL and Redis,
two `labs-analytics serve` processes (each with its in-process flusher, each
with its own spool) and one standalone flusher. Steady load goes through the
fault oracle of ``tests/faults``: every event has a unique id and a payload
hash, and it becomes an obligation only when the API answered 202. Every few
seconds one fault, picked at random, is injected and healed:

  kill-flusher     kill -9 the standalone flusher; a new one starts and the
                   group reclaims what the dead one held
  freeze-flusher   SIGSTOP the standalone flusher past the reclaim idle time,
                   then SIGCONT (its late commit must double nothing)
  kill-api         kill -9 an API process; a new one starts on the same spool
  stop-postgres    PostgreSQL stopped (immediate: a crash) for a few seconds
  stop-redis       Redis stopped for a few seconds: ingest spools, then replays

After each fault heals, a fresh event is posted and timed until it is a row:
the fault's recovery time. When the time is up the load stops, the backlog
drains, and the oracle compares the ``events`` table with what was
acknowledged. The last line printed is the verdict:

    acked=… stored=… lost=… duplicated=… max_backlog=… max_recovery_s=…

The exit status is 1 if an acknowledged event was lost or stored twice (or
stored altered, or the backlog never drained); the logs are then kept.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.faults.oracle import LoadGenerator, Oracle, wait_until_drained  # noqa: E402
from tests.faults.processes import Child, Children  # noqa: E402
from tests.helpers import ServeProcess, Servers, create_key, fast_settings  # noqa: E402

from labs_analytics.embedded import EmbeddedPostgres, EmbeddedRedis  # noqa: E402
from labs_analytics.settings import Settings, to_asyncpg_dsn  # noqa: E402
from labs_analytics.storage import migrations  # noqa: E402

API_PROCESSES = 2


@dataclass
class Stack:
    settings: Settings
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis
    children: Children
    work: Path
    rng: random.Random
    apis: list[ServeProcess] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)  # the load generator reads this list
    flusher: Child | None = None

    async def start_api(self, slot: int) -> None:
        # The same spool directory for a slot's every process: a replacement
        # replays what its killed predecessor spooled.
        api = await self.children.serve(self.settings, SPOOL_DIR=str(self.work / f"spool-{slot}"))
        if slot < len(self.apis):
            self.apis[slot], self.urls[slot] = api, api.base_url
        else:
            self.apis.append(api)
            self.urls.append(api.base_url)

    def start_flusher(self) -> None:
        self.flusher = self.children.flusher(self.settings)

    # --- the faults: each injects, waits, heals, and says what it did ----------

    async def kill_flusher(self) -> str:
        assert self.flusher is not None
        self.flusher.kill()
        await asyncio.sleep(self.rng.uniform(0.5, 2))
        self.start_flusher()
        return "kill -9 the standalone flusher, started another"

    async def freeze_flusher(self) -> str:
        assert self.flusher is not None
        frozen_for = self.settings.reclaim_idle_ms / 1000 * 2 + self.rng.uniform(0, 2)
        self.flusher.freeze()
        await asyncio.sleep(frozen_for)
        self.flusher.thaw()
        return f"SIGSTOP the standalone flusher for {frozen_for:.1f} s"

    async def kill_api(self) -> str:
        slot = self.rng.randrange(len(self.apis))
        process = self.apis[slot].process
        process.kill()
        process.wait()
        await asyncio.sleep(self.rng.uniform(0.2, 1))
        await self.start_api(slot)
        return f"kill -9 API process {slot}, started another on its spool"

    async def stop_postgres(self) -> str:
        down_for = self.rng.uniform(2, 6)
        await asyncio.to_thread(self.postgres.stop, "immediate")
        await asyncio.sleep(down_for)
        await asyncio.to_thread(self.postgres.start)
        return f"PostgreSQL down (immediate stop) for {down_for:.1f} s"

    async def stop_redis(self) -> str:
        down_for = self.rng.uniform(2, 5)
        await asyncio.to_thread(self.redis.stop)
        await asyncio.sleep(down_for)
        await asyncio.to_thread(self.redis.start)
        return f"Redis down for {down_for:.1f} s"

    def faults(self) -> list[Callable[[], Awaitable[str]]]:
        return [
            self.kill_flusher,
            self.freeze_flusher,
            self.kill_api,
            self.stop_postgres,
            self.stop_redis,
        ]


async def recovery_seconds(stack: Stack, oracle: Oracle, *, limit: float = 60) -> float:
    """From now until a fresh event, posted now, is a row."""
    started = time.monotonic()
    fresh = oracle.new_events(1)
    async with httpx.AsyncClient(timeout=5) as client:
        while await oracle.post(client, stack.rng.choice(stack.urls), fresh) != 202:
            if time.monotonic() - started > limit:
                raise TimeoutError("no API process accepted a fresh event")
            fresh = oracle.new_events(1)
            await asyncio.sleep(0.1)
    dsn = to_asyncpg_dsn(stack.settings.database_url)
    while time.monotonic() - started < limit:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            conn = await asyncpg.connect(dsn, timeout=2)
            try:
                if await conn.fetchval(
                    "SELECT count(*) FROM events WHERE product = $1 AND event_id = $2",
                    oracle.product,
                    uuid.UUID(fresh[0].event_id),
                ):
                    return time.monotonic() - started
            finally:
                await conn.close()
        await asyncio.sleep(0.1)
    raise TimeoutError(f"a fresh event did not land within {limit} s")


async def watch_backlog(settings: Settings, stop: asyncio.Event) -> int:
    """The largest number of queued, unflushed events seen (Redis's backlog counter)."""
    largest = 0
    redis = Redis.from_url(settings.redis_url, socket_timeout=1, socket_connect_timeout=1)
    try:
        while not stop.is_set():
            with contextlib.suppress(RedisError, OSError, ValueError, TypeError):
                largest = max(largest, int(await redis.get(settings.backlog_key) or 0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)
    finally:
        await redis.aclose()
    return largest


async def chaos(args: argparse.Namespace, stack: Stack) -> int:
    settings = stack.settings
    oracle = Oracle(key=await create_key(settings, product=Oracle.product))
    for slot in range(API_PROCESSES):
        await stack.start_api(slot)
    stack.start_flusher()

    load = LoadGenerator(
        oracle,
        stack.urls,
        rate=args.rate,
        duration=args.duration,
        events_per_request=10,
        concurrency=8,
        timeout=5,
    ).start()
    stop_watching = asyncio.Event()
    backlog = asyncio.create_task(watch_backlog(settings, stop_watching))
    deadline = time.monotonic() + args.duration
    recoveries: list[float] = []
    stuck = False
    faults = stack.faults()
    # Leave the last stretch fault-free: the last fault heals under load.
    while deadline - time.monotonic() > 15 and not stuck:
        await asyncio.sleep(stack.rng.uniform(2, 5))
        what = await stack.rng.choice(faults)()
        try:
            recovered = await recovery_seconds(stack, oracle)
        except TimeoutError as exc:
            print(f"chaos: {what}; the pipeline did not recover: {exc}", flush=True)
            stuck = True
            continue
        recoveries.append(recovered)
        print(f"chaos: {what}; a fresh event landed {recovered:.2f} s after", flush=True)
    await (load.stop() if stuck else load.wait())

    redis = Redis.from_url(settings.redis_url)
    try:
        drained, length, pending = await wait_until_drained(redis, settings, timeout=120)
    finally:
        await redis.aclose()
    stop_watching.set()
    max_backlog = await backlog
    conn = await asyncpg.connect(to_asyncpg_dsn(settings.database_url))
    try:
        report = await oracle.compare(conn, drained=drained, length=length, pending=pending)
    finally:
        await conn.close()
    print(report.describe(), flush=True)
    print(
        f"acked={report.acknowledged} stored={report.stored_rows} lost={len(report.lost)} "
        f"duplicated={len(report.duplicated)} max_backlog={max_backlog} "
        f"max_recovery_s={'none' if stuck else f'{max(recoveries, default=0.0):.2f}'}",
        flush=True,
    )
    return 0 if report.ok and not stuck else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120, help="seconds of load")
    parser.add_argument("--rate", type=float, default=50, help="requests/s of 10 events")
    parser.add_argument("--seed", type=int, default=None, help="repeat a run's choice of faults")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"chaos: seed {seed}, {args.duration:g} s", flush=True)

    work = Path(tempfile.mkdtemp(prefix="labs-chaos-"))
    (work / "logs").mkdir()
    postgres = EmbeddedPostgres(work / "postgres", database="chaos")
    redis = EmbeddedRedis(work / "redis")
    children = Children(work / "logs")
    status = 1
    try:
        postgres.start()
        redis.start()
        migrations.upgrade(postgres.url)
        servers = Servers(postgres.url, redis.url, postgres, redis, work)
        settings = fast_settings(servers, prefix="chaos", spool_dir=work / "spool")
        stack = Stack(settings, postgres, redis, children, work, random.Random(seed))
        status = asyncio.run(chaos(args, stack))
    finally:
        children.close()
        redis.stop()
        postgres.stop()
        if status == 0:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"chaos: logs kept in {work / 'logs'}", flush=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
