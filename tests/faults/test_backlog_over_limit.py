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
from tests.faults.backlog import build_backlog
from tests.faults.oracle import Oracle
from tests.faults.processes import Children


async def test_backlog_over_the_limit_is_refused_with_503_and_nothing_acknowledged_is_lost(
    settings: Settings, db: asyncpg.Connection, redis: Redis, oracle: Oracle, children: Children
) -> None:
    backlog = await build_backlog(
        children,
        settings,
        oracle,
        events=1000,
        event_bytes=64,
        events_per_request=10,
        BACKLOG_MAX_EVENTS="500",
    )
    assert len(backlog.accepted) == 500
    assert dict(oracle.refusal_reasons) == {"503": 50}
    assert int(await redis.get(settings.backlog_key) or 0) == 500

    children.flusher(settings)
    await oracle.check(db, redis, settings, api_url=backlog.server.base_url, drain_timeout=30)
