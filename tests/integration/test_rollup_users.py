"""Distinct users per period (`rollup_users`): DAU, WAU and MAU equal the raw answer, at any moment.

Each request (``users`` by day, week or month, over ranges aligned to the
periods and not) is asked planned and forced raw, and the two must be the
same JSON: before any refresh, half refreshed, after everything is rolled up,
and while a late event's week and month are marked. Tampering with a row
shows which periods are taken from the table and which are counted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from labs_analytics.events import EventRecord
from labs_analytics.read.request import QueryRequest
from labs_analytics.settings import to_asyncpg_dsn
from labs_analytics.storage.rollups import refresh_rollups, rollup_status
from tests.helpers import Servers, downgrade_database, scratch_database, upgrade_database
from tests.integration import test_rollups
from tests.integration.test_rollups import Rig, same_json

rig = test_rollups.rig  # the same fixture: writer, read service and rollup worker

PRODUCTS = ("clubs", "mobile")
FIRST_DAY = dt.datetime(2026, 9, 28, tzinfo=dt.UTC)  # a Monday
DAYS = 72  # to 2026-12-08
WEEKS = ["2026-10-05", "2026-11-29"]  # Monday to Sunday: 8 whole weeks
MONTHS = ["2026-10-01", "2026-11-30"]  # two whole months
UNALIGNED = ["2026-10-03", "2026-12-02"]  # partial first and last weeks and months
WIDER = ["2026-09-01", "2026-12-31"]  # empty periods on either side


def users(granularity: str, date_range: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "metrics": ["users"],
        "dimensions": [f"time:{granularity}"],
        "date_range": date_range,
        "limit": 1000,
        **extra,
    }


CASES: dict[str, dict[str, Any]] = {
    f"{granularity} over {name}": users(granularity, date_range)
    for granularity in ("day", "week", "month")
    for name, date_range in (
        ("whole weeks", WEEKS),
        ("whole months", MONTHS),
        ("unaligned", UNALIGNED),
        ("wider", WIDER),
    )
} | {
    "weeks by users, paged": users(
        "week", UNALIGNED, order_by=[["users", "desc"]], limit=3, offset=2
    ),
}


def event(product: str, user: str | None, at: dt.datetime) -> EventRecord:
    return EventRecord(
        event_id=uuid.uuid4(),
        product=product,
        name="page.view",
        user=user,
        timestamp=at,
        properties={},
        context=None,
        received_at=dt.datetime.now(dt.UTC),
    )


def records(rng: random.Random, count: int) -> list[EventRecord]:
    """Events of 40 users over the days, a few very active and a long tail (and some
    without a user): a week's or month's users are far fewer than the sum of its days'."""
    pool = [f"u{n}" for n in range(40)]
    return [
        event(
            rng.choice(PRODUCTS),
            None if rng.random() < 0.1 else pool[int(len(pool) * rng.random() ** 2.5)],
            FIRST_DAY + dt.timedelta(seconds=rng.randrange(DAYS * 86400)),
        )
        for _ in range(count)
    ]


async def fill(rig: Rig, seed: int = 17) -> None:
    rng = random.Random(seed)
    for _ in range(4):
        await rig.write(records(rng, 400))


async def assert_exact(rig: Rig) -> None:
    for product in (*PRODUCTS, "empty"):
        for case, body in CASES.items():
            planned, raw = await rig.both(body, product)
            assert planned["meta"]["source"] == "rollup", (product, case)
            assert same_json(planned, raw), (product, case, planned, raw)


async def answer(rig: Rig, body: dict[str, Any], use_rollups: bool = True) -> dict[str, int]:
    """The clubs' users per bucket label."""
    request = QueryRequest.model_validate(body)
    got = await rig.read.answer("clubs", request, use_rollups=use_rollups)
    return {row["dimensions"][0]: row["metrics"][0] for row in got["results"]}


async def period_row(db: asyncpg.Connection, period: str, start: str) -> int | None:
    users_: int | None = await db.fetchval(
        "SELECT users FROM rollup_users WHERE product = 'clubs' AND period = $1 AND start = $2",
        period,
        dt.date.fromisoformat(start),
    )
    return users_


async def test_users_per_period_equal_raw_answers_in_every_state(
    rig: Rig, db: asyncpg.Connection
) -> None:
    await fill(rig)

    # 1. Nothing rolled up: no period row, every period counted from raw days.
    assert (await rollup_status(db)).users_rows == 0
    await assert_exact(rig)

    # 2. Half rolled up: some weeks and months still marked somewhere.
    assert await refresh_rollups(rig.pool, max_buckets=300) == 300
    assert (await rollup_status(db)).marks > 0
    await assert_exact(rig)

    # 3. Everything rolled up: a row per day, week and month with users.
    await rig.refresh_all()
    status = await rollup_status(db)
    assert status.marks == 0
    periods = dict(await db.fetch("SELECT period, count(*) FROM rollup_users GROUP BY 1"))
    assert periods == {"day": 2 * DAYS, "week": 2 * 11, "month": 2 * 4}
    await assert_exact(rig)

    # 4. A late event of a new user in a day already rolled up: its day, week
    # and month are marked, so counted from raw rows (their rows are one short).
    week = await answer(rig, users("week", WEEKS), use_rollups=False)
    late = event("clubs", "late-new", dt.datetime(2026, 10, 14, 12, tzinfo=dt.UTC))
    assert await rig.write([late]) == 1
    after = await answer(rig, users("week", WEEKS), use_rollups=False)
    assert after["2026-10-12"] == week["2026-10-12"] + 1
    assert await period_row(db, "week", "2026-10-12") == week["2026-10-12"]  # stale, marked
    await assert_exact(rig)

    # 5. Rolled up again: the day, week and month are recomputed and taken whole.
    await rig.refresh_all()
    assert await period_row(db, "week", "2026-10-12") == after["2026-10-12"]
    months = await answer(rig, users("month", MONTHS), use_rollups=False)
    assert await period_row(db, "month", "2026-10-01") == months["2026-10-01"]
    await assert_exact(rig)


async def test_only_whole_unmarked_periods_are_taken_from_the_table(
    rig: Rig, db: asyncpg.Connection
) -> None:
    await fill(rig)
    await rig.refresh_all()
    # Tampered rows: an answer that shows the offset was read from the table.
    for period, start in (("week", "2026-10-12"), ("week", "2026-09-28"), ("month", "2026-10-01")):
        await db.execute(
            "UPDATE rollup_users SET users = users + 1000 "
            "WHERE product = 'clubs' AND period = $1 AND start = $2",
            period,
            dt.date.fromisoformat(start),
        )
    for granularity, date_range, taken, counted in (
        ("week", WEEKS, "2026-10-12", "2026-10-19"),
        ("week", UNALIGNED, "2026-10-12", "2026-09-28"),  # starts on a Saturday: partial
        ("month", MONTHS, "2026-10-01", "2026-11-01"),
        ("month", UNALIGNED, None, "2026-10-01"),  # starts on the 3rd: partial
    ):
        planned = await answer(rig, users(granularity, date_range))
        raw = await answer(rig, users(granularity, date_range), use_rollups=False)
        if taken is not None:
            assert planned[taken] == raw[taken] + 1000
        assert planned[counted] == raw[counted]

    # A mark anywhere in the period: counted, the row set aside until refreshed.
    # (A user the week has: the row's count would not change, the tampered one shows.)
    await rig.write([event("clubs", "u1", dt.datetime(2026, 10, 18, 23, 59, tzinfo=dt.UTC))])
    planned = await answer(rig, users("week", WEEKS))
    raw = await answer(rig, users("week", WEEKS), use_rollups=False)
    assert planned["2026-10-12"] == raw["2026-10-12"]
    months = await answer(rig, users("month", MONTHS))
    assert months["2026-10-01"] == (await answer(rig, users("month", MONTHS), False))["2026-10-01"]


async def test_a_period_is_recomputed_when_its_last_mark_is_rolled_up(
    rig: Rig, db: asyncpg.Connection
) -> None:
    await fill(rig)
    await rig.refresh_all()
    week_before = await period_row(db, "week", "2026-11-02")
    for day, user in ((3, "new-a"), (6, "new-b")):  # Tuesday and Friday of one week
        await rig.write([event("clubs", user, dt.datetime(2026, 11, day, 10, tzinfo=dt.UTC))])
        await asyncio.sleep(0.01)  # marked in this order: refreshed oldest first

    # One of the two days: its own row is redone, the week waits for the other.
    assert await refresh_rollups(rig.pool, max_buckets=1) == 1
    assert await period_row(db, "week", "2026-11-02") == week_before
    await assert_exact(rig)

    assert await refresh_rollups(rig.pool, max_buckets=1) == 1
    raw = await answer(rig, users("week", WEEKS), use_rollups=False)
    assert await period_row(db, "week", "2026-11-02") == raw["2026-11-02"]
    assert week_before is not None
    assert raw["2026-11-02"] == week_before + 2
    await assert_exact(rig)


# --- the migration ---------------------------------------------------------------


@pytest.fixture
def database_at_rollups(servers: Servers) -> Iterator[str]:
    with scratch_database(servers, "0005_rollups") as url:
        yield url


async def test_the_migration_counts_the_periods_already_rolled_up_and_only_those(
    database_at_rollups: str,
) -> None:
    conn = await asyncpg.connect(to_asyncpg_dsn(database_at_rollups))
    try:
        # Users on three days of October and one of November, and a mark on 2026-11-04.
        rows = [
            ("clubs", dt.date(2026, 10, 5), "a"),
            ("clubs", dt.date(2026, 10, 6), "a"),
            ("clubs", dt.date(2026, 10, 6), "b"),
            ("clubs", dt.date(2026, 10, 30), "c"),
            ("clubs", dt.date(2026, 11, 3), "a"),
        ]
        await conn.executemany(
            "INSERT INTO rollup_user_daily (product, day, user_id, events) VALUES ($1, $2, $3, 1)",
            rows,
        )
        await conn.execute(
            "INSERT INTO rollup_dirty (product, hour) VALUES ('clubs', '2026-11-04 10:00Z')"
        )
        await asyncio.to_thread(upgrade_database, database_at_rollups, "0006_rollup_users")
        got = {
            (row["period"], row["start"].isoformat()): row["users"]
            for row in await conn.fetch("SELECT period, start, users FROM rollup_users")
        }
    finally:
        await conn.close()
    assert got == {
        ("day", "2026-10-05"): 1,
        ("day", "2026-10-06"): 2,
        ("day", "2026-10-30"): 1,
        ("day", "2026-11-03"): 1,
        ("week", "2026-10-05"): 2,
        ("week", "2026-10-26"): 1,
        ("month", "2026-10-01"): 3,
        # The week of 2026-11-02 and November are marked: no row, counted at read.
    }


@pytest.fixture
def database_at_clock_skew(servers: Servers) -> Iterator[str]:
    with scratch_database(servers, "0009_clock_skew") as url:
        yield url


async def test_the_day_level_migration_rolls_up_every_stored_day_by_name_and_value(
    database_at_clock_skew: str,
) -> None:
    """Events stored before revision 0010 get their rows by (day, name, user) and
    (key, day, value, user), NULL users and values included; a downgrade drops them."""
    url = database_at_clock_skew
    stored = [  # (product, timestamp, name, user, route)
        ("clubs", "2026-11-03 23:59:59Z", "a", "u1", "/x"),
        ("clubs", "2026-11-03 08:00:00Z", "a", "u1", "/x"),
        ("clubs", "2026-11-03 09:00:00Z", "a", None, None),
        ("clubs", "2026-11-04 00:00:00Z", "b", "u2", "/x"),
        ("mobile", "2026-11-04 10:00:00Z", "a", "u1", "/y"),
    ]
    conn = await asyncpg.connect(to_asyncpg_dsn(url))
    try:
        await conn.execute("INSERT INTO rollup_property_keys (key) VALUES ('route')")
        await conn.executemany(
            'INSERT INTO events ("timestamp", event_id, product, name, user_id, properties, '
            "received_at) VALUES ($1::text::timestamptz, $2, $3, $4, $5, "
            "jsonb_strip_nulls(jsonb_build_object('route', $6::text)), now())",
            [
                (at, uuid.uuid4(), product, name, user, route)
                for product, at, name, user, route in stored
            ],
        )
        await asyncio.to_thread(upgrade_database, url, "0010_user_daily_names_props")
        names = await conn.fetch(
            "SELECT product, day::text, name, user_id, events FROM rollup_user_daily_names "
            "ORDER BY 1, 2, 3, 4 NULLS LAST"
        )
        props = await conn.fetch(
            "SELECT product, key, day::text, value, user_id, events FROM rollup_user_daily_props "
            "ORDER BY 1, 2, 3, 4 NULLS LAST, 5 NULLS LAST"
        )
        assert [tuple(row) for row in names] == [
            ("clubs", "2026-11-03", "a", "u1", 2),
            ("clubs", "2026-11-03", "a", None, 1),
            ("clubs", "2026-11-04", "b", "u2", 1),
            ("mobile", "2026-11-04", "a", "u1", 1),
        ]
        assert [tuple(row) for row in props] == [
            ("clubs", "route", "2026-11-03", "/x", "u1", 2),
            ("clubs", "route", "2026-11-03", None, None, 1),
            ("clubs", "route", "2026-11-04", "/x", "u2", 1),
            ("mobile", "route", "2026-11-04", "/y", "u1", 1),
        ]
        await asyncio.to_thread(downgrade_database, url, "0009_clock_skew")
        assert await conn.fetchval("SELECT to_regclass('rollup_user_daily_names')") is None
        assert await conn.fetchval("SELECT to_regclass('rollup_user_daily_props')") is None
    finally:
        await conn.close()


@pytest.fixture
def database_at_day_level_rollups(servers: Servers) -> Iterator[str]:
    with scratch_database(servers, "0010_user_daily_names_props") as url:
        yield url


async def test_the_user_hours_migration_rolls_up_every_stored_day_by_user_and_hour(
    database_at_day_level_rollups: str,
) -> None:
    """Events stored before revision 0011 get a row per (product, UTC day, user)
    with their events per UTC hour, events without a user none; a downgrade
    drops the table and the two indexes by user."""
    url = database_at_day_level_rollups
    stored = [  # (product, timestamp, user)
        ("clubs", "2026-11-03 23:59:59Z", "u1"),
        ("clubs", "2026-11-03 23:00:00Z", "u1"),
        ("clubs", "2026-11-03 00:00:00Z", "u1"),
        ("clubs", "2026-11-03 09:00:00Z", None),
        ("clubs", "2026-11-04 00:00:00Z", "u2"),
        ("mobile", "2026-11-03 10:30:00Z", "u1"),
    ]
    conn = await asyncpg.connect(to_asyncpg_dsn(url))
    try:
        await conn.executemany(
            'INSERT INTO events ("timestamp", event_id, product, name, user_id, properties, '
            "received_at) VALUES ($1::text::timestamptz, $2, $3, 'a', $4, '{}', now())",
            [(at, uuid.uuid4(), product, user) for product, at, user in stored],
        )
        await asyncio.to_thread(upgrade_database, url, "0011_user_hours")
        rows = await conn.fetch(
            "SELECT product, day::text, user_id, events_by_hour FROM rollup_user_hours "
            "ORDER BY 1, 2, 3"
        )

        def hours(**counts: int) -> list[int]:
            return [counts.get(f"h{hour}", 0) for hour in range(24)]

        assert [tuple(row) for row in rows] == [
            ("clubs", "2026-11-03", "u1", hours(h0=1, h23=2)),
            ("clubs", "2026-11-04", "u2", hours(h0=1)),
            ("mobile", "2026-11-03", "u1", hours(h10=1)),
        ]
        indexes = await conn.fetchval(
            "SELECT count(*) FROM pg_indexes WHERE indexname LIKE '%\\_user\\_day'"
        )
        assert indexes == 3
        await asyncio.to_thread(downgrade_database, url, "0010_user_daily_names_props")
        assert await conn.fetchval("SELECT to_regclass('rollup_user_hours')") is None
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_indexes WHERE indexname LIKE '%\\_user\\_day'"
            )
            == 0
        )
    finally:
        await conn.close()


@pytest.fixture
def database_at_user_hours(servers: Servers) -> Iterator[str]:
    with scratch_database(servers, "0011_user_hours") as url:
        yield url


async def test_the_daily_props_migration_sums_the_hours_of_every_unmarked_day(
    database_at_user_hours: str,
) -> None:
    """Revision 0012 sums each UTC day's hourly value rows, for the days none of
    whose hours is marked (a marked day is read hour by hour and written by the
    refresh that takes its last mark); a downgrade drops the table."""
    url = database_at_user_hours
    hourly = [  # (product, key, hour, name, value, events)
        ("clubs", "route", "2026-11-03 00:00Z", "a", "/x", 2),
        ("clubs", "route", "2026-11-03 23:00Z", "a", "/x", 3),
        ("clubs", "route", "2026-11-03 23:00Z", "a", None, 1),
        ("clubs", "route", "2026-11-03 05:00Z", "b", "/x", 4),
        ("clubs", "status_code", "2026-11-03 05:00Z", "b", "200", 4),
        ("clubs", "route", "2026-11-04 00:00Z", "a", "/x", 5),  # 11-04: marked
        ("mobile", "route", "2026-11-04 00:00Z", "a", "/x", 6),
    ]
    conn = await asyncpg.connect(to_asyncpg_dsn(url))
    try:
        await conn.executemany(
            "INSERT INTO rollup_hourly_props (product, key, hour, name, value, events) "
            "VALUES ($1, $2, $3::text::timestamptz, $4, $5, $6)",
            hourly,
        )
        await conn.execute(
            "INSERT INTO rollup_dirty (product, hour) VALUES ('clubs', '2026-11-04 13:00Z')"
        )
        await asyncio.to_thread(upgrade_database, url, "0012_daily_props")
        rows = await conn.fetch(
            "SELECT product, key, day::text, name, value, events FROM rollup_daily_props "
            "ORDER BY 1, 2, 3, 4, 5 NULLS FIRST"
        )
        assert [tuple(row) for row in rows] == [
            ("clubs", "route", "2026-11-03", "a", None, 1),
            ("clubs", "route", "2026-11-03", "a", "/x", 5),
            ("clubs", "route", "2026-11-03", "b", "/x", 4),
            ("clubs", "status_code", "2026-11-03", "b", "200", 4),
            ("mobile", "route", "2026-11-04", "a", "/x", 6),
        ]
        await asyncio.to_thread(downgrade_database, url, "0011_user_hours")
        assert await conn.fetchval("SELECT to_regclass('rollup_daily_props')") is None
    finally:
        await conn.close()
