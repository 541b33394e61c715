"""kill -9 a flusher in the middle of its work: another one takes over, nothing lost or doubled."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

from labs_analytics.settings import Settings
from tests.helpers import (
    ApiFactory,
    cli,
    cli_env,
    count_events,
    create_key,
    duplicated_ids,
    make_events,
    wait_for,
    wait_for_events,
)


async def test_flusher_killed_mid_stream_loses_and_doubles_nothing(
    api: ApiFactory, settings: Settings, db: asyncpg.Connection, redis: Redis, tmp_path: Path
) -> None:
    total = 40_000
    sent: set[str] = set()
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        for _ in range(total // 1000):
            events = make_events(1000)
            assert (await app.post({"events": events}, key)).status_code == 202
            sent.update(e["event_id"] for e in events)

    # Small batches so the victim is surely in the middle of its work when it dies.
    env = {"FLUSH_BATCH_EVENTS": "2000"}
    victim = subprocess.Popen(
        cli("flusher"),
        env=cli_env(settings, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        async def started() -> bool:
            return await count_events(db) > 0

        await wait_for(started, timeout=20, what="the first rows")
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    assert await count_events(db) < total, "the victim finished before it could be killed"

    async with api(flush_batch_events=5000):  # a new flusher reclaims the victim's entries
        await wait_for_events(db, total, timeout=60)

        async def drained() -> bool:
            pending = await redis.xpending(settings.stream_key, settings.consumer_group)
            return pending["pending"] == 0 and await redis.xlen(settings.stream_key) == 0

        await wait_for(drained, timeout=20, what="the stream to drain")

    assert await count_events(db) == total
    assert await duplicated_ids(db) == []
    stored = {str(r["event_id"]) for r in await db.fetch("SELECT event_id FROM events")}
    assert stored == sent
