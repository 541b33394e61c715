"""Raw-data retention: per-product policies, enforced by dropping whole daily
partitions or deleting expired rows in batches; one runner at a time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis

from labs_analytics.flusher.flusher import Flusher
from labs_analytics.settings import Settings, to_asyncpg_dsn
from labs_analytics.storage.database import create_copy_pool
from labs_analytics.storage.partitions import partition_ddl, partition_name
from labs_analytics.storage.retention import RETENTION_LOCK_KEY
from tests.helpers import (
    Servers,
    downgrade_database,
    run_cli_async,
    scratch_database,
    upgrade_database,
    wait_for,
)

TODAY = datetime.now(UTC).date()
POLICIES = {"alpha": 3, "beta": 7}  # "gamma" has none: it keeps everything
ALL_EXPIRED_DAY = TODAY - timedelta(days=10)  # alpha and beta only, both expired
BETA_ONLY_DAY = TODAY - timedelta(days=9)  # beta only, expired
SHARED_DAY = TODAY - timedelta(days=5)  # alpha expired, beta and gamma kept
RECENT_DAY = TODAY - timedelta(days=2)  # nothing expired
NO_PARTITION_DAY = TODAY - timedelta(days=20)  # in events_default
ANCIENT_DAY = date(1999, 1, 1)  # in events_default
DAILY = (ALL_EXPIRED_DAY, BETA_ONLY_DAY, SHARED_DAY, RECENT_DAY)
ROWS = {
    ALL_EXPIRED_DAY: {"alpha": 3, "beta": 2},
    BETA_ONLY_DAY: {"beta": 2},
    SHARED_DAY: {"alpha": 4, "beta": 2, "gamma": 2},
    RECENT_DAY: {"alpha": 2, "beta": 1, "gamma": 1},
    NO_PARTITION_DAY: {"alpha": 2, "gamma": 1},
    ANCIENT_DAY: {"alpha": 1, "beta": 1, "gamma": 1},
}

Counts = dict[tuple[str, date], int]


@pytest.fixture
async def conn(db: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """The `db` connection (events emptied), with no retention set before or after."""
    await db.execute("DELETE FROM product_retention")
    try:
        yield db
    finally:
        await db.execute("DELETE FROM product_retention")


@pytest.fixture
async def stored(conn: asyncpg.Connection) -> Counts:
    """The rows of ROWS, in daily partitions and the default one; their counts."""
    for day in DAILY:
        await conn.execute(partition_ddl(day))
    for day, per_product in ROWS.items():
        at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        await conn.executemany(
            'INSERT INTO events ("timestamp", event_id, product, name, received_at) '
            "VALUES ($1, $2, $3, 'e', $1)",
            [
                (at + timedelta(seconds=i), uuid.uuid4(), product)
                for product, n in per_product.items()
                for i in range(n)
            ],
        )
    for product, days in POLICIES.items():
        await conn.execute(
            "INSERT INTO product_retention (product, keep_days) VALUES ($1, $2)", product, days
        )
    return await counts(conn)


async def counts(conn: asyncpg.Connection) -> Counts:
    rows = await conn.fetch(
        """SELECT product, ("timestamp" AT TIME ZONE 'UTC')::date AS day, count(*) AS n
           FROM events GROUP BY 1, 2"""
    )
    return {(r["product"], r["day"]): r["n"] for r in rows}


async def exists(conn: asyncpg.Connection, table: str) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM pg_class WHERE relname = $1", table))


def expected_after_run(before: Counts) -> Counts:
    now = datetime.now(UTC)
    return {
        (product, day): n
        for (product, day), n in before.items()
        if product not in POLICIES
        or datetime(day.year, day.month, day.day, tzinfo=UTC)
        >= now - timedelta(days=POLICIES[product])
    }


async def test_run_removes_exactly_the_expired_rows_of_products_with_retention(
    settings: Settings, conn: asyncpg.Connection, stored: Counts
) -> None:
    # The identity rule's memory: one id past IDENTITY_WINDOW_DAYS (7), one within.
    remembered = await conn.fetch(
        "INSERT INTO event_ids (product, event_id, timestamp, received_at) "
        "SELECT 'alpha', gen_random_uuid(), now(), now() - make_interval(days => d) "
        "FROM unnest(ARRAY[30, 1]) AS d RETURNING event_id, received_at"
    )
    result = await run_cli_async(settings, "retention", "run")
    assert result.returncode == 0, result.stderr
    assert "event ids first received over 7 days ago forgotten: 1" in result.stdout
    recent = max(remembered, key=lambda row: row["received_at"])["event_id"]
    assert await conn.fetchval("SELECT array_agg(event_id) FROM event_ids") == [recent]

    assert await counts(conn) == expected_after_run(stored)
    # gamma (no retention) lost nothing, even in events_default and the shared day
    assert {k: n for k, n in (await counts(conn)).items() if k[0] == "gamma"} == {
        k: n for k, n in stored.items() if k[0] == "gamma"
    }
    # whole partitions of expired rows only: dropped
    assert not await exists(conn, partition_name(ALL_EXPIRED_DAY))
    assert not await exists(conn, partition_name(BETA_ONLY_DAY))
    # shared with products that keep it: stays, alpha's rows deleted from it
    assert await exists(conn, partition_name(SHARED_DAY))
    assert await exists(conn, partition_name(RECENT_DAY))
    assert (await counts(conn)).get(("alpha", SHARED_DAY)) is None
    assert f"dropped partition {partition_name(ALL_EXPIRED_DAY)}" in result.stdout
    assert f"deleted 4 rows from {partition_name(SHARED_DAY)} (alpha: 4)" in result.stdout
    assert "deleted 4 rows from events_default (alpha: 3, beta: 1)" in result.stdout
    assert "removed 15 rows of 2 product(s)" in result.stdout

    again = await run_cli_async(settings, "retention")  # the bare form runs too
    assert again.returncode == 0, again.stderr
    assert "removed 0 rows" in again.stdout
    assert await counts(conn) == expected_after_run(stored)


async def test_small_batches_delete_everything_expired(
    settings: Settings, conn: asyncpg.Connection, stored: Counts
) -> None:
    result = await run_cli_async(settings, "retention", "run", RETENTION_DELETE_BATCH_ROWS="1")
    assert result.returncode == 0, result.stderr
    assert await counts(conn) == expected_after_run(stored)


async def test_dry_run_prints_the_plan_and_changes_nothing(
    settings: Settings, conn: asyncpg.Connection, stored: Counts
) -> None:
    result = await run_cli_async(settings, "retention", "run", "--dry-run")
    assert result.returncode == 0, result.stderr

    assert await counts(conn) == stored
    for day in DAILY:
        assert await exists(conn, partition_name(day))
    assert (
        f"would drop partition {partition_name(ALL_EXPIRED_DAY)} (5 rows; alpha: 3, beta: 2)"
        in result.stdout
    )
    assert f"would delete 4 rows from {partition_name(SHARED_DAY)} (alpha: 4)" in result.stdout
    assert "dry run: would remove 15 rows" in result.stdout
    assert "gamma" not in result.stdout

    bare = await run_cli_async(settings, "retention", "--dry-run")
    assert bare.returncode == 0, bare.stderr
    assert await counts(conn) == stored


async def test_a_second_runner_exits_at_once_while_one_holds_the_lock(
    settings: Settings, conn: asyncpg.Connection, stored: Counts, servers: Servers
) -> None:
    other = await asyncpg.connect(to_asyncpg_dsn(servers.database_url))
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK_KEY)
        busy = await run_cli_async(settings, "retention", "run")
        assert busy.returncode == 1
        assert "another retention run is in progress" in busy.stderr
        assert await counts(conn) == stored
    finally:
        await other.close()  # releases the lock
    result = await run_cli_async(settings, "retention", "run")
    assert result.returncode == 0, result.stderr
    assert await counts(conn) == expected_after_run(stored)


async def test_set_show_clear(settings: Settings, conn: asyncpg.Connection) -> None:
    assert (await run_cli_async(settings, "retention", "set", "clubs", "30")).returncode == 0
    assert (await run_cli_async(settings, "retention", "set", "clubs", "45")).returncode == 0
    shown = await run_cli_async(settings, "retention", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    [policy] = [orjson.loads(line) for line in shown.stdout.splitlines()]
    assert (policy["product"], policy["keep_days"]) == ("clubs", 45)

    assert (await run_cli_async(settings, "retention", "set", "clubs", "0")).returncode == 2
    assert (await run_cli_async(settings, "retention", "set", "Bad Name", "3")).returncode == 2

    assert (await run_cli_async(settings, "retention", "clear", "clubs")).returncode == 0
    again = await run_cli_async(settings, "retention", "clear", "clubs")
    assert again.returncode == 1
    assert "no retention" in again.stderr
    assert await conn.fetchval("SELECT count(*) FROM product_retention") == 0


async def test_the_flusher_runs_retention_beside_flushing(
    settings: Settings, conn: asyncpg.Connection, stored: Counts, redis: Redis
) -> None:
    fast = settings.model_copy(update={"retention_interval_seconds": 0.2})
    flusher_redis = Redis.from_url(settings.redis_url)
    pool = create_copy_pool(settings.database_url)
    await pool
    stop = asyncio.Event()
    task = asyncio.create_task(Flusher(redis=flusher_redis, pool=pool, settings=fast).run(stop))
    try:
        expected = expected_after_run(stored)

        async def done() -> bool:
            return await counts(conn) == expected

        await wait_for(done, timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        await pool.close()
        await flusher_redis.aclose()


@pytest.fixture
def database_before(servers: Servers) -> Iterator[str]:
    with scratch_database(servers, "0003_product_scoped_identity") as url:
        yield url


async def test_migration_upgrades_and_downgrades(database_before: str) -> None:
    await asyncio.to_thread(upgrade_database, database_before, "0004_product_retention")
    scratch = await asyncpg.connect(to_asyncpg_dsn(database_before))
    try:
        await scratch.execute("INSERT INTO product_retention (product, keep_days) VALUES ('a', 1)")
        with pytest.raises(asyncpg.CheckViolationError):
            await scratch.execute(
                "INSERT INTO product_retention (product, keep_days) VALUES ('b', 0)"
            )
        await asyncio.to_thread(downgrade_database, database_before, "0003_product_scoped_identity")
        assert await scratch.fetchval("SELECT to_regclass('product_retention')") is None
        await asyncio.to_thread(upgrade_database, database_before, "head")
        assert await scratch.fetchval("SELECT count(*) FROM product_retention") == 0
    finally:
        await scratch.close()
