"""PostgreSQL stopped for 30 seconds under steady load, then started again.

A real `serve` (with its in-process flusher) takes a steady 20 requests/s of
10 events from four posters. PostgreSQL (the session's embedded server) is
stopped with ``pg_ctl stop -m fast`` for ``OUTAGE_SECONDS``, then started.

Asserted: ingest never noticed (every request got its 202: PostgreSQL is off
the ingest path), the flusher did notice (``flush.failed`` logged) without
crashing, and after the restart the oracle finds every acknowledged event
stored once and intact, the stream drained, and a fresh event landing.
"""

from __future__ import annotations

import asyncio

import asyncpg
from redis.asyncio import Redis

from labs_analytics.embedded import EmbeddedPostgres
from labs_analytics.settings import Settings
from tests.faults.oracle import LoadGenerator, Oracle, connect
from tests.faults.processes import Children, parse_log

# The full 30 s the specification asks for: the test takes about 40 s.
OUTAGE_SECONDS = 30.0


async def test_postgres_stopped_for_thirty_seconds_under_load_loses_and_doubles_nothing(
    settings: Settings,
    db: asyncpg.Connection,
    redis: Redis,
    oracle: Oracle,
    children: Children,
    postgres_server: EmbeddedPostgres,
) -> None:
    await db.close()  # it would die with the server
    server = await children.serve(settings)
    load = LoadGenerator(
        oracle, [server.base_url], rate=20, duration=OUTAGE_SECONDS + 5, payload_bytes=256
    )
    async with load:
        await load.wait_for_acknowledged(200)
        await asyncio.to_thread(postgres_server.stop)
        acknowledged_before = oracle.acknowledged_count
        await asyncio.sleep(OUTAGE_SECONDS)
        acknowledged_during = oracle.acknowledged_count - acknowledged_before
        await asyncio.to_thread(postgres_server.start)
        await load.wait()  # the last few seconds of load, with PostgreSQL back

    # Requests kept being answered all through the outage: at least half of the
    # paced load's events (the posters may fall behind on a busy machine; an
    # ingest waiting on PostgreSQL would answer a handful, or refuse).
    assert acknowledged_during >= OUTAGE_SECONDS * 20 * 10 * 0.5, acknowledged_during
    assert oracle.refused == {}, oracle.refusal_reasons
    logged = {line.get("event") for line in parse_log(server.logs())}
    assert "flush.failed" in logged, "the flusher never noticed the outage"

    conn = await connect(settings)
    try:
        await oracle.check(conn, redis, settings, api_url=server.base_url)
    finally:
        await conn.close()
    assert server.process.poll() is None
    assert "task.crashed" not in logged
