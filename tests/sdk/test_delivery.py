"""The sync client against a real server: what arrives, once, and what is refused."""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from labs_analytics.settings import Settings
from labs_analytics_client import (
    AnalyticsClient,
    DeliveryError,
    DroppedEvent,
    RequestRejected,
)
from tests.helpers import (
    RecordingTransport,
    ServeProcess,
    create_key,
    create_key_with_rate,
    duplicated_ids,
    event_rows,
    new_product,
    wait_for_events,
)


async def test_tracked_events_arrive_once_with_their_fields(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    yesterday = datetime.now(UTC).replace(microsecond=123456) - timedelta(days=1)
    with AnalyticsClient(
        key, base_url=shared_server.base_url, context={"app": "clubs", "version": "1.2"}
    ) as client:
        ids = [
            client.track("post.click", user=f"u_{i % 7}", properties={"post_id": i})
            for i in range(250)
        ]
        dated = client.track(
            "page.view", timestamp=yesterday, context={"version": "1.3", "session": "s1"}
        )
        assert client.flush(timeout=10) == 0
        stats = client.stats()

    assert None not in ids
    assert dated is not None
    assert stats.sent == 251
    assert stats.failed == 0
    assert stats.dropped == 0
    assert stats.batches == 3  # 100 + 100 + 51: batches close on count
    await wait_for_events(db, 251, product=product)
    stored = await event_rows(db, product)
    assert sorted(str(row["event_id"]) for row in stored) == sorted([*ids, dated])
    assert await duplicated_ids(db) == []
    assert all(uuid.UUID(event_id).version == 7 for event_id in ids)
    clicks = [row for row in stored if row["name"] == "post.click"]
    assert sorted(row["properties"]["post_id"] for row in clicks) == list(range(250))
    assert clicks[0]["context"] == {"app": "clubs", "version": "1.2"}
    (view,) = [row for row in stored if row["name"] == "page.view"]
    assert view["timestamp"] == yesterday  # the client's timestamp, to the microsecond
    assert view["context"] == {"app": "clubs", "version": "1.3", "session": "s1"}
    assert view["user_id"] is None


async def test_one_client_shared_by_many_threads_delivers_every_event_once(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    ids: list[list[str | None]] = [[] for _ in range(8)]
    with AnalyticsClient(key, base_url=shared_server.base_url) as client:

        def produce(thread: int) -> None:
            for i in range(500):
                ids[thread].append(
                    client.track("thread.event", properties={"thread": thread, "i": i})
                )

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert client.flush(timeout=15) == 0
        stats = client.stats()

    tracked = [event_id for per_thread in ids for event_id in per_thread]
    assert None not in tracked
    assert len(set(tracked)) == 4000
    assert stats.sent == 4000
    await wait_for_events(db, 4000, product=product)
    stored = await event_rows(db, product)
    assert sorted(str(row["event_id"]) for row in stored) == sorted(map(str, tracked))
    for thread, per_thread in enumerate(ids):
        # Each thread's ids increase (UUIDv7, monotonic in a process), in its own order.
        assert per_thread == sorted(per_thread), thread


async def test_sync_mode_delivers_before_track_returns(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    with AnalyticsClient(key, base_url=shared_server.base_url, sync_mode=True) as client:
        event_id = client.track("signup.done", user="u_1")
        assert client.stats().sent == 1  # before any flush
    await wait_for_events(db, 1, product=product)
    assert [str(row["event_id"]) for row in await event_rows(db, product)] == [event_id]


async def test_retry_after_of_a_real_429_is_honoured(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    # 50 events/s: the bucket holds one full request (1000 events); the next 100
    # events need 2 s of refill, so the server answers 429 with Retry-After: 2.
    key = await create_key_with_rate(sdk_settings, 50, product)
    transport = RecordingTransport()
    with AnalyticsClient(
        key,
        base_url=shared_server.base_url,
        batch_size=1000,
        max_in_flight=1,  # the first request is the full batch, the 429 the second
        transport=transport,
    ) as client:
        for i in range(1100):
            client.track("search.query", properties={"i": i})
        assert client.flush(timeout=20) == 0
        stats = client.stats()

    statuses = [exchange.status for exchange in transport.exchanges]
    assert statuses[0] == 202
    assert 429 in statuses
    assert statuses[-1] == 202
    for before, after in zip(transport.exchanges, transport.exchanges[1:], strict=False):
        if before.status == 429:
            assert before.retry_after is not None
            # The backoff alone would retry within 0.2 s; the server asked for more.
            assert after.at - before.at >= float(before.retry_after) - 0.05
    assert float(transport.exchanges[statuses.index(429)].retry_after or 0) >= 2
    assert stats.sent == 1100
    assert stats.retried >= 1
    assert stats.failed == 0
    await wait_for_events(db, 1100, product=product)
    assert len(await event_rows(db, product)) == 1100
    assert await duplicated_ids(db) == []


async def test_a_full_queue_drops_the_newest_counts_and_warns_once(
    shared_server: ServeProcess,
    sdk_settings: Settings,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    drops: list[DroppedEvent] = []
    caplog.set_level(logging.WARNING, logger="labs_analytics_client")
    with AnalyticsClient(
        key,
        base_url=shared_server.base_url,
        max_queue_size=20,
        flush_interval=60,  # nothing leaves the queue until flush()
        on_drop=drops.append,
    ) as client:
        results = [client.track("feed.scroll", properties={"i": i}) for i in range(50)]
        stats = client.stats()
        assert client.flush(timeout=10) == 0

    assert results[20:] == [None] * 30
    assert None not in results[:20]
    assert stats.queued == 20
    assert stats.dropped == 30
    assert stats.dropped_by_reason == {"queue_full": 30}
    assert [drop.reason for drop in drops] == ["queue_full"] * 30
    assert [drop.event_id for drop in drops] != [None] * 30
    warnings = [r for r in caplog.records if "queue_full" in r.getMessage()]
    assert len(warnings) == 1
    await wait_for_events(db, 20, product=product)
    stored = await event_rows(db, product)
    assert sorted(row["properties"]["i"] for row in stored) == list(range(20))


async def test_a_refused_key_drops_the_batch_without_retrying(
    shared_server: ServeProcess, db: asyncpg.Connection
) -> None:
    errors: list[DeliveryError] = []
    with AnalyticsClient(
        "lak_000000000000_not-a-real-key", base_url=shared_server.base_url, on_error=errors.append
    ) as client:
        ids = [client.track("post.click") for _ in range(5)]
        assert client.flush(timeout=10) == 0
        stats = client.stats()

    assert stats.failed == 5
    assert stats.failed_by_reason == {"rejected": 5}
    assert stats.retried == 0
    assert stats.sent == 0
    (error,) = errors
    assert isinstance(error, RequestRejected)
    assert error.status_code == 401
    assert error.error == "unauthenticated"
    assert error.event_ids == ids
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_events_the_server_would_refuse_are_dropped_at_track(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    drops: list[DroppedEvent] = []
    with AnalyticsClient(key, base_url=shared_server.base_url, on_drop=drops.append) as client:
        good = client.track("ok.event", properties={"when": datetime(2026, 1, 2, tzinfo=UTC)})
        assert client.track("has space") is None
        assert client.track("ok.event", properties={"blob": "x" * 40_000}) is None
        assert client.track("ok.event", properties={"text": "\ud800"}) is None  # not UTF-8
        assert client.track("ok.event", properties={"nul": "a\x00b"}) is None
        assert client.track("ok.event", timestamp=datetime.now(UTC) + timedelta(days=2)) is None
        assert client.flush(timeout=10) == 0
        stats = client.stats()

    assert [drop.reason for drop in drops] == [
        "invalid_name",
        "too_large",
        "not_serializable",
        "invalid_properties",
        "invalid_timestamp",
    ]
    assert stats.dropped == 5
    assert stats.sent == 1
    assert stats.failed == 0
    await wait_for_events(db, 1, product=product)
    (row,) = await event_rows(db, product)
    assert str(row["event_id"]) == good
    assert row["properties"] == {"when": "2026-01-02T00:00:00+00:00"}
