"""Stop Redis under steady load: the spool takes over, then replays when Redis returns.

A real `serve` (own spool, in-process flusher) takes steady load; Redis is
stopped for a few seconds in the middle and started again (AOF on, so what
it held survives the stop). Asserted: every request got a 202 during the
outage too (the spool kept the promise), the spool was used and is empty
again at the end, and the oracle finds every acknowledged event stored once
and intact.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

from labs_analytics.embedded import EmbeddedRedis
from labs_analytics.settings import Settings
from tests.faults.oracle import LoadGenerator, Oracle
from tests.faults.processes import Children

OUTAGE_SECONDS = 3.0


async def test_redis_stopped_under_load_spools_then_replays_and_loses_nothing(
    settings: Settings,
    db: asyncpg.Connection,
    redis: Redis,
    oracle: Oracle,
    children: Children,
    redis_server: EmbeddedRedis,
    tmp_path: Path,
) -> None:
    server = await children.serve(settings)
    load = LoadGenerator(oracle, [server.base_url], rate=30, duration=10, events_per_request=5)
    async with load:
        await load.wait_for_acknowledged(100)
        await asyncio.to_thread(redis_server.stop)
        during = oracle.acknowledged_count
        await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself
        # Down until the spool has answered some requests, however slow the machine.
        await load.wait_for_acknowledged(during + 1)
        spooled_while_down = oracle.acknowledged_count - during
        await asyncio.to_thread(redis_server.start)
        await load.wait()

    assert spooled_while_down > 0, "no request was answered while Redis was down"
    assert dict(oracle.refusal_reasons) == {}, "the spool should have taken every request"
    assert '"event":"queue.redis_down"' in server.logs()
    await oracle.check(db, redis, settings, api_url=server.base_url, drain_timeout=30)
    spools = await asyncio.to_thread(lambda: list(tmp_path.rglob("*.spool")))
    assert spools == [], f"spool segments left behind: {spools}"
