"""kill -9 a standalone flusher in the middle of its COPY into PostgreSQL.

The stream is filled through a real `serve --no-flusher` (10 000 events of
about 2 KB each), then one `labs-analytics flusher` with one big batch starts.
The test polls ``pg_stat_activity`` until that flusher's
``COPY "events_staging" ... FROM STDIN`` is running and SIGKILLs it there.

Asserted: the kill hit the batch before its commit (no row and no
``ingest_batches`` row exists, and PostgreSQL ends the orphaned backend); a
second flusher reclaims the dead one's pending entries; and the oracle finds
every acknowledged event stored once, intact, the stream drained, and a fresh
event landing.
"""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

from labs_analytics.settings import Settings
from tests.faults.backlog import build_backlog
from tests.faults.oracle import Oracle
from tests.faults.processes import Children, wait_for_flush_transaction
from tests.helpers import wait_for

EVENTS = 10_000
EVENTS_PER_REQUEST = 200  # x ~2 KB: well under the 1 MiB body limit


async def test_flusher_killed_during_copy_loses_and_doubles_nothing(
    settings: Settings, db: asyncpg.Connection, redis: Redis, oracle: Oracle, children: Children
) -> None:
    backlog = await build_backlog(
        children, settings, oracle, events=EVENTS, events_per_request=EVENTS_PER_REQUEST
    )
    assert len(backlog.accepted) == EVENTS, dict(backlog.statuses)

    # One batch of everything, so the COPY is long enough to be caught running.
    victim = children.flusher(
        settings, name="victim", FLUSH_BATCH_EVENTS=str(EVENTS), FLUSH_INTERVAL_MS="3000"
    )
    copying = await wait_for_flush_transaction(db, timeout=20, copy_only=True)
    victim.kill()

    async def backend_gone() -> bool:
        return not await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", copying["pid"]
        )

    await wait_for(backend_gone, timeout=10, what="PostgreSQL to end the dead flusher's backend")
    assert await db.fetchval("SELECT count(*) FROM events") == 0, "the COPY had already committed"
    assert await db.fetchval("SELECT count(*) FROM ingest_batches") == 0
    assert victim.crash_lines() == []  # SIGKILL leaves no trace: the log just stops

    successor = children.flusher(settings, name="successor")
    report = await oracle.check(db, redis, settings, api_url=backlog.server.base_url)
    assert report.stored_rows == EVENTS
    assert successor.log_events("flush.committed"), successor.logs()[-2000:]
    assert successor.crash_lines() == []
