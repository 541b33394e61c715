"""SIGTERM the API process under steady load: a clean, prompt exit that loses nothing.

A real `serve` (with its in-process flusher) takes a steady 40 requests/s of
10 events from four posters. After 1 000 acknowledged events it gets
SIGTERM, as a deployment's rolling restart would send, while the posters keep
going. A new `serve` is started afterwards to drain whatever the old
flusher left pending and to take the fresh event.

Asserted: the process exits by itself with exit code 0 within
``EXIT_WITHIN_SECONDS``, logging ``service.stopped`` and no crash; and the
oracle finds every acknowledged event (before and during the shutdown) stored
once and intact, the stream drained, and a fresh event landing.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import asyncpg
from redis.asyncio import Redis

from labs_analytics.settings import Settings
from tests.faults.oracle import LoadGenerator, Oracle
from tests.faults.processes import Children, parse_log

EXIT_WITHIN_SECONDS = 20.0


async def test_api_terminated_under_load_exits_cleanly_and_loses_nothing_acknowledged(
    settings: Settings, db: asyncpg.Connection, redis: Redis, oracle: Oracle, children: Children
) -> None:
    server = await children.serve(settings)
    async with LoadGenerator(
        oracle, [server.base_url], rate=40, duration=30, payload_bytes=256
    ) as load:
        await load.wait_for_acknowledged(1_000)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            returncode = await asyncio.to_thread(server.process.wait, EXIT_WITHIN_SECONDS)
        except subprocess.TimeoutExpired:
            returncode = None
        exit_seconds = time.monotonic() - signalled

    successor = await children.serve(settings)
    report = await oracle.check(db, redis, settings, api_url=successor.base_url)

    logged = [line.get("event") for line in parse_log(server.logs())]
    assert returncode is not None, f"serve still running {EXIT_WITHIN_SECONDS} s after SIGTERM"
    assert returncode == 0, (
        f"serve exited with {returncode} after SIGTERM "
        f"({exit_seconds:.1f} s; log ends: {logged[-5:]})"
    )
    assert "service.stopped" in logged
    assert "task.crashed" not in logged
    assert report.acknowledged >= 1_000
