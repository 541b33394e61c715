"""One user's summary from the rollups equals the summary from every raw row, in every state.

The data is ``test_user_summary``'s (DST hours in New York, streaks across a
month, ties, a user id full of quotes and slashes), stored as the flusher
stores it (every hour written into marked). Each summary is asked twice,
planned (``source`` says which statement answered) and forced raw, and the
two must be equal: before any refresh (every day marked, so every row read
raw through the rolled statement), after refreshing everything, with late
events in days already rolled up, under a retention policy whose cutoff
falls inside the range, and with a top key no longer rolled up. The raw
statement itself is checked against a brute-force reference in
``test_user_summary``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from labs_analytics.auth.keys import ApiKey, Scope
from labs_analytics.read.service import ReadService, create_read_pool
from labs_analytics.read.summary import SummaryParams, user_summary
from labs_analytics.settings import Settings
from labs_analytics.storage.database import create_copy_pool
from labs_analytics.storage.retention import set_policy
from labs_analytics.storage.rollups import refresh_rollups, rollup_status
from tests.integration.test_query import store
from tests.integration.test_user_summary import USERS, _row, generate_rows

ROLLED_KEYS = ["club", "color"]
NOW = dt.datetime(2027, 2, 1, tzinfo=dt.UTC)
ADMIN = ApiKey(key_id="test", product="clubs", scopes=frozenset({Scope.ADMIN}), key_hash="")

# (zone, from, to, top fields, the statement expected to answer)
CASES: list[tuple[str, str | None, str | None, list[str], str]] = [
    ("UTC", None, None, ["prop:club", "prop:color"], "rollup"),  # the default: 2027
    ("UTC", "2026-01-01", None, ["prop:club", "prop:color"], "rollup"),
    ("America/New_York", "2026-01-01", "2026-12-31", ["prop:club"], "rollup"),
    ("America/New_York", "2026-10-31", "2026-11-02", [], "rollup"),  # the repeated hour
    ("America/New_York", "2026-03-07", "2026-03-09", ["prop:color"], "rollup"),  # the skipped one
    ("Europe/Paris", "2026-01-25", "2026-02-05", ["prop:club"], "rollup"),  # partial UTC days
    ("Pacific/Kiritimati", "2026-06-01", "2026-06-30", ["prop:color"], "rollup"),  # UTC+14
    ("UTC", "2026-03-03", "2026-03-03", [], "rollup"),  # one day
    ("Asia/Kolkata", "2026-01-01", "2026-12-31", ["prop:club"], "raw"),  # UTC+05:30
    ("UTC", "2026-01-01", "2026-12-31", ["context:app.version"], "raw"),  # not rolled up
    ("UTC", "2026-01-01", "2026-12-31", ["prop:club.id"], "raw"),  # a path not rolled up
]


class Reads:
    def __init__(self, reads: ReadService, pool: asyncpg.Pool) -> None:
        self.reads = reads
        self.pool = pool

    async def both(
        self, user: str, case: tuple[str, str | None, str | None, list[str], str]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        zone, first, last, top, _ = case
        values: dict[str, Any] = {"timezone": zone, "top": top}
        if first is not None:
            values["from"] = first
        if last is not None:
            values["to"] = last
        params = SummaryParams.model_validate(values)
        planned = await user_summary(self.reads, ADMIN, user, params, NOW)
        raw = await user_summary(self.reads, ADMIN, user, params, NOW, use_rollups=False)
        return planned, raw

    async def refresh_all(self, keys: list[str] = ROLLED_KEYS) -> int:
        total = 0
        while done := await refresh_rollups(self.pool, max_buckets=500, property_keys=keys):
            total += done
        return total


@pytest.fixture
async def reads(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[Reads]:
    await store(db, generate_rows())
    settings = settings.model_copy(
        update={"rollup_properties": ROLLED_KEYS, "read_rate_limit_per_second": 100_000}
    )
    read_pool = await create_read_pool(settings)
    copy_pool = await create_copy_pool(settings.database_url, max_size=2)
    try:
        yield Reads(ReadService(read_pool, settings), copy_pool)
    finally:
        await copy_pool.close()
        await read_pool.close()


def comparable(answer: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in answer.items() if key not in ("source", "took_ms")}


async def assert_all_equal(reads: Reads, *, expect_rollup: bool = True) -> int:
    """Every case for every user: the same summary both ways; how many had events."""
    with_events = 0
    for case in CASES:
        for user in USERS:
            planned, raw = await reads.both(user, case)
            expected_source = case[4] if expect_rollup else "raw"
            assert (planned["source"], raw["source"]) == (expected_source, "raw"), (case, user)
            assert comparable(planned) == comparable(raw), (case, user, planned, raw)
            with_events += raw["total_events"] > 0
    return with_events


async def test_summaries_from_the_rollups_equal_the_raw_ones_in_every_state(
    reads: Reads, db: asyncpg.Connection
) -> None:
    # 1. Nothing rolled up: every day is marked, read raw inside the rolled statement.
    assert await assert_all_equal(reads) > 20

    # 2. Everything rolled up.
    assert await reads.refresh_all() > 0
    status = await rollup_status(db)
    assert status.marks == 0
    assert status.user_hours_rows > 0
    await assert_all_equal(reads)

    # 3. Late events land in days already rolled up (one hour of them refreshed,
    #    the rest still marked), and a user's first event of a new day.
    late = [
        _row(dt.datetime(2026, 3, 3, hour, 30, tzinfo=dt.UTC), user, "late", {"club": "ascend"})
        for hour in (1, 9, 23)
        for user in ("alice", "tie")
    ]
    late.append(_row(dt.datetime(2026, 8, 8, 8, tzinfo=dt.UTC), "bob", "late", {"color": "red"}))
    await store(db, late)
    assert await refresh_rollups(reads.pool, max_buckets=1, property_keys=ROLLED_KEYS) == 1
    assert (await rollup_status(db)).marks > 0
    await assert_all_equal(reads)
    await reads.refresh_all()
    await assert_all_equal(reads)


async def test_the_answer_is_read_from_the_rollup_rows(
    reads: Reads, db: asyncpg.Connection
) -> None:
    """Change a rollup row and the planned answer changes: it was read, not recomputed."""
    await reads.refresh_all()
    case = CASES[1]
    for table, change in (
        ("rollup_user_hours", "events_by_hour[13] = events_by_hour[13] + 1"),
        ("rollup_user_daily_names", "events = events + 1"),
        ("rollup_user_daily_props", "events = events + 1"),
    ):
        planned, raw = await reads.both("alice", case)
        assert comparable(planned) == comparable(raw)
        await db.execute(
            f"UPDATE {table} SET {change} WHERE product = 'clubs' AND user_id = 'alice' "
            "AND day = '2026-01-30'"
        )
        planned, raw = await reads.both("alice", case)
        assert planned["source"] == "rollup"
        assert comparable(planned) != comparable(raw), table
        # The change stays until the day is redone, as when one of its hours is marked.
        await db.execute(
            "INSERT INTO rollup_dirty (product, hour) VALUES ('clubs', '2026-01-30 05:00Z')"
        )
        await reads.refresh_all()
        planned, raw = await reads.both("alice", case)
        assert comparable(planned) == comparable(raw), table


async def test_a_retention_cutoff_inside_the_range_reads_every_raw_row(
    reads: Reads, db: asyncpg.Connection
) -> None:
    """Past a cutoff the rollups keep counts of deleted events; the summary counts
    what is stored, so there the rolled statement falls back to the raw rows."""
    await reads.refresh_all()
    days = (dt.datetime.now(dt.UTC).date() - dt.date(2026, 6, 1)).days
    await set_policy(db, "clubs", days)
    # Delete what the policy would, leaving the rollups as they are.
    await db.execute(
        "DELETE FROM events WHERE product = 'clubs' "
        "AND timestamp < now() - make_interval(days => $1)",
        days,
    )
    # The rollups still count alice's January: the raw rows do not.
    planned, raw = await reads.both("alice", CASES[1])
    assert planned["source"] == "rollup"
    assert comparable(planned) == comparable(raw)
    assert raw["first_seen"] >= dt.datetime(2026, 5, 30, tzinfo=dt.UTC)
    await assert_all_equal(reads)


async def test_a_top_key_dropped_from_the_rollups_reads_raw(
    reads: Reads, db: asyncpg.Connection
) -> None:
    await reads.refresh_all()
    await reads.refresh_all(keys=["club"])  # "color" dropped; this process still lists it
    assert (await rollup_status(db)).property_keys == ["club"]
    await assert_all_equal(reads)


@pytest.fixture
async def half_rolled_up(reads: Reads, db: asyncpg.Connection) -> Reads:
    """Everything rolled up, then late events in some days: some marked, some redone."""
    await reads.refresh_all()
    late = [
        _row(dt.datetime(2026, month, 9, hour, tzinfo=dt.UTC), user, "late", {"club": "wharton"})
        for month in range(3, 13)
        for hour in (0, 4, 23)
        for user in ("alice", "bob")
    ]
    await store(db, late)
    assert await refresh_rollups(reads.pool, max_buckets=12, property_keys=ROLLED_KEYS) == 12
    assert (await rollup_status(db)).marks > 0
    return reads


@st.composite
def summary_cases(draw: st.DrawFn) -> tuple[str, str | None, str | None, list[str], str]:
    zone = draw(st.sampled_from(["UTC", "America/New_York", "Europe/Paris", "Asia/Tokyo"]))
    first = dt.date(2026, 1, 1) + dt.timedelta(days=draw(st.integers(0, 364)))
    last = first + dt.timedelta(days=draw(st.integers(0, 120)))
    top = draw(st.lists(st.sampled_from(["prop:club", "prop:color"]), max_size=2, unique=True))
    return zone, first.isoformat(), last.isoformat(), top, "rollup"


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=summary_cases(), user=st.sampled_from(USERS))
async def test_any_summary_near_the_rollups_equals_the_raw_one(
    half_rolled_up: Reads, case: tuple[str, str | None, str | None, list[str], str], user: str
) -> None:
    note(f"{user!r}: {case}")
    planned, raw = await half_rolled_up.both(user, case)
    assert planned["source"] == "rollup"
    assert comparable(planned) == comparable(raw)
