"""The migration to product-scoped identity, on a database built at the revision before it.

The session's database is at head already, so each test builds its own on the
same server with the real migrations, fills it, and moves it up (or down).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime

import asyncpg
import pytest
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from labs_analytics.settings import to_asyncpg_dsn
from labs_analytics.storage import tables
from labs_analytics.storage.partitions import partition_ddl, partition_name
from tests.helpers import Servers, downgrade_database, scratch_database, upgrade_database

PREVIOUS = "0002_rate_limits_dead_letters"
THIS = "0003_product_scoped_identity"
PARTITIONED_DAY = date(2026, 11, 27)
IN_PARTITION = datetime(2026, 11, 27, 12, tzinfo=UTC)
IN_DEFAULT = datetime(1999, 1, 1, tzinfo=UTC)  # no partition: events_default

# (rate stored before the CHECK existed, rate after the upgrade)
STORED_RATES = [
    ("Infinity", None),
    ("-Infinity", None),
    ("NaN", None),
    ("1e-300", None),
    ("0", None),
    ("-5", None),
    ("2000000", None),
    ("0.001", 0.001),
    ("100", 100.0),
    ("1000000", 1_000_000.0),
    (None, None),
]


@pytest.fixture
def old_database(servers: Servers) -> Iterator[str]:
    with scratch_database(servers, PREVIOUS) as url:
        yield url


@pytest.fixture
async def conn(old_database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(to_asyncpg_dsn(old_database))
    try:
        yield connection
    finally:
        await connection.close()


async def insert_event(
    conn: asyncpg.Connection, *, product: str, event_id: uuid.UUID, at: datetime, name: str = "a"
) -> None:
    await conn.execute(
        'INSERT INTO events ("timestamp", event_id, product, name, user_id, properties, '
        "received_at) VALUES ($1, $2, $3, $4, 'u_1', $5::jsonb, $1)",
        at,
        event_id,
        product,
        name,
        f'{{"product": "{product}"}}',
    )


async def all_events(conn: asyncpg.Connection) -> list[tuple[object, ...]]:
    rows = await conn.fetch(
        'SELECT tableoid::regclass::text AS part, "timestamp", event_id, product, name, user_id, '
        "properties::text, context::text, received_at, stored_at, batch_id FROM events "
        'ORDER BY "timestamp", event_id, product'
    )
    return [tuple(row) for row in rows]


async def primary_keys(conn: asyncpg.Connection) -> dict[str, tuple[str, list[str], str | None]]:
    """Table → (constraint name, key columns in order, parent constraint) for
    ``events`` and each of its partitions."""
    rows = await conn.fetch(
        """
        SELECT c.conrelid::regclass::text AS table_name, c.conname,
               array_agg(a.attname::text ORDER BY k.ord) AS columns,
               parent.conname AS parent
        FROM pg_constraint c
        CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
        LEFT JOIN pg_constraint parent ON parent.oid = c.conparentid
        WHERE c.contype = 'p'
          AND (c.conrelid = 'events'::regclass
               OR c.conrelid IN (SELECT inhrelid FROM pg_inherits
                                 WHERE inhparent = 'events'::regclass))
        GROUP BY c.conrelid, c.conname, parent.conname
        """
    )
    return {row["table_name"]: (row["conname"], row["columns"], row["parent"]) for row in rows}


async def test_upgrade_keeps_every_row_and_scopes_the_key_by_product_in_every_partition(
    old_database: str, conn: asyncpg.Connection
) -> None:
    await conn.execute(partition_ddl(PARTITIONED_DAY))
    for at in (IN_PARTITION, IN_DEFAULT):
        for product in ("clubs", "penncourses"):
            for _ in range(3):
                await insert_event(conn, product=product, event_id=uuid.uuid4(), at=at)
    before = await all_events(conn)
    assert {row[0] for row in before} == {partition_name(PARTITIONED_DAY), "events_default"}

    await asyncio.to_thread(upgrade_database, old_database, THIS)

    assert await all_events(conn) == before
    keys = await primary_keys(conn)
    assert keys.pop("events") == ("pk_events", ["timestamp", "product", "event_id"], None)
    assert set(keys) == {partition_name(PARTITIONED_DAY), "events_default"}
    for table, (_name, columns, parent) in keys.items():
        assert columns == ["timestamp", "product", "event_id"], table
        assert parent == "pk_events", table  # attached to the parent's key, not a stray index

    # A partition made after the upgrade inherits the new key too.
    await conn.execute(partition_ddl(date(2026, 11, 28)))
    assert (await primary_keys(conn))[partition_name(date(2026, 11, 28))][1:] == (
        ["timestamp", "product", "event_id"],
        "pk_events",
    )

    # What the key now allows, and what it still refuses, in both kinds of partition.
    for at in (IN_PARTITION, IN_DEFAULT):
        shared = uuid.uuid4()
        await insert_event(conn, product="clubs", event_id=shared, at=at)
        await insert_event(conn, product="penncourses", event_id=shared, at=at)
        with pytest.raises(asyncpg.UniqueViolationError):
            await insert_event(conn, product="clubs", event_id=shared, at=at)


async def test_upgrade_sets_unusable_key_rates_to_the_default_and_checks_them_from_then_on(
    old_database: str, conn: asyncpg.Connection
) -> None:
    for i, (stored, _expected) in enumerate(STORED_RATES):
        await conn.execute(
            "INSERT INTO api_keys (key_id, product, scopes, key_hash, rate_limit_per_second) "
            "VALUES ($1, 'clubs', '{ingest}', 'hash', $2::text::double precision)",
            f"key{i:09d}",
            stored,
        )

    await asyncio.to_thread(upgrade_database, old_database, THIS)

    rows = await conn.fetch("SELECT key_id, rate_limit_per_second FROM api_keys ORDER BY key_id")
    assert [row["rate_limit_per_second"] for row in rows] == [e for _s, e in STORED_RATES]
    with pytest.raises(asyncpg.CheckViolationError, match="ck_api_keys_rate_limit_per_second"):
        await conn.execute("UPDATE api_keys SET rate_limit_per_second = 'Infinity'")


async def test_downgrade_refuses_while_two_products_share_an_id_and_timestamp(
    old_database: str, conn: asyncpg.Connection
) -> None:
    await asyncio.to_thread(upgrade_database, old_database, THIS)
    shared = uuid.uuid4()
    await insert_event(conn, product="clubs", event_id=shared, at=IN_PARTITION)
    await insert_event(conn, product="penncourses", event_id=shared, at=IN_PARTITION)
    before = await all_events(conn)

    with pytest.raises(Exception, match="cannot downgrade: 1 \\(timestamp, event_id\\) pairs"):
        await asyncio.to_thread(downgrade_database, old_database, PREVIOUS)

    # Nothing happened: the rows, the key and the revision are as they were.
    assert await all_events(conn) == before
    assert (await primary_keys(conn))["events"][1] == ["timestamp", "product", "event_id"]
    assert await conn.fetchval("SELECT version_num FROM alembic_version") == THIS

    # Once the operator removed one of them, the downgrade runs, and so does the way back.
    await conn.execute("DELETE FROM events WHERE product = 'penncourses'")
    await asyncio.to_thread(downgrade_database, old_database, PREVIOUS)
    assert (await primary_keys(conn))["events"][1] == ["timestamp", "event_id"]
    await asyncio.to_thread(upgrade_database, old_database, "head")
    assert (await primary_keys(conn))["events"][1] == ["timestamp", "product", "event_id"]


async def test_the_core_tables_declare_what_the_migrations_build(db: asyncpg.Connection) -> None:
    # The session's database is at head; tables.py is the reference for queries.
    assert (await primary_keys(db))["events"][1] == [
        column.name for column in tables.events.primary_key.columns
    ]
    declared = str(CreateTable(tables.api_keys).compile(dialect=postgresql.dialect()))
    checks = await db.fetch(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'api_keys'::regclass AND contype = 'c'"
    )
    assert checks, "api_keys has no CHECK constraint"
    for check in checks:
        assert f"CONSTRAINT {check['conname']} CHECK" in declared
