"""The bulk writer against real PostgreSQL: every way a batch can overlap what is stored."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from labs_analytics.events import EventRecord, new_uuid4
from labs_analytics.settings import Settings
from labs_analytics.storage.bulk_writer import BatchOutcome, BulkWriter
from labs_analytics.storage.database import create_copy_pool
from labs_analytics.storage.event_ids import forget_old_event_ids

NOON = datetime(2026, 11, 27, 12, tzinfo=UTC)


def records(n: int) -> list[EventRecord]:
    return [
        EventRecord(
            event_id=new_uuid4(),
            product="clubs",
            name="post.click",
            user=f"u_{i}",
            timestamp=NOON + timedelta(seconds=i),
            properties={"i": i},
            context=None,
            received_at=NOON,
        )
        for i in range(n)
    ]


@pytest.fixture
async def writer(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[BulkWriter]:
    pool = await create_copy_pool(settings.database_url)
    try:
        yield BulkWriter(pool)
    finally:
        await pool.close()


async def write(writer: BulkWriter, batch: list[EventRecord]) -> BatchOutcome:
    return await writer.write_batch(
        batch_id=uuid.uuid4(), consumer="test", stream_ids=["1-0"], attempt=1, rows=batch
    )


async def stored_ids(db: asyncpg.Connection) -> list[uuid.UUID]:
    return [row["event_id"] for row in await db.fetch("SELECT event_id FROM events")]


async def test_a_fresh_batch_is_stored_whole(writer: BulkWriter, db: asyncpg.Connection) -> None:
    batch = records(50)
    outcome = await write(writer, batch)
    assert (outcome.inserted, outcome.duplicates) == (50, 0)
    assert sorted(await stored_ids(db)) == sorted(r.event_id for r in batch)


async def test_a_redelivered_batch_stores_nothing_and_counts_duplicates(
    writer: BulkWriter, db: asyncpg.Connection
) -> None:
    batch = records(20)
    await write(writer, batch)
    again = await write(writer, batch)
    assert (again.inserted, again.duplicates) == (0, 20)
    assert len(await stored_ids(db)) == 20


async def test_a_partly_stored_batch_adds_only_the_new_rows(
    writer: BulkWriter, db: asyncpg.Connection
) -> None:
    old, new = records(10), records(15)
    await write(writer, old)
    outcome = await write(writer, [*old[:5], *new])
    assert (outcome.inserted, outcome.duplicates) == (15, 5)
    assert len(set(await stored_ids(db))) == len(await stored_ids(db)) == 25


async def test_the_same_event_twice_in_one_batch_is_stored_once(
    writer: BulkWriter, db: asyncpg.Connection
) -> None:
    batch = records(3)
    outcome = await write(writer, [*batch, batch[0]])
    assert (outcome.inserted, outcome.duplicates) == (3, 1)
    assert len(await stored_ids(db)) == 3


async def test_the_log_row_commits_with_the_rows(
    writer: BulkWriter, db: asyncpg.Connection
) -> None:
    batch = records(7)
    outcome = await write(writer, batch)
    row = await db.fetchrow(
        "SELECT status, events, inserted, duplicates FROM ingest_batches WHERE batch_id = $1",
        outcome.batch_id,
    )
    assert row is not None
    assert dict(row) == {"status": "committed", "events": 7, "inserted": 7, "duplicates": 0}
    stored_batch_ids = {r["batch_id"] for r in await db.fetch("SELECT batch_id FROM events")}
    assert stored_batch_ids == {outcome.batch_id}


def resent(record: EventRecord, *, timestamp: datetime, received_at: datetime) -> EventRecord:
    """The same event id sent again, stamped differently (a retry without a
    timestamp gets a new receive time; some clients stamp every attempt)."""
    return dataclasses.replace(record, timestamp=timestamp, received_at=received_at)


async def stored(db: asyncpg.Connection) -> list[tuple[uuid.UUID, datetime, str]]:
    rows = await db.fetch('SELECT event_id, "timestamp", product FROM events ORDER BY 1, 3')
    return [(row["event_id"], row["timestamp"], row["product"]) for row in rows]


async def test_an_id_resent_with_another_timestamp_is_stored_once_under_the_first(
    writer: BulkWriter, db: asyncpg.Connection
) -> None:
    first = records(1)[0]
    await write(writer, [first])
    later = NOON + timedelta(minutes=5)
    again = await write(writer, [resent(first, timestamp=later, received_at=later)])
    assert (again.inserted, again.duplicates) == (0, 1)
    assert await stored(db) == [(first.event_id, first.timestamp, "clubs")]


async def test_in_one_batch_the_earliest_received_copy_of_an_id_wins(
    writer: BulkWriter, db: asyncpg.Connection
) -> None:
    first = records(1)[0]
    copies = [
        resent(first, timestamp=NOON + timedelta(hours=2), received_at=NOON + timedelta(hours=2)),
        first,
        resent(first, timestamp=NOON - timedelta(days=3), received_at=NOON + timedelta(hours=1)),
    ]
    outcome = await write(writer, copies)
    assert (outcome.inserted, outcome.duplicates) == (1, 2)
    assert await stored(db) == [(first.event_id, first.timestamp, "clubs")]


async def test_the_same_id_in_two_products_is_two_events_whatever_the_timestamps(
    writer: BulkWriter, db: asyncpg.Connection
) -> None:
    clubs = records(1)[0]
    mobile = dataclasses.replace(clubs, product="mobile", timestamp=NOON + timedelta(seconds=9))
    await write(writer, [clubs])
    outcome = await write(writer, [mobile])
    assert outcome.inserted == 1
    assert await stored(db) == [
        (clubs.event_id, clubs.timestamp, "clubs"),
        (clubs.event_id, mobile.timestamp, "mobile"),
    ]


async def test_ids_past_the_window_are_forgotten_and_recent_ones_kept(
    writer: BulkWriter, db: asyncpg.Connection
) -> None:
    old, recent = records(2)
    old = dataclasses.replace(old, received_at=NOON - timedelta(days=8))
    await write(writer, [old, recent])
    forgotten = await forget_old_event_ids(db, window_days=7, now=NOON, batch_rows=1)
    assert forgotten == 1
    remembered = {row["event_id"] for row in await db.fetch("SELECT event_id FROM event_ids")}
    assert remembered == {recent.event_id}
    # Past the window, the documented limit: another timestamp is another row;
    # within it, still one.
    later = NOON + timedelta(hours=1)
    outcome = await write(
        writer,
        [
            resent(old, timestamp=later, received_at=later),
            resent(recent, timestamp=later, received_at=later),
        ],
    )
    assert (outcome.inserted, outcome.duplicates) == (1, 1)
    assert [row[0] for row in await stored(db)].count(old.event_id) == 2
