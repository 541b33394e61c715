"""PostgreSQL restarted (``pg_ctl stop -m immediate``, then start) in the middle of a flush.

A real `serve --no-flusher` first queues a backlog of 5 000 events of ~2 KB,
so that a standalone flusher's batch (one transaction: COPY into staging,
INSERT ... ON CONFLICT, the ``ingest_batches`` row) lasts long enough to be
caught; steady load goes on meanwhile. The test polls ``pg_stat_activity``
until the flusher's COPY is running, freezes that backend (SIGSTOP) until the
flusher's socket is full and asyncpg has paused writing, kills it (SIGKILL),
then stops PostgreSQL immediately (no shutdown checkpoint, backends killed: a
crash as far as the flusher can tell) and starts it again. Before the
flusher's writer turned a lost connection into an error
(``storage.connection_loss``), that paused COPY waited forever.

Asserted: the batch that was in flight failed (``flush.failed``), was kept
and retried, and committed afterwards; the flusher never crashed; ingest
never refused a request; and the oracle finds every acknowledged event stored
once and intact, the stream drained, and a fresh event landing.
"""

from __future__ import annotations

import asyncio
import os
import signal

import asyncpg
import pytest
from redis.asyncio import Redis

from labs_analytics.embedded import EmbeddedPostgres
from labs_analytics.settings import Settings
from tests.faults.backlog import build_backlog
from tests.faults.oracle import LoadGenerator, Oracle, connect
from tests.faults.processes import Children, first_stream_id, wait_for_flush_transaction

BACKLOG_EVENTS = 5_000


# Its own budget: 30 s of load, then a drain allowed 120 s (a COPY cut by the
# crash may wait on the dead socket until the pool's 30 s command timeout).
@pytest.mark.timeout(300)
async def test_postgres_restarted_mid_flush_transaction_loses_and_doubles_nothing(
    settings: Settings,
    db: asyncpg.Connection,
    redis: Redis,
    oracle: Oracle,
    children: Children,
    postgres_server: EmbeddedPostgres,
) -> None:
    backlog = await build_backlog(children, settings, oracle, events=BACKLOG_EVENTS)
    assert len(backlog.accepted) == BACKLOG_EVENTS, dict(backlog.statuses)
    server = backlog.server
    async with LoadGenerator(
        oracle, [server.base_url], rate=10, duration=30, payload_bytes=512
    ) as load:
        flusher = children.flusher(
            settings, FLUSH_BATCH_EVENTS=str(BACKLOG_EVENTS), FLUSH_INTERVAL_MS="1000"
        )
        # Caught in its COPY, the earliest step, so the rest of the transaction
        # (INSERT, the log row, COMMIT) outlasts the stop even on a busy machine.
        in_flight = await wait_for_flush_transaction(db, timeout=20, copy_only=True)
        # The backend is frozen first, so the flusher's socket fills and asyncpg
        # pauses writing: the state in which a lost connection once left the
        # COPY waiting forever (asyncpg never wakes a paused writer on loss).
        os.kill(in_flight["pid"], signal.SIGSTOP)
        await asyncio.sleep(1.0)
        os.kill(in_flight["pid"], signal.SIGKILL)
        await db.close()  # it dies with the server
        await asyncio.to_thread(postgres_server.stop, "immediate")
        await asyncio.to_thread(postgres_server.start)
        # Load goes on across the restart and after it: another second's worth
        # of requests acknowledged with PostgreSQL back.
        await load.wait_for_acknowledged(oracle.acknowledged_count + 10 * 10)
    assert oracle.refused == {}, oracle.refusal_reasons

    conn = await connect(settings)
    try:
        # A COPY cut by the crash can leave asyncpg waiting on the dead socket
        # until the pool's command timeout; the batch is retried after that.
        report = await oracle.check(
            conn, redis, settings, api_url=server.base_url, drain_timeout=120
        )
    finally:
        await conn.close()

    failed = flusher.log_events("flush.failed")
    committed = flusher.log_events("flush.committed")
    assert failed, f"no flush failed: the restart missed the transaction {dict(in_flight)}"
    first_failure = failed[0]
    retried = [
        line
        for line in committed
        if first_stream_id(line) == first_stream_id(first_failure)
        and line["attempt"] > first_failure["attempt"]
    ]
    assert retried, f"the interrupted batch {first_failure} was never committed on a retry"
    assert flusher.crash_lines() == []
    assert report.stored_rows == report.acknowledged
