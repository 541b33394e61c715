"""Backlog over the limit: 503 + Retry-After, and nothing acknowledged is lost.

A real `serve` without a flusher takes more than its backlog limit; the
excess is refused with 503 and a Retry-After. Then a flusher drains the
backlog. Asserted: refusals are 503s only, the oracle finds every acknowledged
event stored once, and ingest accepts again once the backlog drained.
"""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

from labs_analytics.settings import Settings
from tests.faults.oracle import LoadGenerator, Oracle
from tests.faults.processes import Children


async def test_backlog_over_the_limit_is_refused_with_503_and_nothing_acknowledged_is_lost(
    settings: Settings, db: asyncpg.Connection, redis: Redis, oracle: Oracle, children: Children
) -> None:
    server = await children.serve(settings, "--no-flusher", BACKLOG_MAX_EVENTS="500")
    load = LoadGenerator(
        oracle, [server.base_url], rate=None, max_requests=100, events_per_request=10, duration=20
    )
    async with load:
        await load.wait()
    assert oracle.acknowledged_count == 500
    assert dict(oracle.refusal_reasons) == {"503": 50}
    backlog = int(await redis.get(settings.backlog_key) or 0)
    assert backlog == 500

    children.flusher(settings)
    await oracle.check(db, redis, settings, api_url=server.base_url, drain_timeout=30)
