"""kill -9 the API process right after a burst of 202s.

A real `serve` (with its in-process flusher) takes a burst from eight
concurrent posters; as soon as 2 000 events have been acknowledged the
process is SIGKILLed, with requests still in flight and its flusher holding
unacknowledged stream entries. A new `serve` is started afterwards: its
flusher reads what was never read and reclaims what the dead one held.

Asserted: at the moment of the kill not everything acknowledged was in
PostgreSQL yet (the drain had real work to do), and then the oracle finds
every acknowledged event stored once and intact (requests cut by the kill may
or may not have been stored, never twice), the stream drained, and a fresh
event landing through the new process.
"""

from __future__ import annotations

import asyncio
import signal

import asyncpg
from redis.asyncio import Redis

from labs_analytics.settings import Settings
from tests.faults.oracle import LoadGenerator, Oracle
from tests.faults.processes import Children

ACKNOWLEDGED_BEFORE_KILL = 2_000


async def test_api_killed_after_a_burst_of_202s_loses_no_acknowledged_event(
    settings: Settings, db: asyncpg.Connection, redis: Redis, oracle: Oracle, children: Children
) -> None:
    # Its flusher commits a batch a second: whenever the kill comes, the events of
    # the last second are acknowledged but not yet in PostgreSQL, however fast
    # or slow the machine.
    victim = await children.serve(settings, FLUSH_INTERVAL_MS="1000")
    burst = LoadGenerator(
        oracle,
        [victim.base_url],
        rate=None,
        max_requests=1_000,
        duration=30,
        events_per_request=20,
        payload_bytes=128,
        concurrency=8,
    )
    async with burst:
        await burst.wait_for_acknowledged(ACKNOWLEDGED_BEFORE_KILL)
        # At the moment of the kill (counted after it, the rows would include what
        # serve's flusher, told to stop as serve dies, wrote on its way out).
        stored_at_kill = await db.fetchval("SELECT count(*) FROM events")
        acknowledged_at_kill = oracle.acknowledged_count
        victim.process.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(victim.process.wait, 10) == -signal.SIGKILL
    assert stored_at_kill < acknowledged_at_kill, "nothing was left for the drain to do"

    successor = await children.serve(settings)
    report = await oracle.check(db, redis, settings, api_url=successor.base_url)
    assert report.acknowledged >= ACKNOWLEDGED_BEFORE_KILL
    assert "task.crashed" not in successor.logs()
