"""Rollups that stay exact: counts kept beside ``events``, and the marks that say where not.

These tables hold counts computed from ``events``:

- ``rollup_hourly``: events per (product, UTC hour, name);
- ``rollup_user_daily``: events per (product, UTC day, user), events with a user only;
- ``rollup_users``: distinct users per (product, period, start), the period a
  UTC day, an ISO week (from its Monday) or a month, from ``rollup_user_daily``;
- ``rollup_hourly_props``: events per (product, property key, UTC hour, name,
  value), for the keys listed in ``rollup_property_keys`` (``ROLLUP_PROPERTIES``);
- ``rollup_user_daily_names``: events per (product, UTC day, name, user), a
  NULL user for the events without one;
- ``rollup_user_daily_props``: events per (product, key, UTC day, value, user),
  likewise, for the listed keys;
- ``rollup_user_hours``: per (product, UTC day, user), the user's events in
  each UTC hour of the day (24 counts), for one user's summary;
- ``rollup_daily_props``: ``rollup_hourly_props`` summed per UTC day, so a
  breakdown over whole days reads a row per day, name and value, not 24.

The names and props tables count distinct users per name or per value over
a range of days (top events and top values with users) from a row per user
and day, not one per event.

``rollup_dirty`` holds a mark per (product, UTC hour) whose raw rows changed
since it was rolled up. A flush marks every hour it wrote into, in its own
transaction, with ``mark_dirty_sql``; ``refresh_rollups`` recomputes marked
hours (and the whole days around them) from ``events`` and removes their
marks, then the periods of the days it rewrote from ``rollup_user_daily``.
The five day-level tables are rewritten together, a day at a time.
Reads (``read.rollup_plan``) take rollup rows for unmarked hours, days and
periods only, raw rows for the rest, in one statement: one snapshot.

Why a committed state is always consistent (an hour without a mark has rollup
rows equal to its raw rows; a day none of whose hours is marked too):

- A flush's rows and its marks commit together.
- The mark is an upsert (``DO UPDATE``, not ``DO NOTHING``): it row-locks the
  mark until the flush commits. The worker takes marks ``FOR UPDATE SKIP
  LOCKED``, so it skips an hour a flush is about to commit into; that hour
  stays marked.
- A flush that marks an hour the worker has locked waits for the worker's
  commit, then inserts the mark again (the worker deleted it): its rows are
  not in the worker's counts, and the hour is marked until the next refresh.
- Every count the worker computes is read after it locked the marks, so it
  holds every row committed before the lock.

A period none of whose hours is marked has a ``rollup_users`` row equal to
its raw distinct users, or none: the last refresh to remove a mark in it
found no other mark there (a later one would still be there, only refreshes
remove marks), so the day of that mark was among the days it rewrote and it
recomputed the period, after those days, from days none of which was marked.
A refresh skips a period that is still marked somewhere (its row may be stale
meanwhile; reads compute a marked period instead), and a period's days are
only rewritten by a refresh, which recomputes the period with them.

The property keys follow ``ROLLUP_PROPERTIES`` (``sync_property_keys``, at the
start of a refresh, under its lock). A key added is listed in the same
transaction as a mark for every hour that has rollup rows (every other hour
with events is marked already), so from its commit on, each hour has that
key's rows or a mark, and each day its day-level rows or a mark in one of its
hours, as for the other rollups; the refreshes that take those marks write
them. A key dropped goes with its rows in one transaction; reads check the
list in the statement they read by (``read.rollup_plan``).

Retention (``storage.retention``) deletes raw rows without marking anything:
rollups outlive the raw events they were computed from. So an hour (a day)
that began before its product's retention cutoff is final: recomputing it
from the raw rows left would erase the counts of those deleted. A mark there
(a late event, stored raw until the next retention run) is removed without
recomputing anything.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

# pg_advisory_xact_lock key of a refresh ("LAROLLUP" in ASCII): one at a time
# across processes. Two refreshes could mark-lock different hours of one day
# and then both rewrite that day's user rows.
ROLLUP_LOCK_KEY = 0x4C41_524F_4C4C_5550

# In the flush transaction, after its rows are inserted, as late as possible
# (the lock it takes is held until the commit). ORDER BY: flushers lock marks
# in one order, so two of them cannot deadlock on each other's.
_MARK_DIRTY_TEMPLATE = """
INSERT INTO rollup_dirty (product, hour)
SELECT DISTINCT product, date_trunc('hour', "timestamp", 'UTC') FROM {source}
ORDER BY 1, 2
ON CONFLICT (product, hour) DO UPDATE SET marked_at = now()
"""

# Only marks that have settled (no flush into their hour for $2 seconds): the
# hour being written now would otherwise be recomputed whole at every refresh,
# a scan that grows with the hour. Reads take it raw meanwhile.
_TAKE_MARKS_SQL = """
SELECT product, hour FROM rollup_dirty
WHERE marked_at <= now() - make_interval(secs => $2)
ORDER BY marked_at
LIMIT $1
FOR UPDATE SKIP LOCKED
"""

# $1, $2: the marks taken, as parallel arrays (product[], hour[]).
_MARKS = "unnest($1::text[], $2::timestamptz[]) AS mark(product, hour)"
_DAY_START = "(d.day::timestamp AT TIME ZONE 'UTC')"
# The days of the marks taken that no other mark is left in (run after the
# taken marks are deleted): a day still marked elsewhere reads raw anyway, and
# is recomputed with its last mark, so each day is scanned about once, not
# once per hour of it. OFFSET 0 keeps the days a subquery of their own, found
# before any row is read: merged into the statement, the check for marks ran
# once per row of the days (a day's user rows against every mark of the
# product, 30 s a refresh on the 10-million-event data set).
_DAYS = f"""(
    SELECT product, day FROM (
        SELECT DISTINCT product, (hour AT TIME ZONE 'UTC')::date AS day FROM {_MARKS}
    ) AS d
    WHERE NOT EXISTS (
        SELECT 1 FROM rollup_dirty m
        WHERE m.product = d.product
          AND m.hour >= {_DAY_START} AND m.hour < {_DAY_START} + interval '1 day'
    )
    OFFSET 0
) AS d"""

# The raw rows of one mark's hour (or one day): a LATERAL subquery that is
# never merged into the statement (its OFFSET 0 keeps it a subquery), so each
# mark reads its own hour through an index, the other partitions pruned as it
# runs. Joined, the planner took a hash join over every partition past ~100
# marks: each refresh read the whole table (11 to 25 s for 200 hours of a
# 10-million-event table, growing with it).
_HOUR_ROWS = """LATERAL (
    SELECT {columns} FROM events
    WHERE product = mark.product
      AND "timestamp" >= mark.hour AND "timestamp" < mark.hour + interval '1 hour'
    OFFSET 0
) AS e"""
_DAY_ROWS = f"""LATERAL (
    SELECT {{columns}} FROM events
    WHERE product = d.product
      AND "timestamp" >= {_DAY_START} AND "timestamp" < {_DAY_START} + interval '1 day'
    OFFSET 0
) AS e"""

_DELETE_HOURLY_SQL = f"""
DELETE FROM rollup_hourly r USING {_MARKS}
WHERE r.product = mark.product AND r.hour = mark.hour
"""
_INSERT_HOURLY_SQL = f"""
INSERT INTO rollup_hourly (product, hour, name, events)
SELECT mark.product, mark.hour, e.name, count(*)
FROM {_MARKS}
CROSS JOIN {_HOUR_ROWS.format(columns="name")}
GROUP BY 1, 2, 3
"""
# Every declared key's rows, recomputed for the marked hours: the key's value
# as text, by the same expression reads group by (``read.sql``'s ``text_of``).
_DECLARED_KEYS = "(SELECT key, string_to_array(key, '.') AS path FROM rollup_property_keys) AS k"
_DELETE_PROPS_SQL = f"""
DELETE FROM rollup_hourly_props r USING {_MARKS} CROSS JOIN {_DECLARED_KEYS}
WHERE r.product = mark.product AND r.key = k.key AND r.hour = mark.hour
"""
_INSERT_PROPS_SQL = f"""
INSERT INTO rollup_hourly_props (product, key, hour, name, value, events)
SELECT mark.product, k.key, mark.hour, e.name, e.properties #>> k.path, count(*)
FROM {_MARKS}
CROSS JOIN {_HOUR_ROWS.format(columns="name, properties")}
CROSS JOIN {_DECLARED_KEYS}
GROUP BY 1, 2, 3, 4, 5
"""
_DELETE_DAILY_PROPS_SQL = f"""
DELETE FROM rollup_daily_props r USING {_DAYS}
WHERE r.product = d.product AND r.day = d.day
"""
# From the day's hourly rows, all current: a day is rewritten once no mark is
# left in it, after the hours of this refresh were. A few thousand rows per
# day and key where the events are a hundred thousand.
_INSERT_DAILY_PROPS_SQL = f"""
INSERT INTO rollup_daily_props (product, key, day, name, value, events)
SELECT d.product, k.key, d.day, r.name, r.value, sum(r.events)
FROM {_DAYS}
CROSS JOIN (SELECT key FROM rollup_property_keys) AS k
CROSS JOIN LATERAL (
    SELECT name, value, events FROM rollup_hourly_props
    WHERE product = d.product AND key = k.key
      AND hour >= {_DAY_START} AND hour < {_DAY_START} + interval '1 day'
    OFFSET 0
) AS r
GROUP BY 1, 2, 3, 4, 5
"""
# A key added: every hour rolled up so far is marked, dated by the hour's end
# (when its last event could have been flushed), so past hours need not settle.
# ORDER BY: marks are locked in the flushers' order (see _MARK_DIRTY_TEMPLATE).
_MARK_ROLLED_UP_HOURS_SQL = """
INSERT INTO rollup_dirty (product, hour, marked_at)
SELECT product, hour, least(now(), hour + interval '1 hour')
FROM (SELECT DISTINCT product, hour FROM rollup_hourly) AS h
ORDER BY 1, 2
ON CONFLICT (product, hour) DO NOTHING
"""
_DELETE_USER_DAILY_SQL = f"""
DELETE FROM rollup_user_daily r USING {_DAYS}
WHERE r.product = d.product AND r.day = d.day
"""
_DELETE_USER_DAILY_NAMES_SQL = f"""
DELETE FROM rollup_user_daily_names r USING {_DAYS}
WHERE r.product = d.product AND r.day = d.day
"""
# Every key's rows, listed or not: a key dropped has none left (sync_property_keys).
_DELETE_USER_DAILY_PROPS_SQL = f"""
DELETE FROM rollup_user_daily_props r USING {_DAYS}
WHERE r.product = d.product AND r.day = d.day
"""
# The whole day, whichever of its hours were marked: a day's distinct users
# cannot be patched hour by hour. The day's events are read once, for the
# names; the users' rows are summed from those.
# Ordered by user (and key): one user's rows of a day are written side by
# side instead of scattered over the day's pages (one user's summary reads a
# year of them: 4,844 rows of one key were a 9.1 ms bitmap heap scan).
_INSERT_USER_DAILY_NAMES_SQL = f"""
INSERT INTO rollup_user_daily_names (product, day, name, user_id, events)
SELECT d.product, d.day, e.name, e.user_id, count(*)
FROM {_DAYS}
CROSS JOIN {_DAY_ROWS.format(columns="name, user_id")}
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 4
"""
_INSERT_USER_DAILY_SQL = f"""
INSERT INTO rollup_user_daily (product, day, user_id, events)
SELECT d.product, d.day, r.user_id, sum(r.events)
FROM {_DAYS}
CROSS JOIN LATERAL (
    SELECT user_id, events FROM rollup_user_daily_names
    WHERE product = d.product AND day = d.day AND user_id IS NOT NULL
    OFFSET 0
) AS r
GROUP BY 1, 2, 3
"""
# A user's events per UTC hour of the day, hour 0 first (one user's summary,
# read.summary): a row per user and day, where raw events are about a heap
# page each.
_EVENTS_BY_HOUR = (
    "ARRAY["
    + ", ".join(
        f"""count(*) FILTER (WHERE extract(hour FROM "timestamp" AT TIME ZONE 'UTC') = {hour})"""
        for hour in range(24)
    )
    + "]::integer[]"
)
_DELETE_USER_HOURS_SQL = f"""
DELETE FROM rollup_user_hours r USING {_DAYS}
WHERE r.product = d.product AND r.day = d.day
"""
_INSERT_USER_HOURS_SQL = f"""
INSERT INTO rollup_user_hours (product, day, user_id, events_by_hour)
SELECT d.product, d.day, e.user_id, {_EVENTS_BY_HOUR}
FROM {_DAYS}
CROSS JOIN {_DAY_ROWS.format(columns='user_id, "timestamp"')}
WHERE e.user_id IS NOT NULL
GROUP BY 1, 2, 3
"""
_INSERT_USER_DAILY_PROPS_SQL = f"""
INSERT INTO rollup_user_daily_props (product, key, day, value, user_id, events)
SELECT d.product, k.key, d.day, e.properties #>> k.path, e.user_id, count(*)
FROM {_DAYS}
CROSS JOIN {_DAY_ROWS.format(columns="properties, user_id")}
CROSS JOIN {_DECLARED_KEYS}
GROUP BY 1, 2, 3, 4, 5
ORDER BY 1, 2, 3, 5
"""
# The day, ISO week and month of each day just rewritten, unless a mark is
# left anywhere in the period: that period is read raw, and recomputed with
# its last mark (so a month is not recounted once per refresh while it is
# being rolled up). Days are dates, so no time zone takes part in the truncation.
_PERIOD_END = "((u.start + ('1 ' || u.period)::interval)::date)"
_UPSERT_USERS_SQL = f"""
INSERT INTO rollup_users (product, period, start, users)
SELECT u.product, u.period, u.start, (
    SELECT count(DISTINCT r.user_id) FROM rollup_user_daily r
    WHERE r.product = u.product AND r.day >= u.start AND r.day < {_PERIOD_END}
)
FROM (
    SELECT DISTINCT d.product, p.period, date_trunc(p.period, d.day::timestamp)::date AS start
    FROM {_DAYS} CROSS JOIN (VALUES ('day'), ('week'), ('month')) AS p(period)
) AS u
WHERE NOT EXISTS (
    SELECT 1 FROM rollup_dirty m
    WHERE m.product = u.product
      AND m.hour >= (u.start::timestamp AT TIME ZONE 'UTC')
      AND m.hour < ({_PERIOD_END}::timestamp AT TIME ZONE 'UTC')
)
ON CONFLICT (product, period, start) DO UPDATE SET users = excluded.users
"""
_DELETE_MARKS_SQL = f"""
DELETE FROM rollup_dirty r USING {_MARKS}
WHERE r.product = mark.product AND r.hour = mark.hour
"""


def mark_dirty_sql(source: str) -> str:
    """The marking statement over ``source``, a table of ours with ``product`` and
    ``timestamp`` columns: every (product, UTC hour) in it is marked."""
    return _MARK_DIRTY_TEMPLATE.format(source=source)


async def refresh_rollups(
    pool: asyncpg.Pool,
    *,
    max_buckets: int,
    settle_seconds: float = 0.0,
    wait: bool = True,
    property_keys: Sequence[str] | None = None,
) -> int:
    """Roll up at most ``max_buckets`` marked hours (oldest marks first), in one
    transaction; how many were done (0: none marked, none settled for
    ``settle_seconds``, all being flushed into, or, unless ``wait``, another
    refresh running). ``property_keys``: the keys to roll up from now on
    (``ROLLUP_PROPERTIES``); None leaves the list as it is."""
    async with pool.acquire() as conn, conn.transaction():
        if wait:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ROLLUP_LOCK_KEY)
        elif not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", ROLLUP_LOCK_KEY):
            return 0
        if property_keys is not None:
            await sync_property_keys(conn, property_keys)
        marks = await conn.fetch(_TAKE_MARKS_SQL, max_buckets, settle_seconds)
        if not marks:
            return 0
        cutoffs = await _retention_cutoffs(conn, {mark["product"] for mark in marks})
        every = _columns(marks)
        live_hours = _columns([m for m in marks if _after(m["hour"], cutoffs.get(m["product"]))])
        live_days = _columns(
            [m for m in marks if _after(_day_start(m["hour"]), cutoffs.get(m["product"]))]
        )
        for statement, (products, hours) in (
            (_DELETE_HOURLY_SQL, live_hours),
            (_INSERT_HOURLY_SQL, live_hours),
            (_DELETE_PROPS_SQL, live_hours),
            (_INSERT_PROPS_SQL, live_hours),
            # Every mark taken, before the days: a day is redone once no mark is left in it.
            (_DELETE_MARKS_SQL, every),
            (_DELETE_USER_DAILY_NAMES_SQL, live_days),
            (_DELETE_USER_DAILY_SQL, live_days),
            (_DELETE_USER_DAILY_PROPS_SQL, live_days),
            (_DELETE_USER_HOURS_SQL, live_days),
            # Sums of hourly rows, not of raw ones: right even for a day that
            # began before the retention cutoff (its hours are final or current).
            (_DELETE_DAILY_PROPS_SQL, every),
            (_INSERT_USER_DAILY_NAMES_SQL, live_days),
            (_INSERT_USER_DAILY_SQL, live_days),  # after the names: summed from them
            (_INSERT_USER_DAILY_PROPS_SQL, live_days),
            (_INSERT_USER_HOURS_SQL, live_days),
            (_INSERT_DAILY_PROPS_SQL, every),  # after the hours: summed from them
            (_UPSERT_USERS_SQL, live_days),  # after the days: counted from their new rows
        ):
            if products:
                await conn.execute(statement, products, hours)
    return len(marks)


async def sync_property_keys(conn: asyncpg.Connection, keys: Sequence[str]) -> None:
    """Make ``rollup_property_keys`` list ``keys``, in the caller's transaction
    (a refresh's, under its lock): a key dropped goes with its rows; a key
    added is listed with a mark on every hour rolled up so far (the module's
    docstring says why that keeps reads exact)."""
    listed = {row["key"] for row in await conn.fetch("SELECT key FROM rollup_property_keys")}
    dropped = sorted(listed - set(keys))
    added = sorted(set(keys) - listed)
    if dropped:
        for table in ("rollup_hourly_props", "rollup_daily_props", "rollup_user_daily_props"):
            await conn.execute(f"DELETE FROM {table} WHERE key = ANY($1::text[])", dropped)
        await conn.execute("DELETE FROM rollup_property_keys WHERE key = ANY($1::text[])", dropped)
    if added:
        await conn.execute(
            "INSERT INTO rollup_property_keys (key) SELECT unnest($1::text[])", added
        )
        await conn.execute(_MARK_ROLLED_UP_HOURS_SQL)


async def _retention_cutoffs(
    conn: asyncpg.Connection, products: set[str]
) -> dict[str, dt.datetime]:
    """Each product's retention cutoff (now - keep_days), for those with a policy."""
    rows = await conn.fetch(
        "SELECT product, now() - make_interval(days => keep_days) AS cutoff "
        "FROM product_retention WHERE product = ANY($1::text[])",
        sorted(products),
    )
    return {row["product"]: row["cutoff"] for row in rows}


def _after(start: dt.datetime, cutoff: dt.datetime | None) -> bool:
    """Whether a bucket starting at ``start`` may still be recomputed from raw rows."""
    return cutoff is None or start >= cutoff


def _day_start(hour: dt.datetime) -> dt.datetime:
    return hour.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _columns(marks: list[asyncpg.Record]) -> tuple[list[str], list[dt.datetime]]:
    """Marks as the (product[], hour[]) pair of arrays the statements take."""
    return [m["product"] for m in marks], [m["hour"] for m in marks]


@dataclass(frozen=True, slots=True)
class RollupStatus:
    marks: int
    oldest_mark: dt.datetime | None
    hourly_rows: int
    user_daily_rows: int
    users_rows: int
    props_rows: int
    user_daily_names_rows: int
    user_daily_props_rows: int
    user_hours_rows: int
    daily_props_rows: int
    property_keys: list[str]


async def rollup_status(conn: asyncpg.Connection) -> RollupStatus:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM rollup_dirty) AS marks, "
        "(SELECT min(marked_at) FROM rollup_dirty) AS oldest_mark, "
        "(SELECT count(*) FROM rollup_hourly) AS hourly_rows, "
        "(SELECT count(*) FROM rollup_user_daily) AS user_daily_rows, "
        "(SELECT count(*) FROM rollup_users) AS users_rows, "
        "(SELECT count(*) FROM rollup_hourly_props) AS props_rows, "
        "(SELECT count(*) FROM rollup_user_daily_names) AS user_daily_names_rows, "
        "(SELECT count(*) FROM rollup_user_daily_props) AS user_daily_props_rows, "
        "(SELECT count(*) FROM rollup_user_hours) AS user_hours_rows, "
        "(SELECT count(*) FROM rollup_daily_props) AS daily_props_rows, "
        "(SELECT coalesce(array_agg(key ORDER BY key), '{}') FROM rollup_property_keys) AS keys"
    )
    assert row is not None
    return RollupStatus(
        marks=row["marks"],
        oldest_mark=row["oldest_mark"],
        hourly_rows=row["hourly_rows"],
        user_daily_rows=row["user_daily_rows"],
        users_rows=row["users_rows"],
        props_rows=row["props_rows"],
        user_daily_names_rows=row["user_daily_names_rows"],
        user_daily_props_rows=row["user_daily_props_rows"],
        user_hours_rows=row["user_hours_rows"],
        daily_props_rows=row["daily_props_rows"],
        property_keys=list(row["keys"]),
    )


__all__ = [
    "ROLLUP_LOCK_KEY",
    "RollupStatus",
    "mark_dirty_sql",
    "refresh_rollups",
    "rollup_status",
    "sync_property_keys",
]
