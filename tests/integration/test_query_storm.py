"""A storm of heavy queries never holds up the flushing: reads have connections of their own.

Every read connection is held by a query that cannot finish (it waits on a
lock this test holds on ``rollup_hourly``, which flushes never touch: they
only mark hours in ``rollup_dirty``), and more queries queue behind them.
Meanwhile events are ingested and must land as they did before the storm:
the flusher's pool is another one, and a read beyond the read pool waits a
bounded time for a connection, then is refused with 503, taking nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from labs_analytics.auth.keys import Scope
from labs_analytics.settings import to_asyncpg_dsn
from tests.helpers import ApiFactory, RunningApi, create_key, make_event, wait_for

READ_POOL = 2
STORM = 12
PROBES = 5
# Far above a flush's normal lag here (50 ms interval), far below the storm's
# length: a flusher that waited for a read connection would blow through it.
LANDING_BOUND_SECONDS = 4.0
ROLLUP_QUERY = {"metrics": ["events"], "dimensions": ["time:day"], "date_range": "7d"}


@pytest.fixture
async def app(api: ApiFactory) -> AsyncIterator[RunningApi]:
    async with api(
        read_pool_size=READ_POOL,
        query_timeout_seconds=60,
        read_rate_limit_per_second=10_000,
        rollup_interval_seconds=0,  # the refresh would wait on the test's lock too
    ) as running:
        yield running


async def landing_seconds(app: RunningApi, key: str, db: asyncpg.Connection) -> float:
    """From the 202 of one event to its row in ``events``."""
    event = make_event()
    sent = time.monotonic()
    assert (await app.post(event, key)).status_code == 202
    event_id = uuid.UUID(event["event_id"])

    async def landed() -> bool:
        return bool(await db.fetchval("SELECT 1 FROM events WHERE event_id = $1", event_id))

    await wait_for(landed, what="the probe event in events")
    return time.monotonic() - sent


async def read_backends_waiting(db: asyncpg.Connection) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'labs-analytics read' AND wait_event_type = 'Lock'"
        )
    )


async def test_flushing_keeps_its_pace_while_every_read_connection_is_stuck(
    app: RunningApi, db: asyncpg.Connection
) -> None:
    ingest = await create_key(app.settings, "clubs")
    reader = await create_key(app.settings, "clubs", scopes=[Scope.READ])
    before = [await landing_seconds(app, ingest, db) for _ in range(PROBES)]

    locker = await asyncpg.connect(to_asyncpg_dsn(app.settings.database_url))
    lock = locker.transaction()
    await lock.start()
    await locker.execute("LOCK TABLE rollup_hourly IN ACCESS EXCLUSIVE MODE")
    headers = {"Authorization": f"Bearer {reader}"}
    storm = [
        asyncio.create_task(app.client.post("/v1/query", json=ROLLUP_QUERY, headers=headers))
        for _ in range(STORM)
    ]
    try:

        async def pool_exhausted() -> bool:
            return await read_backends_waiting(db) == READ_POOL

        await wait_for(pool_exhausted, what="every read connection waiting on the lock")
        during = [await landing_seconds(app, ingest, db) for _ in range(PROBES)]
        # The queries past the pool are refused after a bounded wait, not queued without end.

        async def others_refused() -> bool:
            return sum(task.done() for task in storm) == STORM - READ_POOL

        await wait_for(others_refused, what="the queries past the pool refused")
        refused = [task.result() for task in storm if task.done()]
        assert all(r.status_code == 503 and r.json()["error"] == "read_busy" for r in refused)
        assert await read_backends_waiting(db) == READ_POOL  # the stuck ones still are
    finally:
        await lock.rollback()
        await locker.close()
    answers = await asyncio.gather(*storm)
    held = [r for r in answers if r.status_code == 200]
    assert len(held) >= READ_POOL  # the stuck ones answer once the lock is gone
    assert all(r.json()["meta"]["source"] == "rollup" for r in held)

    rounded = [[round(seconds, 3) for seconds in probes] for probes in (before, during)]
    print(f"landing (s) before the storm {rounded[0]}, during {rounded[1]}")
    assert max(during) < LANDING_BOUND_SECONDS, (before, during)
