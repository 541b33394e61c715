"""The flusher's promises: exactly-once rows, ack after commit, a readable transaction log."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from redis.asyncio import Redis

from labs_analytics.flusher import Flusher
from labs_analytics.flusher.flusher import BEHIND_AFTER_SECONDS, PAUSE_AFTER_SHORT_READ_SECONDS
from labs_analytics.queue.connection import create_redis
from labs_analytics.settings import Settings
from labs_analytics.storage.database import create_copy_pool
from tests.helpers import (
    ApiFactory,
    count_events,
    create_key,
    duplicated_ids,
    make_event,
    make_events,
    wait_for,
    wait_for_events,
)


async def test_resent_event_is_stored_once(api: ApiFactory, db: asyncpg.Connection) -> None:
    async with api() as app:
        key = await create_key(app.settings)
        event = make_event()
        for _ in range(3):
            assert (await app.post(event, key)).status_code == 202
        # A duplicate inside one request, too.
        assert (await app.post({"events": [event, event]}, key)).status_code == 202
        await wait_for(lambda: _total_events_flushed(db, 5), what="5 events through the flusher")

    assert await count_events(db) == 1
    totals = await db.fetchrow(
        "SELECT sum(events) AS events, sum(inserted) AS inserted, sum(duplicates) AS duplicates "
        "FROM ingest_batches WHERE status = 'committed'"
    )
    assert totals is not None
    assert (totals["events"], totals["inserted"], totals["duplicates"]) == (5, 1, 4)


async def test_a_uuid4_event_retried_without_timestamp_or_restamped_is_stored_once(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    """The identity rule (README, "Exactly-once rows"): an event id is stored
    once per product whatever timestamps its resends carry. A UUIDv4 without
    a timestamp gets the receive time, a new one on each retry; another
    client stamps each attempt with its own clock."""
    event_id = str(uuid.uuid4())
    async with api() as app:
        key = await create_key(app.settings)
        unstamped = make_event(event_id=event_id, timestamp=None)
        for _ in range(2):
            assert (await app.post(unstamped, key)).status_code == 202
            await asyncio.sleep(0.01)  # a later receive time
        restamped = make_event(event_id=event_id, timestamp="2026-11-20T08:30:00Z")
        assert (await app.post(restamped, key)).status_code == 202
        await wait_for(lambda: _total_events_flushed(db, 3), what="3 events through the flusher")

    rows = await db.fetch("SELECT event_id, timestamp, received_at FROM events")
    assert [row["event_id"] for row in rows] == [uuid.UUID(event_id)]
    # The first copy's receive time is its timestamp.
    assert rows[0]["timestamp"] == rows[0]["received_at"]


async def _total_events_flushed(db: asyncpg.Connection, n: int) -> bool:
    total = await db.fetchval(
        "SELECT coalesce(sum(events), 0) FROM ingest_batches WHERE status = 'committed'"
    )
    return int(total) >= n


async def test_stream_is_empty_after_flush(
    api: ApiFactory, db: asyncpg.Connection, redis: Redis
) -> None:
    async with api() as app:
        key = await create_key(app.settings)
        for _ in range(5):
            assert (await app.post({"events": make_events(20)}, key)).status_code == 202
        await wait_for_events(db, 100)

        async def drained() -> bool:
            pending = await redis.xpending(app.settings.stream_key, app.settings.consumer_group)
            return await redis.xlen(app.settings.stream_key) == 0 and pending["pending"] == 0

        # Acked (pending list empty) and deleted (stream empty): Redis memory is returned.
        await wait_for(drained, what="stream drained")


async def test_batch_redelivered_after_flusher_dies_between_commit_and_ack_is_stored_once(
    api: ApiFactory, settings: Settings, db: asyncpg.Connection, redis: Redis
) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        events = make_events(50)
        assert (await app.post({"events": events}, key)).status_code == 202

    # Flusher A reads and commits, then "dies": it never acks, and is never seen again.
    pool_a = await create_copy_pool(settings.database_url)
    redis_a = create_redis(settings.redis_url, timeout_seconds=2)
    flusher_a = Flusher(redis=redis_a, pool=pool_a, settings=settings, consumer_name="flusher-a")
    stop = asyncio.Event()
    await flusher_a.consumer.ensure_group()
    batch = await flusher_a.collect_batch(stop)
    assert batch is not None
    committed = await flusher_a.write(batch, stop)
    assert committed is not None
    assert committed.inserted == 50
    await pool_a.close()
    await redis_a.aclose()
    pending = await redis.xpending(settings.stream_key, settings.consumer_group)
    assert pending["pending"] == 1  # committed but never acknowledged

    # Flusher B finds the entry orphaned after reclaim_idle_ms and writes it again.
    async def orphaned() -> bool:
        (entry,) = await redis.xpending_range(
            settings.stream_key, settings.consumer_group, min="-", max="+", count=1
        )
        return int(entry["time_since_delivered"]) > settings.reclaim_idle_ms

    await wait_for(orphaned, what=f"the entry idle for {settings.reclaim_idle_ms} ms")
    pool_b = await create_copy_pool(settings.database_url)
    redis_b = create_redis(settings.redis_url, timeout_seconds=2)
    try:
        flusher_b = Flusher(redis=redis_b, pool=pool_b, settings=settings, consumer_name="b")
        redelivered = await flusher_b.run_once(stop)
    finally:
        await pool_b.close()
        await redis_b.aclose()

    assert redelivered is not None
    assert (redelivered.events, redelivered.inserted, redelivered.duplicates) == (50, 0, 50)
    assert await count_events(db) == 50
    assert await duplicated_ids(db) == []
    pending = await redis.xpending(settings.stream_key, settings.consumer_group)
    assert pending["pending"] == 0
    assert await redis.xlen(settings.stream_key) == 0


async def test_transaction_log_records_each_committed_batch(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    async with api() as app:
        key = await create_key(app.settings)
        assert (await app.post({"events": make_events(7)}, key)).status_code == 202
        await wait_for_events(db, 7)

    row = await db.fetchrow("SELECT * FROM ingest_batches")
    assert row is not None
    assert row["status"] == "committed"
    assert (row["events"], row["inserted"], row["duplicates"], row["attempt"]) == (7, 7, 0, 1)
    assert len(row["stream_ids"]) == 1
    assert row["finished_at"] >= row["started_at"]
    assert row["total_ms"] >= 0
    stored_batch_ids = await db.fetch("SELECT DISTINCT batch_id FROM events")
    assert [r["batch_id"] for r in stored_batch_ids] == [row["batch_id"]]


async def test_events_land_in_daily_partitions_and_odd_days_in_the_default(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    today = datetime.now(UTC).replace(microsecond=0)
    async with api() as app:
        key = await create_key(app.settings)
        events = [
            make_event(timestamp=today.isoformat()),
            make_event(timestamp="2001-02-03T04:05:06Z"),
        ]
        assert (await app.post({"events": events}, key)).status_code == 202
        await wait_for_events(db, 2)

    rows = await db.fetch(
        "SELECT tableoid::regclass::text AS partition, timestamp FROM events ORDER BY timestamp"
    )
    assert [r["partition"] for r in rows] == ["events_default", f"events_p{today:%Y%m%d}"]
    ahead = today + timedelta(days=app.settings.partition_days_ahead)
    assert await db.fetchval("SELECT to_regclass($1) IS NOT NULL", f"events_p{ahead:%Y%m%d}")


async def test_timestamp_defaults_to_the_uuid7_time_then_to_receive_time(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    created_ms = int(datetime(2026, 11, 20, 8, 30, tzinfo=UTC).timestamp() * 1000)
    uuid7 = uuid.UUID(int=(created_ms << 80) | (0x7 << 76) | (0b10 << 62) | 12345)
    async with api() as app:
        key = await create_key(app.settings)
        before = datetime.now(UTC)
        events = [
            make_event(event_id=str(uuid7), timestamp=None),
            make_event(event_id=None, timestamp=None),
        ]
        response = await app.post({"events": events}, key)
        assert response.status_code == 202
        await wait_for_events(db, 2)

    by_id = {r["event_id"]: r for r in await db.fetch("SELECT * FROM events")}
    assert by_id[uuid7]["timestamp"] == datetime(2026, 11, 20, 8, 30, tzinfo=UTC)
    assigned = uuid.UUID(response.json()["ids"][1])
    assert assigned.version == 4
    assert before <= by_id[assigned]["timestamp"] <= datetime.now(UTC)
    assert by_id[assigned]["timestamp"] == by_id[assigned]["received_at"]


async def test_rows_carry_the_product_of_the_key_that_sent_them(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    async with api() as app:
        clubs = await create_key(app.settings, product="clubs")
        mobile = await create_key(app.settings, product="penn-mobile")
        assert (await app.post({"events": make_events(3)}, clubs)).status_code == 202
        assert (await app.post({"events": make_events(2)}, mobile)).status_code == 202
        await wait_for_events(db, 5)

    counts = dict(await db.fetch("SELECT product, count(*) FROM events GROUP BY product"))
    assert counts == {"clubs": 3, "penn-mobile": 2}


async def test_a_trickle_of_small_requests_is_collected_in_a_few_full_reads(
    api: ApiFactory, settings: Settings
) -> None:
    """After a read that drained the stream, the flusher pauses before reading
    again, so a steady trickle of one-event entries is read in slices rather
    than one round trip per entry (the CPU it saves is the API's)."""
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        slow = settings.model_copy(update={"flush_interval_ms": 2000, "flush_batch_events": 80})
        reader_redis = create_redis(settings.redis_url, timeout_seconds=2)
        pool = await create_copy_pool(settings.database_url)
        try:
            flusher = Flusher(redis=reader_redis, pool=pool, settings=slow, consumer_name="trickle")
            await flusher.consumer.ensure_group()
            # Counted on this flusher's consumer, not server-wide: other tests'
            # servers may be reading the same Redis meanwhile.
            reads = 0
            read_new = flusher.consumer.read_new

            async def counted_read(**kwargs: Any) -> Any:
                nonlocal reads
                reads += 1
                return await read_new(**kwargs)

            flusher.consumer.read_new = counted_read  # type: ignore[method-assign]
            collecting = asyncio.create_task(flusher.collect_batch(asyncio.Event()))
            started = time.monotonic()
            for _ in range(80):  # one event per request, one after the other
                assert (await app.post(make_event(), key)).status_code == 202
            batch = await asyncio.wait_for(collecting, timeout=30)
            elapsed = time.monotonic() - started
        finally:
            await pool.close()
            await reader_redis.aclose()

    assert batch is not None
    assert batch.events == 80
    # At most a read per pause while entries trickle in, and a pause of at
    # least 20 ms (without one: a read per entry or two, ~80).
    pause = max(PAUSE_AFTER_SHORT_READ_SECONDS, 0.02)
    assert reads <= elapsed / pause + 3, (reads, elapsed)


async def test_a_flusher_is_behind_after_a_second_of_full_batches_only(
    api: ApiFactory, settings: Settings, redis: Redis
) -> None:
    """Full batches for BEHIND_AFTER_SECONDS (the stream holds more than one batch
    all along) make a flusher behind, which defers the rollup refresh; one batch
    that is not full (the stream drained) ends it."""
    settings = settings.model_copy(update={"flush_batch_events": 10})
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        for _ in range(9):  # 9 entries of 5 events: 4 full batches of 10 at least
            assert (await app.post({"events": make_events(5)}, key)).status_code == 202
    pool = await create_copy_pool(settings.database_url)
    flusher_redis = create_redis(settings.redis_url, timeout_seconds=2)
    try:
        flusher = Flusher(redis=flusher_redis, pool=pool, settings=settings, consumer_name="f")
        await flusher.consumer.ensure_group()
        stop = asyncio.Event()
        first = await flusher.collect_batch(stop)
        assert first is not None
        assert first.events == 10
        assert not flusher.is_behind()  # full, but for no time yet
        for _ in range(3):
            await asyncio.sleep(BEHIND_AFTER_SECONDS / 3 + 0.01)
            batch = await flusher.collect_batch(stop)
            assert batch is not None
            assert batch.events == 10
        assert flusher.is_behind()
        # Whatever else the stream holds, the batches end with one not full.
        for _ in range(100):
            last = await flusher.collect_batch(stop)
            if last is None or last.events < 10:
                break
        assert not flusher.is_behind()
    finally:
        await pool.close()
        await flusher_redis.aclose()


async def test_a_standby_flusher_flushes_only_while_the_stream_holds_a_backlog(
    api: ApiFactory, settings: Settings, db: asyncpg.Connection
) -> None:
    """`serve` starts every flusher but its first as a standby: below
    STANDBY_FLUSHER_BACKLOG_EVENTS it reads nothing (the first keeps up alone);
    at it, it flushes too, until the backlog falls below half of it."""
    settings = settings.model_copy(
        update={"standby_flusher_backlog_events": 30, "flush_batch_events": 10}
    )
    pool = await create_copy_pool(settings.database_url)
    flusher_redis = create_redis(settings.redis_url, timeout_seconds=2)
    stop = asyncio.Event()
    standby = Flusher(
        redis=flusher_redis, pool=pool, settings=settings, consumer_name="s", standby=True
    )
    standby.standby_join_after_seconds = 3600  # the backlog alone calls it in here
    running = asyncio.create_task(standby.run(stop))
    try:
        async with api(run_flusher=False) as app:
            key = await create_key(app.settings)
            for _ in range(4):  # 20 events, 5 an entry: under the backlog that calls it in
                assert (await app.post({"events": make_events(5)}, key)).status_code == 202
            assert not await standby._needed()
            # Standing by with a full batch waiting (10 events here): the first
            # flusher is not keeping up, so this process's rollup refresh waits too.
            assert standby.is_behind()
            for _ in range(4):  # 40: it joins, and flushes (10 a batch) until under 15
                assert (await app.post({"events": make_events(5)}, key)).status_code == 202

        async def stood_by_again() -> bool:
            return await count_events(db) >= 30 and standby._standing_by

        await wait_for(stood_by_again, what="the standby flushing, then standing by")
        # Had it flushed while under the backlog, it would never have joined:
        # 20 events, then 20 more, each under 30.
        assert await count_events(db) == 30
        assert standby.is_behind()  # 10 left: still a full batch
        settings_less_behind = settings.model_copy(update={"flush_batch_events": 11})
        standby.settings = settings_less_behind
        assert not standby.is_behind()
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=30)
        await pool.close()
        await flusher_redis.aclose()


async def test_a_standby_flusher_joins_when_an_entry_has_waited_too_long(
    api: ApiFactory, settings: Settings, db: asyncpg.Connection
) -> None:
    """Below the backlog that calls it in, an entry left waiting (the first
    flusher frozen, say) calls a standby in all the same."""
    settings = settings.model_copy(update={"standby_flusher_backlog_events": 1000})
    pool = await create_copy_pool(settings.database_url)
    flusher_redis = create_redis(settings.redis_url, timeout_seconds=2)
    stop = asyncio.Event()
    standby = Flusher(
        redis=flusher_redis, pool=pool, settings=settings, consumer_name="s", standby=True
    )
    standby.standby_join_after_seconds = 0.5
    running = asyncio.create_task(standby.run(stop))
    try:
        async with api(run_flusher=False) as app:
            key = await create_key(app.settings)
            assert (await app.post({"events": make_events(5)}, key)).status_code == 202
        await wait_for_events(db, 5)
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=30)
        await pool.close()
        await flusher_redis.aclose()
