"""``GET /v1/users/{user}/summary``: one user's year ("Labs Wrapped"), exactly.

Every number is plain SQL over the stored events of the product whose
``user_id`` is the user, inside ``[from, to]`` (local days, both included;
default the current calendar year in the time zone). It is one statement,
so one snapshot: the parts agree even while events arrive.

Definitions (the README says the same):

- ``events_by_name``: events per name, most first, ties by name in byte
  order; the 1,000 most frequent names.
- ``top``: for each ``prop:KEY`` / ``context:KEY``, its 10 most frequent
  values as text (a JSON string unquoted, numbers, booleans and objects as
  JSON text), most first, ties by value in byte order; events without the key,
  or with JSON ``null`` there, are not counted.
- ``first_seen`` / ``last_seen``: the earliest and latest event in the range,
  RFC 3339 in the time zone's offset at that instant.
- Weekday and hour are local: ISO weekdays, Monday = 0 … Sunday = 6, and the
  wall-clock hour 0 to 23. On the day clocks go back, both passes through the
  repeated hour count towards it; the skipped hour of spring has no events.
  ``most_active_*``: the one with most events, ties to the earliest
  (Monday before Tuesday, 09 before 14).
- ``longest_streak``: the longest run of consecutive local calendar days with
  at least one event each, inside the range; ties to the earliest run.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from labs_analytics.auth.keys import ApiKey
from labs_analytics.read.dates import Interval
from labs_analytics.read.fields import FieldRef, parse_field
from labs_analytics.read.request import check_timezone
from labs_analytics.read.service import ReadService
from labs_analytics.read.sql import SqlBuilder

MAX_TOP_FIELDS = 5
TOP_VALUES = 10
MAX_NAMES = 1_000
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_DATE = re.compile(DATE_PATTERN)
_FIRST_DAY = dt.date(1970, 1, 1)
_LAST_DAY = dt.date(9998, 12, 31)  # the midnight after it, in any zone, is still a timestamp
_KEY = r"[^.\x00-\x1f]{1,128}(\.[^.\x00-\x1f]{1,128}){0,7}"
TOP_PATTERN = rf"^(prop|context):{_KEY}$"

TopField = Annotated[str, StringConstraints(max_length=300, pattern=TOP_PATTERN)]


def _day(text: str) -> dt.date:
    if not _DATE.match(text):
        raise ValueError(f"{text[:40]!r} is not a date (YYYY-MM-DD)")
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a date (YYYY-MM-DD)") from None
    if not _FIRST_DAY <= day <= _LAST_DAY:
        raise ValueError(f"a date from {_FIRST_DAY} to {_LAST_DAY}")
    return day


class SummaryParams(BaseModel):
    """The query parameters of ``GET /v1/users/{user}/summary`` (checked in this order)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    timezone: str = Field(
        default="UTC", max_length=64, description="An IANA time zone: days, weekdays and hours."
    )
    from_: str | None = Field(
        default=None,
        alias="from",
        max_length=10,
        pattern=DATE_PATTERN,
        description="The first local day (YYYY-MM-DD). Default: 1 January of `to`'s year, "
        "or of this year.",
    )
    to: str | None = Field(
        default=None,
        max_length=10,
        pattern=DATE_PATTERN,
        description="The last local day, included (YYYY-MM-DD). Default: 31 December of "
        "`from`'s year, or of this year.",
    )
    top: list[TopField] = Field(
        default_factory=list,
        max_length=MAX_TOP_FIELDS,
        description="`prop:KEY` or `context:KEY` (repeat, at most 5): the 10 most frequent "
        "values of each.",
    )
    product: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Another product's name: `admin` keys only.",
    )

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("from_")
    @classmethod
    def _from(cls, value: str | None) -> str | None:
        if value is not None:
            _day(value)
        return value

    @field_validator("to")
    @classmethod
    def _to(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        last = _day(value)
        first = info.data.get("from_")
        if first is not None and _day(first) > last:
            raise ValueError("to must not be before from")
        return value

    @field_validator("top")
    @classmethod
    def _top(cls, value: list[str]) -> list[str]:
        for text in value:
            field = parse_field(text)
            if not field.is_json:
                raise ValueError("top takes prop:KEY or context:KEY")
        if len(set(value)) != len(value):
            raise ValueError("each top field at most once")
        return value

    def days(self, now: dt.datetime) -> tuple[dt.date, dt.date]:
        """``(first, last)`` local days, both included."""
        zone = ZoneInfo(self.timezone)
        if self.from_ is not None:
            first = _day(self.from_)
            last = _day(self.to) if self.to is not None else first.replace(month=12, day=31)
        elif self.to is not None:
            last = _day(self.to)
            first = last.replace(month=1, day=1)
        else:
            year = now.astimezone(zone).year
            first, last = dt.date(year, 1, 1), dt.date(year, 12, 31)
        return first, last

    def top_fields(self) -> list[FieldRef]:
        return [parse_field(text) for text in self.top]


def _interval(first: dt.date, last: dt.date, zone: ZoneInfo) -> Interval:
    start = dt.datetime.combine(first, dt.time(), tzinfo=zone)
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    return Interval(start, end)


class _Statement:
    """The whole summary as one statement: planned once, the user's rows read once.

    ``mine`` is the user's rows in range, each with its local wall-clock hour
    and the text of each top field. ``counts`` groups them by several keys in
    one pass (``GROUPING SETS``: one hash table per key, no copy of the rows):
    the whole range, each name, each local hour, each value of each top field;
    ``grouped_by`` says which key a row counts by. Everything else is computed
    from those few rows: weekdays, hours and days from the local hours (an
    hour's events share its weekday and its day). Each part is a one-row
    subquery, lists as arrays in their final order, so the answer is one row.
    Every client value is a parameter; the keys and labels are this code's own.
    """

    def __init__(
        self, product: str, user: str, interval: Interval, zone: str, fields: list[FieldRef]
    ) -> None:
        self.product = product
        self.user = user
        self.interval = interval
        self.zone = zone
        self.fields = fields

    def sql(self) -> tuple[str, list[Any]]:
        builder = SqlBuilder()
        tops = [f"top_{index}" for index in range(len(self.fields))]
        keys = ["name", "local_hour", *tops]
        top_columns = "".join(
            f", {builder.text_of(field)} AS {top}"
            for field, top in zip(self.fields, tops, strict=True)
        )
        local = f'"timestamp" AT TIME ZONE {builder.param(self.zone, "text")}'
        mine = (
            'SELECT "timestamp", name, '
            f"date_trunc('hour', {local}) AS local_hour{top_columns} FROM events "
            f"WHERE product = {builder.param(self.product)} "
            f"AND user_id = {builder.param(self.user)} "
            f'AND "timestamp" >= {builder.param(self.interval.start)} '
            f'AND "timestamp" < {builder.param(self.interval.end)}'
        )
        grouped_by = " ".join(f"WHEN GROUPING({key}) = 0 THEN '{key}'" for key in keys)
        counts = (
            f"SELECT CASE {grouped_by} ELSE 'total' END AS grouped_by, {', '.join(keys)}, "
            'count(*) AS events, min("timestamp") AS first_seen, max("timestamp") AS last_seen '
            f"FROM mine GROUP BY GROUPING SETS ((), {', '.join(f'({key})' for key in keys)})"
        )
        parts = [
            "(SELECT events, first_seen, last_seen FROM counts "
            "WHERE grouped_by = 'total') AS totals",
            self._ranked("name", builder.param(MAX_NAMES), "names", "name_events"),
            self._clock(),
            *(
                self._ranked(
                    top, builder.param(TOP_VALUES), f"top_values_{index}", f"top_events_{index}"
                )
                for index, top in enumerate(tops)
            ),
        ]
        sql = (
            f"WITH mine AS ({mine}), counts AS ({counts}), "
            "days AS (SELECT DISTINCT local_hour::date AS day FROM counts "
            "WHERE grouped_by = 'local_hour'), "
            # Consecutive days minus their rank are one constant date per run.
            "runs AS (SELECT day, day - (row_number() OVER (ORDER BY day))::int AS run "
            "FROM days) "
            "SELECT *, (SELECT count(*) FROM days) AS active_days "
            f"FROM {' CROSS JOIN '.join(parts)} "
            # No day, no run: the LEFT JOIN keeps the one row, its streak NULL.
            "LEFT JOIN (SELECT min(day) AS streak_first_day, max(day) AS streak_last_day, "
            "count(*) AS streak_days FROM runs GROUP BY run "
            "ORDER BY streak_days DESC, streak_first_day ASC LIMIT 1) AS streak ON true"
        )
        return sql, builder.args

    @staticmethod
    def _ranked(key: str, limit: str, values: str, events: str) -> str:
        """The most frequent values of ``key``, most first, ties in byte order."""
        order = f'events DESC, {key} COLLATE "C"'
        return (
            f"(SELECT array_agg({key} ORDER BY {order}) AS {values}, "
            f"array_agg(events ORDER BY {order}) AS {events} "
            f"FROM (SELECT {key}, events FROM counts WHERE grouped_by = '{key}' "
            f"AND {key} IS NOT NULL ORDER BY {order} LIMIT {limit}) AS ranked) AS ranked_{key}"
        )

    @staticmethod
    def _clock() -> str:
        """Events per local (ISO weekday, hour): at most 168 triples."""
        return (
            "(SELECT array_agg(weekday) AS clock_weekdays, array_agg(hour) AS clock_hours, "
            "array_agg(events) AS clock_events FROM ("
            "SELECT extract(isodow FROM local_hour)::int - 1 AS weekday, "
            "extract(hour FROM local_hour)::int AS hour, sum(events)::bigint AS events "
            "FROM counts WHERE grouped_by = 'local_hour' GROUP BY 1, 2) AS moments) AS clock"
        )


def _most(counts: list[int]) -> int | None:
    """The index with the most events, the earliest on ties; None when all are 0."""
    best = max(range(len(counts)), key=lambda index: (counts[index], -index))
    return best if counts[best] else None


async def user_summary(
    reads: ReadService, key: ApiKey, user: str, params: SummaryParams, now: dt.datetime
) -> dict[str, Any]:
    """The summary of ``user`` in the key's product (or the one an admin names)."""
    reads.admit(key)
    product = reads.product_for(key, params.product)
    started = time.monotonic()
    zone = ZoneInfo(params.timezone)
    first_day, last_day = params.days(now)
    interval = _interval(first_day, last_day, zone)
    fields = params.top_fields()
    sql, args = _Statement(product, user, interval, params.timezone, fields).sql()

    async with reads.connection() as connection, connection.transaction():
        # One user's rows are found the same way whatever the range: an index
        # scan per partition, the partitions outside the range pruned when the
        # plan starts. So this statement keeps one generic plan per connection
        # (the read sessions plan every statement afresh otherwise) and skips
        # ~4 ms of planning over a year of partitions: p50 49 → 42 ms for a
        # user with 31,637 events (10M-event data set).
        await connection.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        # One statement, so one snapshot: the parts agree even while events arrive.
        row = await connection.fetchrow(sql, *args, timeout=reads.timeout)
    assert row is not None  # the empty grouping set gives one row, even with no events

    weekdays, hours = [0] * 7, [0] * 24
    clock = (row["clock_weekdays"] or [], row["clock_hours"] or [], row["clock_events"] or [])
    for day, hour, events in zip(*clock, strict=True):
        weekdays[day] += events
        hours[hour] += events
    weekday, hour = _most(weekdays), _most(hours)
    names = zip(row["names"] or [], row["name_events"] or [], strict=True)
    tops = {
        field.text: zip(row[f"top_values_{i}"] or [], row[f"top_events_{i}"] or [], strict=True)
        for i, field in enumerate(fields)
    }
    first_seen, last_seen = row["first_seen"], row["last_seen"]
    return {
        "user": user,
        "product": product,
        "timezone": params.timezone,
        "from": first_day,
        "to": last_day,
        "date_range": [interval.start.isoformat(), interval.end.isoformat()],
        "total_events": row["events"],
        "active_days": row["active_days"],
        "first_seen": first_seen.astimezone(zone) if first_seen else None,
        "last_seen": last_seen.astimezone(zone) if last_seen else None,
        "events_by_name": [{"name": name, "events": events} for name, events in names],
        "top": {
            text: [{"value": value, "events": events} for value, events in counts]
            for text, counts in tops.items()
        },
        "events_by_weekday": weekdays,
        "events_by_hour": hours,
        "most_active_weekday": None
        if weekday is None
        else {"weekday": weekday, "name": WEEKDAYS[weekday], "events": weekdays[weekday]},
        "most_active_hour": None if hour is None else {"hour": hour, "events": hours[hour]},
        "longest_streak": None
        if row["streak_days"] is None
        else {
            "days": row["streak_days"],
            "start": row["streak_first_day"],
            "end": row["streak_last_day"],
        },
        "took_ms": round((time.monotonic() - started) * 1000, 1),
    }
