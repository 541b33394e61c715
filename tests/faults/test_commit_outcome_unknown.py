"""The connection drops right after COMMIT: the batch committed, the flusher cannot know.

A standalone flusher reaches PostgreSQL only through ``CommitDroppingProxy``
(its DATABASE_URL names the proxy's port). The first time the flusher sends
COMMIT for a flush transaction, the proxy forwards it, swallows the server's
reply, and ~100 ms later closes both sides. Steady load goes on through a
real `serve --no-flusher` meanwhile.

Asserted: the flusher treats the lost answer as a failure (``flush.failed``),
keeps the batch and retries it; the retry commits and finds every row already
there (``ingest_batches`` holds a committed batch with ``inserted = 0`` and
``duplicates > 0`` for the same stream entries as an earlier committed batch
that inserted them); no crash; and the oracle finds every acknowledged event
stored once and intact, the stream drained, and a fresh event landing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from labs_analytics.settings import Settings
from tests.faults.backlog import build_backlog
from tests.faults.oracle import LoadGenerator, Oracle
from tests.faults.processes import Child, Children, first_stream_id
from tests.faults.proxy import CommitDroppingProxy
from tests.helpers import wait_for


async def test_commit_whose_answer_is_lost_is_retried_and_deduplicated(
    settings: Settings, db: asyncpg.Connection, redis: Redis, oracle: Oracle, children: Children
) -> None:
    database = make_url(settings.database_url)
    assert database.host is not None
    assert database.port is not None
    # A backlog for the flusher's first batch, then steady load beside it.
    backlog = await build_backlog(
        children, settings, oracle, events=100, event_bytes=256, events_per_request=10
    )
    assert len(backlog.accepted) == 100, dict(backlog.statuses)
    server = backlog.server
    load = LoadGenerator(oracle, [server.base_url], rate=20, duration=30, payload_bytes=256)
    with CommitDroppingProxy(database.host, database.port) as proxy:
        async with load:
            proxied = database.set(port=proxy.port).render_as_string(hide_password=False)
            flusher = children.flusher(settings.model_copy(update={"database_url": proxied}))
            dropped = await asyncio.to_thread(proxy.dropped.wait, 20)
            assert dropped, f"no COMMIT went through the proxy:\n{flusher.logs()[-3000:]}"

            async def retried() -> bool:
                return retry_of_first_failure(flusher) is not None

            await wait_for(retried, what="the flusher to retry and commit the batch")
            # Load goes on after the retry: half a second's worth more acknowledged.
            await load.wait_for_acknowledged(oracle.acknowledged_count + 10 * 10)
        report = await oracle.check(db, redis, settings, api_url=server.base_url)

    retry = retry_of_first_failure(flusher)
    assert retry is not None
    assert retry["inserted"] == 0, retry
    assert retry["duplicates"] == retry["events"] > 0, retry
    evidence = await db.fetch(
        "SELECT first.batch_id, first.inserted, again.duplicates "
        "FROM ingest_batches AS first JOIN ingest_batches AS again "
        "ON again.stream_ids = first.stream_ids AND again.batch_id <> first.batch_id "
        "WHERE first.status = 'committed' AND again.status = 'committed' "
        "AND first.inserted > 0 AND again.inserted = 0 AND again.duplicates > 0"
    )
    assert len(evidence) == 1, [dict(row) for row in evidence]
    assert flusher.crash_lines() == [], flusher.crash_lines()[:3]
    assert report.stored_rows == report.acknowledged


def retry_of_first_failure(flusher: Child) -> dict[str, Any] | None:
    """The later attempt that committed the batch whose first attempt failed."""
    failed = flusher.log_events("flush.failed")
    if not failed:
        return None
    for line in flusher.log_events("flush.committed"):
        if first_stream_id(line) == first_stream_id(failed[0]) and line["attempt"] > 1:
            return line
    return None
