"""Two flushers; one frozen (SIGSTOP) mid-batch past the reclaim idle time, then thawed.

A real `serve --no-flusher` queues a backlog of 5 000 events of ~2 KB, and
steady load goes on. Flusher A (RECLAIM_IDLE_MS=1000) takes the whole backlog
as one batch; when ``pg_stat_activity`` shows A's own backend inside the flush
transaction (A's connections are found by their client ports), A gets
SIGSTOP: it holds its entries in Redis and an open transaction in PostgreSQL.
Flusher B starts and, after the idle time, claims A's entries (XAUTOCLAIM)
and writes them. Then A gets SIGCONT and finishes its stale batch: a late
insert and a late ack of entries that are no longer its own.

Asserted: B took every entry A held; A, thawed, committed its stale batch
without an error, crash or traceback; some committed batch counted the other's
rows as duplicates; and the oracle finds every acknowledged event stored once
and intact, the stream drained, and a fresh event landing.
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
from tests.faults.processes import (
    Child,
    Children,
    first_stream_id,
    pg_backends_of,
    wait_for_flush_transaction,
)
from tests.helpers import wait_for

BACKLOG_EVENTS = 5_000
RECLAIM_IDLE_MS = 1000


async def pending_of(redis: Redis, settings: Settings, consumer: str) -> int:
    summary: Any = await redis.xpending(settings.stream_key, settings.consumer_group)
    for row in summary.get("consumers") or []:
        name = row["name"].decode() if isinstance(row["name"], bytes) else row["name"]
        if name == consumer:
            return int(row["pending"])
    return 0


async def freeze_inside_its_transaction(
    db: asyncpg.Connection, flusher: Child, pg_port: int
) -> asyncpg.Record:
    """SIGSTOP ``flusher`` while its own backend is in the flush transaction."""
    await wait_for_flush_transaction(db, timeout=20)
    for _ in range(200):
        mine = [
            row
            for row in await pg_backends_of(db, flusher.pid, pg_port)
            if row["xact_start"] is not None and "events_staging" in row["query"]
        ]
        if mine:
            flusher.freeze()
            # Still inside after the signal landed? (It may have just committed.)
            for row in await pg_backends_of(db, flusher.pid, pg_port):
                if row["pid"] == mine[0]["pid"] and row["xact_start"] is not None:
                    return row
            flusher.thaw()
        await asyncio.sleep(0.005)
    raise AssertionError("never caught the flusher inside its transaction")


async def test_frozen_flusher_is_taken_over_and_its_late_commit_doubles_nothing(
    settings: Settings,
    db: asyncpg.Connection,
    redis: Redis,
    oracle: Oracle,
    children: Children,
) -> None:
    pg_port = make_url(settings.database_url).port
    assert pg_port is not None
    backlog = await build_backlog(children, settings, oracle, events=BACKLOG_EVENTS)
    assert len(backlog.accepted) == BACKLOG_EVENTS, dict(backlog.statuses)
    server = backlog.server

    timings = {"RECLAIM_IDLE_MS": str(RECLAIM_IDLE_MS), "FLUSH_INTERVAL_MS": "1000"}
    async with LoadGenerator(oracle, [server.base_url], rate=10, duration=30, payload_bytes=256):
        frozen = children.flusher(
            settings, name="frozen", FLUSH_BATCH_EVENTS=str(BACKLOG_EVENTS), **timings
        )
        backend = await freeze_inside_its_transaction(db, frozen, pg_port)
        consumer = frozen.consumer_name()
        assert consumer is not None
        held = await pending_of(redis, settings, consumer)
        assert held > 0, "frozen without a batch in hand"
        stale = frozen.log_events("flush.started")[-1]

        other = children.flusher(settings, name="other", **timings)

        async def taken_over() -> bool:
            return await pending_of(redis, settings, consumer) == 0

        await wait_for(taken_over, timeout=20, what=f"the other flusher to claim {held} entries")
        frozen.thaw()

        def stale_batch_lines() -> list[dict[str, Any]]:
            return [
                line
                for line in frozen.log_events()
                if line.get("event") in ("flush.committed", "flush.failed")
                and first_stream_id(line) == first_stream_id(stale)
            ]

        async def stale_batch_finished() -> bool:
            return bool(stale_batch_lines())

        await wait_for(stale_batch_finished, timeout=20, what="the thawed flusher to finish")

    report = await oracle.check(db, redis, settings, api_url=server.base_url)
    # The stale batch's ack comes after its commit: a flusher told to stop
    # finishes the batch in hand, ack included, before it logs that it stopped.
    frozen.stop()
    await frozen.wait_for_log("flusher.stopped")

    assert [line["event"] for line in stale_batch_lines()] == ["flush.committed"], (
        f"the thawed flusher's stale batch (frozen in {backend['query'][:30]!r}): "
        f"{stale_batch_lines()}"
    )
    assert frozen.log_events("flush.ack_failed") == []
    assert frozen.crash_lines() == [], frozen.crash_lines()[:3]
    assert other.crash_lines() == [], other.crash_lines()[:3]
    assert report.batches["duplicates"] > 0, f"no batch met the other's rows: {report.batches}"
    assert report.batches["inserted"] == report.stored_rows
