"""The servers under test: the floor app and `labs-analytics serve` as processes, and their RSS.

PostgreSQL and Redis are embedded ones the run starts (`run.py`); each
phase starts the server processes it needs and stops them after, so each
phase begins with a fresh API.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from labs_analytics.embedded import EmbeddedPostgres, EmbeddedRedis
from labs_analytics.storage import migrations

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Stack:
    """A run's working directory and its embedded, migrated PostgreSQL and Redis."""

    work: Path
    database_url: str
    redis_url: str


@contextmanager
def embedded_stack(name: str) -> Iterator[Stack]:
    """PostgreSQL (database ``name``) and Redis in a fresh temporary directory,
    stopped and removed after, whatever happened."""
    work = Path(tempfile.mkdtemp(prefix=f"labs-{name.replace('_', '-')}-"))
    print(f"{name}: working in {work}", flush=True)
    postgres = EmbeddedPostgres(work / "postgres", database=name)
    redis = EmbeddedRedis(work / "redis")
    try:
        postgres.start()
        redis.start()
        migrations.upgrade(postgres.url)
        yield Stack(work, postgres.url, redis.url)
    finally:
        redis.stop()
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)


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


def floor_command(port: int, workers: int) -> list[str]:
    """stress/floor_app.py on uvicorn, with the options `serve` gives the real API."""
    return [
        str(BIN / "uvicorn"),
        "--app-dir",
        str(ROOT / "stress"),
        "floor_app:app",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def serve_command(port: int, workers: int) -> list[str]:
    return [str(BIN / "labs-analytics"), "serve", "--port", str(port), "--workers", str(workers)]


def create_key(env: dict[str, str]) -> str:
    created = subprocess.run(
        [str(BIN / "labs-analytics"), "keys", "create", "--product", "bench", "--scope", "ingest"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return created.stdout.strip().splitlines()[-1]


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


def backlog_of(base_url: str) -> int:
    """Events queued and not yet in PostgreSQL, as the API's /readyz counts them."""
    return int(httpx.get(f"{base_url}/readyz").json()["backlog"]["events"])


# --- memory ----------------------------------------------------------------------


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

    @property
    def series(self) -> list[int]:
        return [rss for _, rss in self.samples]


@asynccontextmanager
async def sampling_rss(pid: int, interval: float = 0.5) -> AsyncIterator[RssSampler]:
    """An `RssSampler` running for the body of the block; read it after the block."""
    sampler = RssSampler(pid, interval)
    task = asyncio.create_task(sampler.run())
    try:
        yield sampler
    finally:
        sampler.stop()
        await task
