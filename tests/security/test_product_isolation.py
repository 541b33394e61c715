"""One product can never make another product's events disappear.

An event's identity is (timestamp, product, event_id). Before, it was
(timestamp, event_id): a key of product B that sent an id and timestamp
product A had already used got a 202, and its event was folded into A's row
as a "duplicate" (or, sent first, turned A's into one). Event ids are chosen
by clients, so any product could do that to any other on purpose.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from labs_analytics.events import EventRecord
from labs_analytics.settings import Settings
from labs_analytics.storage.bulk_writer import BulkWriter
from labs_analytics.storage.database import create_copy_pool
from tests.helpers import ApiFactory, create_key, make_event, wait_for, wait_for_events

NOON = datetime(2026, 11, 27, 12, tzinfo=UTC)


def uuid7_at(moment: datetime, tail: int = 12345) -> uuid.UUID:
    """A UUIDv7 whose embedded time is ``moment`` (what the server derives the timestamp from)."""
    unix_ms = round(moment.timestamp() * 1000)
    return uuid.UUID(int=(unix_ms << 80) | (0x7 << 76) | (0b10 << 62) | tail)


async def rows_with_id(db: asyncpg.Connection, event_id: uuid.UUID) -> list[asyncpg.Record]:
    return await db.fetch(
        'SELECT product, "timestamp", name, user_id, properties::text AS properties, batch_id '
        "FROM events WHERE event_id = $1 ORDER BY product",
        event_id,
    )


async def wait_until_batches_settled(db: asyncpg.Connection, events: int) -> None:
    """Wait until the transaction log accounts for ``events`` events (inserted or duplicate),
    so "stored once" is checked after the resend was written, not before it arrived."""

    async def settled() -> bool:
        total = await db.fetchval(
            "SELECT coalesce(sum(inserted + duplicates), 0) FROM ingest_batches "
            "WHERE status = 'committed'"
        )
        return int(total) >= events

    await wait_for(settled, what=f"{events} events accounted for in ingest_batches")


async def test_another_products_event_with_the_same_id_and_timestamp_is_not_a_duplicate(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    event_id = str(uuid.uuid4())
    async with api() as app:
        victim = await create_key(app.settings, product="clubs")
        attacker = await create_key(app.settings, product="penncourses")
        sent = make_event(event_id=event_id, properties={"owner": "clubs"})
        assert (await app.post(sent, victim)).status_code == 202
        await wait_for_events(db, 1, product="clubs")
        before = await rows_with_id(db, uuid.UUID(event_id))

        forged = make_event(
            event_id=event_id,
            timestamp=sent["timestamp"],
            name="forged",
            properties={"owner": "penncourses"},
        )
        assert (await app.post(forged, attacker)).status_code == 202
        await wait_for_events(db, 1, product="penncourses")

    rows = await rows_with_id(db, uuid.UUID(event_id))
    assert [row["product"] for row in rows] == ["clubs", "penncourses"]
    assert rows[0] == before[0], "the first product's row must be untouched"
    assert rows[1]["name"] == "forged"


async def test_another_products_uuid7_event_without_a_timestamp_is_not_a_duplicate(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    # No timestamp: the server takes it from the UUIDv7, so the id alone
    # would have been enough to collide.
    event_id = uuid7_at(datetime(2026, 11, 20, 8, 30, tzinfo=UTC))
    async with api() as app:
        victim = await create_key(app.settings, product="clubs")
        attacker = await create_key(app.settings, product="penncourses")
        assert (
            await app.post(make_event(event_id=str(event_id), timestamp=None), victim)
        ).status_code == 202
        await wait_for_events(db, 1, product="clubs")
        before = await rows_with_id(db, event_id)
        assert (
            await app.post(
                make_event(event_id=str(event_id), timestamp=None, name="forged"), attacker
            )
        ).status_code == 202
        await wait_for_events(db, 1, product="penncourses")

    rows = await rows_with_id(db, event_id)
    assert [row["product"] for row in rows] == ["clubs", "penncourses"]
    assert rows[0]["timestamp"] == rows[1]["timestamp"] == datetime(2026, 11, 20, 8, 30, tzinfo=UTC)
    assert rows[0] == before[0]


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="with-a-timestamp"),
        pytest.param(
            {
                "event_id": str(uuid7_at(datetime(2026, 11, 20, 8, 30, tzinfo=UTC))),
                "timestamp": None,
            },
            id="uuid7-without-a-timestamp",
        ),
    ],
)
async def test_a_resend_by_the_same_product_is_still_stored_once(
    api: ApiFactory, db: asyncpg.Connection, overrides: dict[str, Any]
) -> None:
    event = make_event(**overrides)
    async with api() as app:
        key = await create_key(app.settings, product="clubs")
        other_key_same_product = await create_key(app.settings, product="clubs")
        assert (await app.post(event, key)).status_code == 202
        assert (await app.post(event, key)).status_code == 202
        assert (await app.post(event, other_key_same_product)).status_code == 202
        await wait_until_batches_settled(db, 3)

    assert await db.fetchval("SELECT count(*) FROM events") == 1


@pytest.fixture
async def writer(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[BulkWriter]:
    del db  # requested so the tables are emptied first
    pool = await create_copy_pool(settings.database_url)
    try:
        yield BulkWriter(pool)
    finally:
        await pool.close()


def record(product: str, event_id: uuid.UUID, name: str = "post.click") -> EventRecord:
    return EventRecord(
        event_id=event_id,
        product=product,
        name=name,
        user="u_1",
        timestamp=NOON,
        properties={"product": product},
        context=None,
        received_at=NOON,
    )


async def test_one_batch_with_two_products_sharing_an_id_and_timestamp_stores_both(
    writer: BulkWriter, db: asyncpg.Connection
) -> None:
    # The flusher batches entries of every product together: the in-batch
    # fold (ON CONFLICT inside one INSERT) must be per product too.
    event_id = uuid.uuid4()
    batch = [
        record("clubs", event_id),
        record("penncourses", event_id),
        record("clubs", event_id, name="resent"),  # the same product again: a duplicate
    ]
    outcome = await writer.write_batch(
        batch_id=uuid.uuid4(), consumer="test", stream_ids=["1-0"], attempt=1, rows=batch
    )

    assert (outcome.inserted, outcome.duplicates) == (2, 1)
    rows = await rows_with_id(db, event_id)
    assert [row["product"] for row in rows] == ["clubs", "penncourses"]
