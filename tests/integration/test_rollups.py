"""Rollups that stay exact: every answer from them equals the raw answer, at any moment.

Events go in through the real bulk writer (which marks the hours it writes
into): duplicates inside a batch, a batch redelivered whole, late events days
old, several products, names and users. Each eligible request is asked twice,
planned (rollups where allowed) and forced raw, and the two must be the same
JSON: before any refresh (every hour marked), after refreshing everything,
and after late events land in hours already rolled up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from labs_analytics.auth.keys import Scope
from labs_analytics.events import EventRecord
from labs_analytics.flusher.rollup_loop import RollupRefresher
from labs_analytics.read.request import QueryRequest
from labs_analytics.read.service import ReadService, create_read_pool
from labs_analytics.settings import Settings, to_asyncpg_dsn
from labs_analytics.storage.bulk_writer import (
    CLAIM_IDS_SQL,
    INSERT_ALL_SQL,
    MARK_DIRTY_SQL,
    STAGING_COLUMNS,
    STAGING_TABLE,
    BulkWriter,
)
from labs_analytics.storage.database import create_copy_pool
from labs_analytics.storage.retention import run_retention, set_policy
from labs_analytics.storage.rollups import refresh_rollups, rollup_status
from tests.helpers import ApiFactory, create_key, run_cli_async, wait_for
from tests.integration.test_query import generate_rows, store

PRODUCTS = ("clubs", "mobile", "empty")
NAMES = ("page.view", "club.view", "club.apply", "search")
USERS = ("u1", "u2", "u3", "u4", "ü5", None)
START = dt.datetime(2026, 10, 26, tzinfo=dt.UTC)  # DST ends in New York on 11-01
RANGE = ["2026-10-26", "2026-11-08"]


def new_records(
    rng: random.Random,
    count: int,
    *,
    since: dt.datetime,
    seconds: int,
    product: str | None = None,
) -> list[EventRecord]:
    return [
        EventRecord(
            event_id=uuid.UUID(int=rng.getrandbits(128)),
            product=product or rng.choice(PRODUCTS[:2]),
            name=rng.choice(NAMES),
            user=rng.choice(USERS),
            timestamp=since + dt.timedelta(seconds=rng.randrange(seconds)),
            properties=_properties(rng),
            context=None,
            received_at=dt.datetime.now(dt.UTC),
        )
        for _ in range(count)
    ]


def _properties(rng: random.Random) -> dict[str, Any]:
    """A duration, and mostly a route: a string, now and then a number, a
    boolean, an object or JSON null; missing from some events."""
    properties: dict[str, Any] = {"duration_ms": rng.randint(1, 900)}
    if rng.random() < 0.85:
        properties["route"] = rng.choice(["/a", "/b", "/a", "/b", "/ü", 7, True, {"x": 1}, None])
    return properties


class Rig:
    """The bulk writer, the read service and the rollup worker on one database."""

    def __init__(
        self,
        writer: BulkWriter,
        read: ReadService,
        pool: asyncpg.Pool,
        property_keys: list[str],
    ) -> None:
        self.writer = writer
        self.read = read
        self.pool = pool
        self.property_keys = property_keys

    async def write(self, records: list[EventRecord]) -> int:
        outcome = await self.writer.write_batch(
            batch_id=uuid.uuid4(), consumer="test", stream_ids=["1-0"], attempt=1, rows=records
        )
        return outcome.inserted

    async def refresh_all(self) -> int:
        total = 0
        while done := await refresh_rollups(
            self.pool, max_buckets=50, property_keys=self.property_keys
        ):
            total += done
        return total

    async def both(self, body: dict[str, Any], product: str) -> tuple[Any, Any]:
        request = QueryRequest.model_validate(body)
        planned = await self.read.answer(product, request)
        raw = await self.read.answer(product, request, use_rollups=False)
        return planned, raw


@pytest.fixture
async def rig(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[Rig]:
    del db  # requested for the clean tables
    copy_pool = await create_copy_pool(settings.database_url, max_size=4)
    read_pool = await create_read_pool(settings)
    try:
        yield Rig(
            BulkWriter(copy_pool),
            ReadService(read_pool, settings),
            copy_pool,
            settings.rollup_properties,
        )
    finally:
        await read_pool.close()
        await copy_pool.close()


def same_json(planned: dict[str, Any], raw: dict[str, Any]) -> bool:
    """The same answer to the byte (3, not 3.0), source and timing aside."""
    return json.dumps([planned["results"], planned["meta"]["total_rows"]]) == json.dumps(
        [raw["results"], raw["meta"]["total_rows"]]
    )


ELIGIBLE: dict[str, dict[str, Any]] = {
    "total, all time": {"metrics": ["events"], "date_range": "all"},
    "daily in New York across the DST change": {
        "metrics": ["events"],
        "dimensions": ["time:day"],
        "timezone": "America/New_York",
        "date_range": RANGE,
    },
    "hourly in New York": {
        "metrics": ["events"],
        "dimensions": ["time:hour"],
        "timezone": "America/New_York",
        "date_range": ["2026-10-31", "2026-11-02"],
        "limit": 1000,
    },
    "weekly by name": {"metrics": ["events"], "dimensions": ["time:week", "name"]},
    "names over 7 days, filtered": {
        "metrics": ["events"],
        "dimensions": ["name"],
        "filters": [["is", "name", ["club.view", "search"]]],
        "date_range": "7d",
    },
    "monthly, all, contains": {
        "metrics": ["events"],
        "dimensions": ["time:month"],
        "filters": [["contains", "name", ["club"]]],
        "date_range": "all",
        "timezone": "America/New_York",
    },
    "text order and is_not": {
        "metrics": ["events"],
        "filters": [["gt", "name", ["club.view"]], ["is_not", "name", ["search"]]],
        "date_range": RANGE,
    },
    "instants on hours": {
        "metrics": ["events"],
        "dimensions": ["time:day"],
        "timezone": "America/New_York",
        "date_range": ["2026-10-27T05:00:00Z", "2026-11-03T17:00:00-05:00"],
    },
    "second page": {
        "metrics": ["events"],
        "dimensions": ["name", "time:day"],
        "date_range": RANGE,
        "limit": 7,
        "offset": 7,
    },
    "users by day": {
        "metrics": ["events", "users"],
        "dimensions": ["time:day"],
        "date_range": RANGE,
    },
    "users by week": {"metrics": ["users"], "dimensions": ["time:week"], "date_range": RANGE},
    "users by month, all": {
        "metrics": ["users", "events"],
        "dimensions": ["time:month"],
        "date_range": "all",
    },
    "top users, 7 days": {
        "metrics": ["events", "users"],
        "dimensions": ["user"],
        "date_range": "7d",
        "timezone": "Etc/UTC",
    },
    "users by day, paged": {
        "metrics": ["events"],
        "dimensions": ["user", "time:day"],
        "date_range": RANGE,
        "order_by": [["events", "desc"]],
        "limit": 5,
        "offset": 3,
    },
    "users total, 30 days": {"metrics": ["users"], "date_range": "30d"},
    "a rolled-up property, all time": {
        "metrics": ["events"],
        "dimensions": ["prop:route"],
        "order_by": [["events", "desc"]],
        "date_range": "all",
    },
    "a rolled-up property by day and name, filtered": {
        "metrics": ["events"],
        "dimensions": ["time:day", "prop:route", "name"],
        "filters": [["is_not", "name", ["search"]]],
        "timezone": "America/New_York",
        "date_range": RANGE,
        "limit": 1000,
    },
    "top events with users, 30 days": {
        "metrics": ["events", "users"],
        "dimensions": ["name"],
        "order_by": [["events", "desc"]],
        "limit": 3,
        "date_range": "30d",
    },
    "users by week and name, filtered": {
        "metrics": ["users", "events"],
        "dimensions": ["time:week", "name"],
        "filters": [["is_not", "name", ["search"]]],
        "date_range": RANGE,
        "limit": 1000,
    },
    "users of one name, all time": {
        "metrics": ["users"],
        "filters": [["is", "name", ["club.view"]]],
        "date_range": "all",
    },
    "top values with users, 30 days": {
        "metrics": ["events", "users"],
        "dimensions": ["prop:route"],
        "order_by": [["events", "desc"]],
        "limit": 3,
        "date_range": "30d",
    },
    "users by day and rolled-up property": {
        "metrics": ["users"],
        "dimensions": ["time:day", "prop:route"],
        "date_range": RANGE,
        "limit": 1000,
    },
    "a rolled-up property over whole UTC days and partial ends": {
        "metrics": ["events"],
        "dimensions": ["prop:route"],
        "filters": [["is", "name", ["club.view", "page.view"]]],
        "date_range": ["2026-10-27T05:00:00Z", "2026-11-03T17:00:00Z"],
    },
    "a rolled-up property by week and name in UTC": {
        "metrics": ["events"],
        "dimensions": ["time:week", "prop:route", "name"],
        "date_range": RANGE,
        "limit": 1000,
    },
    "a rolled-up property, top 3 over 7 days": {
        "metrics": ["events"],
        "dimensions": ["prop:route"],
        "order_by": [["events", "desc"]],
        "limit": 3,
        "date_range": "7d",
    },
}

INELIGIBLE: dict[str, dict[str, Any]] = {
    "a percentile": {"metrics": ["events", "p95:duration_ms"], "date_range": RANGE},
    "a property not rolled up": {"metrics": ["events"], "dimensions": ["prop:duration_ms"]},
    "two property dimensions": {
        "metrics": ["events"],
        "dimensions": ["prop:route", "prop:duration_ms"],
    },
    "a rolled-up property, users and a filter": {
        "metrics": ["users"],
        "dimensions": ["prop:route"],
        "filters": [["is", "name", ["search"]]],
    },
    "users by name in New York": {
        "metrics": ["users"],
        "dimensions": ["name"],
        "timezone": "America/New_York",
    },
    "users by name and hour": {"metrics": ["users"], "dimensions": ["name", "time:hour"]},
    "Kolkata": {"metrics": ["events"], "dimensions": ["time:day"], "timezone": "Asia/Kolkata"},
    "a property filter": {"metrics": ["events"], "filters": [["is", "prop:route", ["/a"]]]},
    "users in New York": {
        "metrics": ["users"],
        "dimensions": ["time:day"],
        "timezone": "America/New_York",
    },
    "half past": {"metrics": ["events"], "date_range": ["2026-10-27T05:30:00Z", "2026-11-01"]},
}


async def assert_exact(rig: Rig, cases: dict[str, dict[str, Any]], source: str) -> None:
    for product in PRODUCTS:
        for case, body in cases.items():
            planned, raw = await rig.both(body, product)
            assert planned["meta"]["source"] == source, (product, case)
            assert raw["meta"]["source"] == "raw"
            assert same_json(planned, raw), (product, case, planned, raw)


async def fill(rig: Rig, rng: random.Random) -> None:
    """Two weeks of events, one batch with duplicates inside, one sent twice,
    and events of the last days (for `7d` and `30d`)."""
    now = dt.datetime.now(dt.UTC)
    for _ in range(6):
        batch = new_records(rng, 150, since=START, seconds=14 * 86400)
        batch += batch[:10]  # the same events twice in one batch
        await rig.write(batch)
    recent = new_records(rng, 200, since=now - dt.timedelta(days=6), seconds=6 * 86400)
    assert await rig.write(recent) == 200
    assert await rig.write(recent) == 0  # the stream redelivered it


async def test_rollup_answers_equal_raw_answers_in_every_state(
    rig: Rig, db: asyncpg.Connection
) -> None:
    rng = random.Random(11)
    await fill(rig, rng)

    # 1. Nothing rolled up yet: every hour is marked, read raw through the plan.
    assert (await rollup_status(db)).hourly_rows == 0
    await assert_exact(rig, ELIGIBLE, "rollup")
    await assert_exact(rig, INELIGIBLE, "raw")

    # 2. Everything rolled up: no mark left, the answers come from the rollups.
    assert await rig.refresh_all() > 0
    status = await rollup_status(db)
    assert status.marks == 0
    assert status.hourly_rows > 0
    assert status.user_daily_rows > 0
    assert status.props_rows > 0
    assert status.user_daily_names_rows > 0
    assert status.user_daily_props_rows > 0
    assert status.daily_props_rows > 0
    assert status.property_keys == sorted(rig.property_keys)
    await assert_exact(rig, ELIGIBLE, "rollup")

    # 3. Late events (days old) and a redelivery land in hours already rolled up.
    late = new_records(rng, 40, since=START + dt.timedelta(days=3), seconds=2 * 86400)
    late += new_records(rng, 20, since=dt.datetime.now(dt.UTC) - dt.timedelta(days=3), seconds=3600)
    assert await rig.write(late) == 60
    assert await rig.write(late[:30]) == 0
    status = await rollup_status(db)
    assert 0 < status.marks < 60
    await assert_exact(rig, ELIGIBLE, "rollup")
    await assert_exact(rig, INELIGIBLE, "raw")

    # 4. And rolled up again.
    await rig.refresh_all()
    assert (await rollup_status(db)).marks == 0
    await assert_exact(rig, ELIGIBLE, "rollup")


async def test_a_flush_marks_the_hours_it_wrote_into_and_a_duplicate_batch_none(
    rig: Rig, db: asyncpg.Connection
) -> None:
    rng = random.Random(3)
    batch = new_records(rng, 30, since=START, seconds=3 * 3600)
    await rig.write(batch)
    marks = await db.fetch("SELECT product, hour FROM rollup_dirty")
    assert {(m["product"], m["hour"]) for m in marks} == {
        (r.product, r.timestamp.replace(minute=0, second=0, microsecond=0)) for r in batch
    }
    await rig.refresh_all()
    await rig.write(batch)  # all duplicates: nothing changed, nothing to roll up
    assert await db.fetchval("SELECT count(*) FROM rollup_dirty") == 0


async def test_products_never_see_each_others_rollups(rig: Rig, db: asyncpg.Connection) -> None:
    rng = random.Random(5)
    clubs = [r for r in new_records(rng, 100, since=START, seconds=86400) if r.product == "clubs"]
    await rig.write(clubs)
    await rig.refresh_all()
    assert await db.fetchval("SELECT count(*) FROM rollup_hourly WHERE product = 'clubs'") > 0
    for body in ({"metrics": ["events"], "date_range": RANGE}, ELIGIBLE["users by day"]):
        mobile, raw = await rig.both(body, "mobile")
        assert mobile["meta"]["source"] == "rollup"
        assert same_json(mobile, raw)
        assert all(set(row["metrics"]) <= {0} for row in mobile["results"])
        clubs_answer, clubs_raw = await rig.both(body, "clubs")
        assert same_json(clubs_answer, clubs_raw)
        assert clubs_answer["results"][0]["metrics"][0] > 0 or len(clubs_answer["results"]) > 1


async def test_a_refresh_skips_an_hour_a_flush_has_not_committed_yet(
    rig: Rig, db: asyncpg.Connection
) -> None:
    rng = random.Random(7)
    await rig.write(new_records(rng, 100, since=START, seconds=2 * 86400))
    await rig.refresh_all()
    body = {"metrics": ["events"], "dimensions": ["time:hour"], "date_range": RANGE}
    body_users = ELIGIBLE["users by day"]
    hour = START + dt.timedelta(hours=5)
    # Committed marks: one the flush below will hold, one for the refresh to take.
    await rig.write(new_records(rng, 3, since=hour, seconds=3600, product="clubs"))
    other = new_records(rng, 5, since=START + dt.timedelta(days=1, hours=2), seconds=3600)
    await rig.write(other)
    pending = new_records(rng, 10, since=hour, seconds=3600, product="clubs")

    # A flush in the middle of its transaction: rows inserted, marks upserted.
    async with rig.pool.acquire() as flush:
        transaction = flush.transaction()
        await transaction.start()
        try:
            await flush.copy_records_to_table(
                STAGING_TABLE,
                records=[
                    (
                        *(r.timestamp, r.event_id, r.product, r.name, r.user, "{}", None),
                        *(r.received_at, None, None),
                    )
                    for r in pending
                ],
                columns=STAGING_COLUMNS,
            )
            await flush.execute(CLAIM_IDS_SQL)
            await flush.execute(INSERT_ALL_SQL, uuid.uuid4())
            await flush.execute(MARK_DIRTY_SQL)

            # The refresh takes the committed marks and skips the locked ones.
            done = await refresh_rollups(rig.pool, max_buckets=100)
            assert done == len(
                {(r.product, r.timestamp.replace(minute=0, second=0)) for r in other}
            )
            left = await db.fetch("SELECT product, hour FROM rollup_dirty")
            assert [(m["product"], m["hour"]) for m in left] == [("clubs", hour)]
            for product in PRODUCTS:
                for request in (body, body_users):
                    planned, raw = await rig.both(request, product)
                    assert same_json(planned, raw)
        finally:
            await transaction.commit()

    # Committed: its hour is still marked, so the answers hold its rows.
    for product in PRODUCTS:
        for request in (body, body_users):
            planned, raw = await rig.both(request, product)
            assert planned["meta"]["source"] == "rollup"
            assert same_json(planned, raw)
    assert await rig.refresh_all() == 1
    for product in PRODUCTS:
        planned, raw = await rig.both(body, product)
        assert same_json(planned, raw)


async def test_a_flush_into_an_hour_being_rolled_up_waits_and_marks_it_again(
    rig: Rig, db: asyncpg.Connection
) -> None:
    rng = random.Random(9)
    first = new_records(rng, 20, since=START, seconds=3600)
    await rig.write(first)
    # A refresh holding the hour's marks: locked, deleted, not yet committed.
    async with rig.pool.acquire() as worker, worker.transaction():
        taken = await worker.fetch("SELECT product, hour FROM rollup_dirty FOR UPDATE")
        assert taken
        await worker.execute("DELETE FROM rollup_dirty")
        flush = asyncio.create_task(rig.write(new_records(rng, 20, since=START, seconds=3600)))

        async def flush_waits() -> bool:
            waiting = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%rollup_dirty%'"
            )
            return bool(waiting)

        await wait_for(flush_waits, what="the flush to wait for the marks' lock")
        assert not flush.done()
    assert await flush == 20
    marks = {(m["product"], m["hour"]) for m in await db.fetch("SELECT * FROM rollup_dirty")}
    assert marks == {(m["product"], m["hour"]) for m in taken}


async def test_the_pipeline_answers_from_rollups_refreshed_by_the_flusher(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    async with api(run_flusher=True, rollup_interval_seconds=0.1, rollup_settle_seconds=0) as app:
        ingest = await create_key(app.settings, "clubs")
        read = await create_key(app.settings, "clubs", scopes=[Scope.READ])
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        events = [
            {
                "event_id": str(uuid.uuid4()),
                "name": "club.view",
                "user": f"u{i % 3}",
                "timestamp": (now - dt.timedelta(days=i % 4)).isoformat(),
            }
            for i in range(12)
        ]
        for _ in range(2):
            assert (await app.post({"events": events}, ingest)).status_code == 202

        async def rolled_up() -> bool:
            status = await rollup_status(db)
            return status.marks == 0 and status.hourly_rows > 0

        await wait_for(rolled_up, what="the flusher to roll up what it flushed")
        answer = await app.client.post(
            "/v1/query",
            json={"metrics": ["events", "users"], "date_range": "7d"},
            headers={"Authorization": f"Bearer {read}"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["meta"]["source"] == "rollup"
        assert answer.json()["results"] == [{"dimensions": [], "metrics": [12, 3]}]


async def test_the_cli_shows_what_waits_and_rolls_it_all_up(
    rig: Rig, settings: Settings, db: asyncpg.Connection
) -> None:
    await rig.write(new_records(random.Random(1), 50, since=START, seconds=3 * 3600))
    marks = await db.fetchval("SELECT count(*) FROM rollup_dirty")
    status = await run_cli_async(settings, "rollups", "status")
    assert status.returncode == 0, status.stderr
    assert f"hours marked (read raw until rolled up): {marks}" in status.stdout
    assert "rollup_hourly rows: 0" in status.stdout
    refreshed = await run_cli_async(settings, "rollups", "refresh", ROLLUP_MAX_BUCKETS="2")
    assert refreshed.returncode == 0, refreshed.stderr
    assert f"rolled up {marks} hour(s)" in refreshed.stdout
    status = await run_cli_async(settings, "rollups", "status")
    assert "hours marked (read raw until rolled up): 0" in status.stdout
    assert "oldest mark age: -" in status.stdout
    assert "rollup_hourly rows: 0" not in status.stdout


# --- generated queries over a half rolled-up store ------------------------------


@pytest.fixture
async def half_rolled_up(rig: Rig, db: asyncpg.Connection) -> Rig:
    await store(db, generate_rows())
    await refresh_rollups(rig.pool, max_buckets=150)
    assert (await rollup_status(db)).marks > 0
    return rig


TIME = ["time:hour", "time:day", "time:week", "time:month"]


@st.composite
def rollup_queries(draw: st.DrawFn) -> dict[str, Any]:
    """Requests near the edge of eligibility: some go to a rollup, some raw."""
    first = draw(st.integers(0, 13))
    last = draw(st.integers(first, 13))
    days = [(START + dt.timedelta(days=d)).date().isoformat() for d in (first, last)]
    # Whole hours, most often not midnight: partial first and last UTC days.
    hours = [
        (START + dt.timedelta(days=d, hours=draw(st.integers(0, 23)))).isoformat()
        for d in (first, last + 1)
    ]
    metrics = draw(st.lists(st.sampled_from(["events", "users"]), min_size=1, unique=True))
    dimensions = draw(
        st.lists(
            st.sampled_from([*TIME, "name", "user", "prop:route"]), max_size=2, unique=True
        ).filter(lambda ds: sum(d in TIME for d in ds) <= 1)
    )
    names = st.lists(st.sampled_from(["page.view", "club.view", "search", "x"]), min_size=1)
    filters = draw(
        st.lists(
            st.one_of(
                st.tuples(st.sampled_from(["is", "is_not", "contains"]), st.just("name"), names),
                st.tuples(st.sampled_from(["gt", "lte"]), st.just("name"), st.just(["club"])),
            ),
            max_size=2,
        )
    )
    return {
        "metrics": metrics,
        "dimensions": dimensions,
        "filters": [list(f) for f in filters],
        "date_range": draw(st.sampled_from([days, hours, "all"])),
        "timezone": draw(st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata"])),
        "limit": draw(st.sampled_from([3, 100, 1000])),
        "offset": draw(st.sampled_from([0, 0, 2])),
    }


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=rollup_queries(), product=st.sampled_from(["clubs", "mobile", "courses"]))
async def test_any_query_near_the_rollups_equals_the_raw_answer(
    half_rolled_up: Rig, body: dict[str, Any], product: str
) -> None:
    note(f"{product}: {json.dumps(body)}")
    planned, raw = await half_rolled_up.both(body, product)
    assert same_json(planned, raw), (planned, raw)


async def test_an_hour_still_being_written_waits_and_a_day_is_redone_with_its_last_mark(
    rig: Rig, db: asyncpg.Connection
) -> None:
    rng = random.Random(11)
    day = dt.datetime(2026, 11, 3, tzinfo=dt.UTC)
    for hour in (2, 9):  # two hours of one day
        await rig.write(
            new_records(
                rng, 40, since=day + dt.timedelta(hours=hour), seconds=3600, product="clubs"
            )
        )
    users_by_day = {
        "metrics": ["events", "users"],
        "dimensions": ["time:day"],
        "date_range": ["2026-11-03", "2026-11-04"],
    }

    # Not settled yet: nothing is taken, the hours read raw.
    assert await refresh_rollups(rig.pool, max_buckets=10, settle_seconds=3600) == 0
    assert await db.fetchval("SELECT count(*) FROM rollup_dirty") == 2

    # One hour of the two: its counts are rolled up, the day's users wait for the other.
    assert await refresh_rollups(rig.pool, max_buckets=1) == 1
    assert await db.fetchval("SELECT count(*) FROM rollup_user_daily") == 0
    planned, raw = await rig.both(users_by_day, "clubs")
    assert planned["meta"]["source"] == "rollup"
    assert same_json(planned, raw)

    assert await refresh_rollups(rig.pool, max_buckets=1) == 1  # the day's last mark
    assert await db.fetchval("SELECT count(*) FROM rollup_user_daily") > 0
    planned, raw = await rig.both(users_by_day, "clubs")
    assert same_json(planned, raw)


async def test_an_hour_past_retention_keeps_its_rollup_when_a_late_event_lands_in_it(
    rig: Rig, db: asyncpg.Connection
) -> None:
    """Recomputing it from the raw rows retention left would erase the rest."""
    old_hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(
        days=40
    )
    rng = random.Random(5)
    await rig.write(new_records(rng, 30, since=old_hour, seconds=3600, product="clubs"))
    await rig.refresh_all()
    counted = await db.fetchval(
        "SELECT sum(events) FROM rollup_hourly WHERE product = 'clubs' AND hour = $1", old_hour
    )
    assert counted == 30

    await set_policy(db, "clubs", 30)
    await run_retention(db, dry_run=False)
    assert await db.fetchval("SELECT count(*) FROM events WHERE product = 'clubs'") == 0
    assert await rig.write(new_records(rng, 1, since=old_hour, seconds=3600, product="clubs")) == 1
    assert await db.fetchval("SELECT count(*) FROM rollup_dirty") == 1

    assert await rig.refresh_all() == 1  # the mark is taken and removed...
    assert await db.fetchval("SELECT count(*) FROM rollup_dirty") == 0
    # ...and the hour, final, keeps what it counted (not the 1 raw row left).
    assert (
        await db.fetchval(
            "SELECT sum(events) FROM rollup_hourly WHERE product = 'clubs' AND hour = $1",
            old_hour,
        )
        == counted
    )
    assert await db.fetchval("SELECT count(*) FROM rollup_user_daily WHERE product = 'clubs'") > 0


PROPERTY_CASES = {
    case: body
    for case, body in ELIGIBLE.items()
    if any("prop:" in d for d in body.get("dimensions", []))
}


async def test_a_property_key_declared_late_or_dropped_reads_exactly_throughout(
    rig: Rig, db: asyncpg.Connection
) -> None:
    """ROLLUP_PROPERTIES changed on a running service: the key added is rolled
    up from every stored event, hour by hour, and the key dropped is read raw."""
    rng = random.Random(23)
    await fill(rig, rng)
    rig.property_keys = []
    await rig.refresh_all()  # everything rolled up, but no property key
    status = await rollup_status(db)
    assert (status.marks, status.props_rows, status.property_keys) == (0, 0, [])
    await assert_exact(rig, PROPERTY_CASES, "rollup")  # read raw: the key is not listed

    # Declared: every hour rolled up so far is marked; refreshed a few at a time.
    rig.property_keys = ["route"]
    assert await refresh_rollups(rig.pool, max_buckets=20, property_keys=["route"]) == 20
    status = await rollup_status(db)
    assert status.property_keys == ["route"]
    assert status.marks > 0
    assert status.props_rows > 0
    await assert_exact(rig, PROPERTY_CASES, "rollup")
    await rig.refresh_all()
    assert (await rollup_status(db)).marks == 0
    raw_rows = await db.fetchval("SELECT count(*) FROM events")
    assert 0 < await db.fetchval("SELECT count(*) FROM rollup_hourly_props") < raw_rows
    await assert_exact(rig, PROPERTY_CASES, "rollup")
    # The answers above were read from the rollup rows: change one, and they
    # change (hour by hour in New York, by whole UTC days over all time).
    for table, case in (
        ("rollup_hourly_props", "a rolled-up property by day and name, filtered"),
        ("rollup_daily_props", "a rolled-up property, all time"),
    ):
        await db.execute(f"UPDATE {table} SET events = events + 1000 WHERE value = '/a'")
        planned, raw = await rig.both(PROPERTY_CASES[case], "clubs")
        assert not same_json(planned, raw), table
        await db.execute(f"UPDATE {table} SET events = events - 1000 WHERE value = '/a'")
    # Likewise the users per value, from the day-level rows: one more user there.
    body = PROPERTY_CASES["top values with users, 30 days"]
    await db.execute(
        "INSERT INTO rollup_user_daily_props SELECT product, key, day, value, 'ghost', 0 "
        "FROM rollup_user_daily_props WHERE product = 'clubs' AND value = '/a' "
        "ORDER BY day DESC LIMIT 1"
    )
    planned, raw = await rig.both(body, "clubs")
    assert planned["meta"]["source"] == "rollup"
    assert not same_json(planned, raw)
    await db.execute("DELETE FROM rollup_user_daily_props WHERE user_id = 'ghost'")

    # Dropped: its rows go, its breakdowns are read raw, and still the same.
    rig.property_keys = []
    await rig.refresh_all()
    status = await rollup_status(db)
    assert (
        status.props_rows,
        status.daily_props_rows,
        status.user_daily_props_rows,
        status.property_keys,
    ) == (0, 0, 0, [])
    await assert_exact(rig, PROPERTY_CASES, "rollup")


def quick_refresher(
    settings: Settings,
    rig: Rig,
    consumer: str,
    is_behind: Callable[[], bool] = lambda: False,
    **update: Any,
) -> RollupRefresher:
    """A refresher that looks every 50 ms and takes marks at once."""
    quick = {"rollup_interval_seconds": 0.05, "rollup_settle_seconds": 0, **update}
    return RollupRefresher(settings.model_copy(update=quick), rig.pool, consumer, is_behind)


@contextlib.asynccontextmanager
async def running(refresher: RollupRefresher) -> AsyncIterator[None]:
    """The refresher's loop for the block; stopped and awaited at its end."""
    stop = asyncio.Event()
    task = asyncio.create_task(refresher.run(stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def wait_until_rolled_up(db: asyncpg.Connection, what: str) -> None:
    """Until no mark is left: the refresher rolled everything up."""
    await wait_for(lambda: db.fetchval("SELECT count(*) = 0 FROM rollup_dirty"), what=what)


class Deferrals:
    """The refresher's "rollups.deferred" log lines (it looked, saw the flusher
    behind, and started nothing): what a test waits on instead of a fixed sleep."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="labs_analytics.flusher.rollup_loop")
        self.caplog = caplog

    def count(self) -> int:
        return sum(r.getMessage() == "rollups.deferred" for r in self.caplog.records)

    async def more(self, than: int, n: int = 3) -> None:
        """Until the refresher has deferred ``n`` more times than ``than``."""

        async def deferred() -> bool:
            return self.count() >= than + n

        await wait_for(deferred, what=f"{n} more deferrals")


async def test_a_refresh_gives_way_to_a_flush_that_waits_on_it(
    rig: Rig, settings: Settings, db: asyncpg.Connection
) -> None:
    """A refresh holds the marks of its hours until it commits: a flush of late
    events into one of them would wait for all of it. Here the refresh is held for
    real: a session locks the last rollup table it writes, so the refresh, its
    marks taken, waits.
    A late event's flush into one of those hours then waits on the refresh, which
    is cancelled within a check or two; the flush commits while the table is
    still locked, the hour stays marked, and the next refresh counts the event."""
    rng = random.Random(7)
    hour = START + dt.timedelta(hours=5)
    assert await rig.write(new_records(rng, 40, since=hour, seconds=3600, product="clubs"))
    refresher = quick_refresher(settings, rig, "give-way-test")
    blocker = await asyncpg.connect(to_asyncpg_dsn(settings.database_url))
    stop = asyncio.Event()
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("LOCK TABLE rollup_user_hours IN ACCESS EXCLUSIVE MODE")
        task = asyncio.create_task(refresher.run(stop))

        async def refresh_waits() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity "
                    "WHERE application_name = $1 AND wait_event_type = 'Lock')",
                    refresher.application_name,
                )
            )

        await wait_for(refresh_waits, what="the refresh to take the marks and wait")
        late = new_records(rng, 1, since=hour, seconds=3600, product="clubs")
        started = time.monotonic()
        assert await asyncio.wait_for(rig.write(late), timeout=10) == 1
        waited = time.monotonic() - started
        assert waited < 5, f"the flush waited {waited:.1f} s"
        assert await db.fetchval(
            "SELECT count(*) FROM rollup_dirty WHERE product = 'clubs' AND hour = $1", hour
        )
        await blocking.rollback()
        stop.set()
        await task
    finally:
        stop.set()
        await blocker.close()
    assert await rig.refresh_all()
    assert (
        await db.fetchval(
            "SELECT sum(events) FROM rollup_hourly WHERE product = 'clubs' AND hour = $1", hour
        )
        == await db.fetchval(
            "SELECT count(*) FROM events WHERE product = 'clubs' "
            'AND "timestamp" >= $1 AND "timestamp" < $1 + interval \'1 hour\'',
            hour,
        )
        == 41
    )


async def test_breakdowns_over_whole_days_read_the_daily_rows(
    rig: Rig, db: asyncpg.Connection
) -> None:
    """The whole clean UTC days come from rollup_daily_props, the partial ends and
    the marked days hour by hour: a changed daily row moves the first answer only
    where its day is read by day, and a mark on that day restores the raw count."""
    await fill(rig, random.Random(5))
    await rig.refresh_all()
    day = START.date() + dt.timedelta(days=3)
    whole = {
        "metrics": ["events"],
        "dimensions": ["prop:route"],
        "date_range": [(START + dt.timedelta(hours=7)).isoformat(), "2026-11-05"],
    }
    planned, raw = await rig.both(whole, "clubs")
    assert same_json(planned, raw)
    await db.execute(
        "UPDATE rollup_daily_props SET events = events + 1000 WHERE ctid = ("
        "SELECT ctid FROM rollup_daily_props "
        "WHERE product = 'clubs' AND key = 'route' AND day = $1 AND value = '/a' LIMIT 1)",
        day,
    )
    planned, raw = await rig.both(whole, "clubs")
    moved = {row["dimensions"][0]: row["metrics"][0] for row in planned["results"]}
    truth = {row["dimensions"][0]: row["metrics"][0] for row in raw["results"]}
    assert moved["/a"] == truth["/a"] + 1000
    assert {k: v for k, v in moved.items() if k != "/a"} == {
        k: v for k, v in truth.items() if k != "/a"
    }
    # The same day as a partial first day (the range starts an hour into it) or
    # under a New York time zone: read hour by hour, the tampered row unread.
    an_hour_into_it = (START + dt.timedelta(days=3, hours=1)).isoformat()
    for other in (
        {**whole, "date_range": [an_hour_into_it, "2026-11-05"]},
        {**whole, "dimensions": ["time:day", "prop:route"], "timezone": "America/New_York"},
    ):
        planned, raw = await rig.both(other, "clubs")
        assert same_json(planned, raw), other
    # A mark in the day: the day reads hour by hour (one hour raw) until refreshed.
    await db.execute(
        "INSERT INTO rollup_dirty (product, hour) VALUES ('clubs', $1)",
        START + dt.timedelta(days=3, hours=12),
    )
    planned, raw = await rig.both(whole, "clubs")
    assert same_json(planned, raw)
    await rig.refresh_all()  # rewrites the day from its hours: the tampering is gone
    planned, raw = await rig.both(whole, "clubs")
    assert same_json(planned, raw)


async def test_no_refresh_runs_while_the_flushers_are_behind(
    rig: Rig, settings: Settings, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """Behind (ingest at capacity), the flusher's process starts no refresh, and
    cancels one running (held here on a locked rollup table), its marks kept;
    caught up, the refresh rolls everything up."""
    rng = random.Random(9)
    assert await rig.write(new_records(rng, 60, since=START, seconds=86400, product="clubs"))
    behind = True
    refresher = quick_refresher(settings, rig, "behind-test", lambda: behind)
    deferrals = Deferrals(caplog)
    marks = await db.fetchval("SELECT count(*) FROM rollup_dirty")
    blocker = await asyncpg.connect(to_asyncpg_dsn(settings.database_url))
    try:
        async with running(refresher):
            await deferrals.more(than=0)  # it looked three times and started nothing
            assert await db.fetchval("SELECT count(*) FROM rollup_dirty") == marks
            assert (await rollup_status(db)).hourly_rows == 0

            blocking = blocker.transaction()
            await blocking.start()
            await blocker.execute("LOCK TABLE rollup_user_hours IN ACCESS EXCLUSIVE MODE")
            behind = False

            async def refresh_holds(state: str) -> bool:
                return bool(
                    await db.fetchval(
                        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity "
                        "WHERE application_name = $1 AND state = $2)",
                        refresher.application_name,
                        state,
                    )
                )

            await wait_for(lambda: refresh_holds("active"), what="a refresh to start and wait")
            behind = True
            await wait_for(lambda: refresh_holds("idle"), what="the refresh to be cancelled")
            assert await db.fetchval("SELECT count(*) FROM rollup_dirty") == marks
            await blocking.rollback()
            await deferrals.more(than=deferrals.count())  # the table free, still behind
            assert await db.fetchval("SELECT count(*) FROM rollup_dirty") == marks

            behind = False
            await wait_until_rolled_up(db, "the refresh, caught up")
    finally:
        await blocker.close()
    assert await db.fetchval("SELECT sum(events) FROM rollup_hourly") == 60


async def test_marks_overdue_are_rolled_up_even_while_the_flushers_are_behind(
    rig: Rig, settings: Settings, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """Rollups wait for the slack, but not past ROLLUP_MAX_DEFER_SECONDS: marks that
    old are rolled up while the flusher stays behind."""
    rng = random.Random(13)
    assert await rig.write(new_records(rng, 30, since=START, seconds=86400, product="clubs"))
    await db.execute("UPDATE rollup_dirty SET marked_at = now()")
    refresher = quick_refresher(
        settings, rig, "overdue-test", lambda: True, rollup_max_defer_seconds=5
    )
    deferrals = Deferrals(caplog)
    async with running(refresher):
        await deferrals.more(than=0)  # behind, the marks young: nothing rolled up
        assert (await rollup_status(db)).hourly_rows == 0
        await db.execute("UPDATE rollup_dirty SET marked_at = now() - interval '10 seconds'")
        await wait_until_rolled_up(db, "the overdue marks rolled up while behind")
    assert await db.fetchval("SELECT sum(events) FROM rollup_hourly") == 30
