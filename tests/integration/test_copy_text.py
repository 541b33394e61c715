"""Both readings of stream entries stage the same rows: COPY text, and the exact one.

The flusher reads entries as COPY text (``storage.copy_text``) and falls back
to decoding them into records (binary COPY) when PostgreSQL refuses the
text. For entries in the form this service writes, the two must be the same
rows to the last character and microsecond, or the fallback would store an
event differently from its neighbours. Then: the flusher on entries that
take each path, through the real service.
"""

from __future__ import annotations

import string
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from labs_analytics.events import EventRecord
from labs_analytics.queue.entries import decode_entry, encode_entry
from labs_analytics.storage.bulk_writer import STAGING_TABLE, prepare_connection, stage_rows
from labs_analytics.storage.copy_text import copy_text
from labs_analytics.storage.database import to_asyncpg_dsn
from tests.conftest import Servers
from tests.helpers import ApiFactory, count_events, make_record, wait_for, wait_for_events

# Any text an event may hold (no NUL, no lone surrogate: the API refuses
# those), with the characters COPY's text format escapes made likely.
TEXT = st.lists(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
    | st.sampled_from(["\t", "\n", "\r", "\\", "\\N", "\\.", '"', "é", "✓", "𝄞"]),
    max_size=20,
).map("".join)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
TIMES = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@st.composite
def records(draw: st.DrawFn) -> EventRecord:
    record = EventRecord(
        event_id=draw(st.uuids()),
        product=draw(st.text(string.ascii_lowercase + "_", min_size=1, max_size=20)),
        name=draw(st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s) | TEXT),
        user=draw(st.none() | TEXT),
        timestamp=draw(TIMES),
        properties=draw(st.dictionaries(TEXT, JSON, max_size=4)),
        context=draw(st.none() | st.dictionaries(TEXT, JSON, max_size=3)),
        received_at=draw(TIMES),
    )
    if draw(st.booleans()):
        record.clock_skew_ms = draw(st.integers(-(10**10), 10**10))
        record.corrected_timestamp = draw(st.none() | TIMES)
    return record


@pytest.fixture
async def conn(servers: Servers) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(to_asyncpg_dsn(servers.database_url))
    await prepare_connection(connection)
    try:
        yield connection
    finally:
        await connection.close()


async def staged(conn: asyncpg.Connection, entries: Sequence[dict[bytes, bytes]]) -> Any:
    """The staging rows of each reading, sorted (rolled back: nothing is stored)."""
    readings = []
    for by_text in (True, False):
        transaction = conn.transaction()
        await transaction.start()
        try:
            if by_text:
                await stage_rows(conn, copy_text(entries))
            else:
                await stage_rows(conn, [r for entry in entries for r in decode_entry(entry)])
            rows = await conn.fetch(f"SELECT * FROM {STAGING_TABLE}")
            readings.append(sorted((tuple(row) for row in rows), key=repr))
        finally:
            await transaction.rollback()
    return readings


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(batches=st.lists(st.lists(records(), max_size=4), min_size=1, max_size=3))
async def test_both_readings_stage_the_same_rows(
    conn: asyncpg.Connection, batches: list[list[EventRecord]]
) -> None:
    entries = [encode_entry(batch) for batch in batches]
    by_text, exactly = await staged(conn, entries)
    assert by_text == exactly
    assert len(by_text) == sum(len(batch) for batch in batches)


def with_item(entry: dict[bytes, bytes], index: int, **overrides: Any) -> dict[bytes, bytes]:
    items = orjson.loads(entry[b"events"])
    items[index].update(overrides)
    return {**entry, b"events": orjson.dumps(items)}


async def test_an_entry_in_another_form_is_stored_the_exact_way(
    api: ApiFactory, db: asyncpg.Connection, redis: Redis
) -> None:
    """A hand-written entry whose time has an offset: the batch is read the exact
    way, and the event lands at the instant it names."""
    events = [make_record() for _ in range(3)]
    local = "2026-12-02T11:30:15.250000-05:00"
    entry = with_item(encode_entry(events), 1, timestamp=local)
    async with api() as app:
        await redis.xadd(app.settings.stream_key, entry)  # type: ignore[arg-type]
        await wait_for_events(db, 3)
    stored = await db.fetchval(
        'SELECT "timestamp" FROM events WHERE event_id = $1', events[1].event_id
    )
    assert stored == datetime(2026, 12, 2, 16, 30, 15, 250000, tzinfo=UTC)
    assert await db.fetchval("SELECT count(*) FROM ingest_batches WHERE status = 'failed'") == 0


async def test_text_postgresql_refuses_is_read_again_and_only_the_bad_entry_is_set_aside(
    api: ApiFactory, db: asyncpg.Connection, redis: Redis
) -> None:
    """An id PostgreSQL cannot read fails the COPY text; read exactly, its entry
    is undecodable and goes to dead_letters, and the entries beside it land."""
    good_before, good_after = [make_record() for _ in range(4)], [make_record() for _ in range(5)]
    bad = with_item(encode_entry([make_record(), make_record()]), 0, event_id="not-a-uuid")
    async with api() as app:
        stream = app.settings.stream_key
        await redis.xadd(stream, encode_entry(good_before))  # type: ignore[arg-type]
        await redis.xadd(stream, bad)  # type: ignore[arg-type]
        await redis.xadd(stream, encode_entry(good_after))  # type: ignore[arg-type]
        await wait_for_events(db, 9)

        async def dead_lettered() -> bool:
            return await db.fetchval("SELECT count(*) FROM dead_letters") == 1

        await wait_for(dead_lettered, what="the bad entry in dead_letters")
    assert await count_events(db) == 9
    row = await db.fetchrow("SELECT kind, error, payload FROM dead_letters")
    assert row is not None
    assert row["kind"] == "entry"
    assert "undecodable" in row["error"]
    assert "not-a-uuid" in row["payload"]
    # The refused text is in the transaction log as a failed attempt.
    failed = await db.fetch("SELECT error FROM ingest_batches WHERE status = 'failed'")
    assert [r["error"] for r in failed if "uuid" in r["error"].lower()]
    assert await redis.xlen(stream) == 0


async def test_a_day_that_does_not_exist_is_refused_by_postgresql_and_set_aside(
    api: ApiFactory, db: asyncpg.Connection, redis: Redis
) -> None:
    """February 30 has the shape of a time; PostgreSQL refuses it, and so does
    the exact reading: the entry is dead-lettered, nothing of it stored."""
    good = [make_record() for _ in range(3)]
    bad = with_item(encode_entry([make_record()]), 0, timestamp="2026-02-30T12:00:00+00:00")
    async with api() as app:
        await redis.xadd(app.settings.stream_key, bad)  # type: ignore[arg-type]
        await redis.xadd(app.settings.stream_key, encode_entry(good))  # type: ignore[arg-type]
        await wait_for_events(db, 3)

        async def dead_lettered() -> bool:
            return await db.fetchval("SELECT count(*) FROM dead_letters") == 1

        await wait_for(dead_lettered, what="the impossible day in dead_letters")
    assert await count_events(db) == 3
