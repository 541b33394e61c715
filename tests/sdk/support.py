"""What the SDK tests share: servers on a port of our choosing, scripts, recordings."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from labs_analytics.auth.keys import Scope
from labs_analytics.auth.repository import KeyRepository
from labs_analytics.settings import Settings
from labs_analytics.storage.database import create_engine
from tests.helpers import ServeProcess, serve_process, stop_process

REPO = Path(__file__).resolve().parents[2]
SDK = REPO / "clients" / "python"  # the SDK's distribution


def new_product() -> str:
    return f"sdk-{uuid.uuid4().hex[:10]}"


def serve_on(
    settings: Settings, log_dir: Path, port: int, *args: str, **env: str
) -> contextlib.AbstractContextManager[ServeProcess]:
    """`labs-analytics serve` on a given port (so a client can be pointed at it first)."""
    return serve_process(settings, log_dir, *args, port=port, **env)


stop = stop_process


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
    environment = {**os.environ, "PYTHONPATH": str(SDK / "src"), **env}
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
