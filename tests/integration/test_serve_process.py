"""`labs-analytics serve` as a real process: the shape a deployment runs."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import asyncpg
import httpx
from redis.asyncio import Redis

from labs_analytics.settings import Settings
from tests.helpers import (
    create_key,
    duplicated_ids,
    in_a_thread,
    make_events,
    serve_process,
    wait_for_events,
)


async def test_ten_thousand_events_in_batches_land_exactly_once(
    settings: Settings, db: asyncpg.Connection, redis: Redis, tmp_path: Path
) -> None:
    # How fast they land is a benchmark's question (`make bench`: freshness), not
    # this test's: on a busy machine the wait below only bounds a hang.
    key = await create_key(settings, product="clubs")
    # Production timings (500 ms flush interval), not the fast test ones.
    production_like = settings.model_copy(update={"flush_interval_ms": 500})
    async with in_a_thread(serve_process(production_like, tmp_path)) as server:
        batches = [make_events(100) for _ in range(100)]
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as client:
            responses = await asyncio.gather(
                *(client.post("/v1/events", json={"events": batch}) for batch in batches)
            )
        assert [r.status_code for r in responses] == [202] * 100
        await wait_for_events(db, 10_000, timeout=60)

    assert await db.fetchval("SELECT count(*) FROM events") == 10_000
    assert await duplicated_ids(db) == []
    sent = {e["event_id"] for batch in batches for e in batch}
    stored = {str(r["event_id"]) for r in await db.fetch("SELECT event_id FROM events")}
    assert stored == sent


def flusher_children(parent: int) -> list[int]:
    """The `labs-analytics flusher` processes whose parent is ``parent`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"flusher" in cmdline and b"labs_analytics" in cmdline:
            found.append(int(entry.name))
    return found


async def wait_for_flusher(parent: int, *, other_than: int | None = None) -> int:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        pids = [pid for pid in flusher_children(parent) if pid != other_than]
        if pids:
            return pids[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no flusher process under {parent}")


def metric_value(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def test_serve_flushes_in_a_process_of_its_own_and_restarts_it_when_it_dies(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    key = await create_key(settings, product="clubs")
    async with in_a_thread(serve_process(settings, tmp_path)) as server:
        serve_pid = server.process.pid
        flusher = await wait_for_flusher(serve_pid)
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as client:
            assert (
                await client.post("/v1/events", json={"events": make_events(50)})
            ).status_code == 202
            await wait_for_events(db, 50)
            # The flusher's metrics reach the API's /metrics (one directory for all).
            exposition = (await client.get("/metrics")).text
            assert metric_value(exposition, "labs_events_flushed_total") >= 50

            os.kill(flusher, signal.SIGKILL)
            replacement = await wait_for_flusher(serve_pid, other_than=flusher)
            assert (
                await client.post("/v1/events", json={"events": make_events(50)})
            ).status_code == 202
            await wait_for_events(db, 100)
        assert "flusher.exited" in server.logs()

        server.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.process.wait, 30) == 0
    # Stopped with serve, not orphaned.
    assert not await asyncio.to_thread(Path(f"/proc/{replacement}").exists)
    assert await db.fetchval("SELECT count(*) FROM events") == 100
    assert await duplicated_ids(db) == []


async def test_serve_with_no_flusher_starts_none(settings: Settings, tmp_path: Path) -> None:
    async with in_a_thread(serve_process(settings, tmp_path, "--no-flusher")) as server:
        # serve starts its flushers before the API listens, and it answered already.
        assert flusher_children(server.process.pid) == []
