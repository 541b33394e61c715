"""What the SDK tests share: servers on a port of our choosing, scripts, recordings."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from labs_analytics.auth.keys import Scope
from labs_analytics.auth.repository import KeyRepository
from labs_analytics.settings import Settings
from labs_analytics.storage.database import create_engine
from tests.helpers import ServeProcess, cli, cli_env

REPO = Path(__file__).resolve().parents[2]


def new_product() -> str:
    return f"sdk-{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def serve_on(
    settings: Settings, log_dir: Path, port: int, *args: str, **env: str
) -> Iterator[ServeProcess]:
    """`labs-analytics serve` on a given port (so a client can be pointed at it first)."""
    log_path = log_dir / f"serve-{port}-{uuid.uuid4().hex[:6]}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            cli("serve", "--port", str(port), *args),
            env=cli_env(settings, **env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    running = ServeProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_healthy(running)
        yield running
    finally:
        stop(process)


def wait_healthy(running: ServeProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if running.process.poll() is not None:
            raise AssertionError(f"serve exited {running.process.returncode}:\n{running.logs()}")
        try:
            if httpx.get(f"{running.base_url}/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"serve did not start:\n{running.logs()}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # in case a test left it stopped
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def create_limited_key(settings: Settings, product: str, rate: float) -> str:
    engine = create_engine(settings.database_url)
    try:
        new_key = await KeyRepository(engine).create(
            product=product, scopes=[Scope.INGEST], label="sdk test", rate_limit_per_second=rate
        )
    finally:
        await engine.dispose()
    return new_key.plaintext


async def rows(db: asyncpg.Connection, product: str) -> list[dict[str, Any]]:
    records = await db.fetch(
        "SELECT event_id, name, user_id, timestamp, properties, context FROM events "
        "WHERE product = $1 ORDER BY timestamp, event_id",
        product,
    )
    out = []
    for record in records:
        row = dict(record)
        for column in ("properties", "context"):
            if isinstance(row[column], str):
                row[column] = json.loads(row[column])
        out.append(row)
    return out


@dataclass
class Exchange:
    at: float  # monotonic, when the answer (or the error) came
    status: int | None
    retry_after: str | None
    error: str | None


class RecordingTransport(httpx.HTTPTransport):
    """The real transport, noting when each request ended and how (no faking)."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = super().handle_request(request)
        except Exception as exc:
            with self._lock:
                self.exchanges.append(Exchange(time.monotonic(), None, None, type(exc).__name__))
            raise
        with self._lock:
            self.exchanges.append(
                Exchange(
                    time.monotonic(),
                    response.status_code,
                    response.headers.get("retry-after"),
                    None,
                )
            )
        return response


@dataclass
class ScriptRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_script(code: str, *, timeout: float = 60.0, **env: str) -> ScriptRun:
    """Run a small Python program that imports the SDK from src/, as a product would."""
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), **env}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return ScriptRun(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
