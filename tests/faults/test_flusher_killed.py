"""kill -9 a flusher in the middle of its work: another one takes over, nothing lost or doubled."""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

from labs_analytics.settings import Settings
from tests.faults.backlog import build_backlog
from tests.faults.oracle import Oracle
from tests.faults.processes import Children
from tests.helpers import ApiFactory, count_events, duplicated_ids, wait_for, wait_for_events


async def test_flusher_killed_mid_stream_loses_and_doubles_nothing(
    api: ApiFactory,
    settings: Settings,
    db: asyncpg.Connection,
    redis: Redis,
    oracle: Oracle,
    children: Children,
) -> None:
    total = 40_000
    backlog = await build_backlog(
        children, settings, oracle, events=total, event_bytes=64, events_per_request=1000
    )
    assert len(backlog.accepted) == total, dict(backlog.statuses)
    sent = set(backlog.accepted)

    # Small batches so the victim is surely in the middle of its work when it dies.
    victim = children.flusher(settings, name="victim", FLUSH_BATCH_EVENTS="2000")
    try:

        async def started() -> bool:
            return await count_events(db) > 0

        await wait_for(started, what="the first rows")
    finally:
        victim.kill()
    assert await count_events(db) < total, "the victim finished before it could be killed"

    async with api(flush_batch_events=5000):  # a new flusher reclaims the victim's entries
        await wait_for_events(db, total, timeout=60)

        async def drained() -> bool:
            pending = await redis.xpending(settings.stream_key, settings.consumer_group)
            return pending["pending"] == 0 and await redis.xlen(settings.stream_key) == 0

        await wait_for(drained, what="the stream to drain")

    assert await count_events(db) == total
    assert await duplicated_ids(db) == []
    stored = {str(r["event_id"]) for r in await db.fetch("SELECT event_id FROM events")}
    assert stored == sent
