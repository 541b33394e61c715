"""Which rows ``POST /v1/query`` reads: the rollups where the request allows, else ``events``.

Two rollups (``storage.rollups``) hold exact counts: events per UTC hour and
name, and events per UTC day and user (events with a user). A request is
answered from one when every number it asks for can be summed from it:

- **hourly**: only the ``events`` metric; dimensions among ``time:*`` and
  ``name``; filters on ``name`` only; the range starts and ends on UTC hours,
  and the time zone's offset is a whole number of hours throughout it (so
  each UTC hour lies in one local hour, day, week and month).
- **hourly-props**: as hourly, with one dimension ``prop:KEY`` besides, for a
  key in ``ROLLUP_PROPERTIES`` (``rollup_hourly_props``). The statement checks
  that the key is in ``rollup_property_keys`` (a key being added or dropped
  is read raw), so a process whose setting differs still answers exactly.
  Over whole UTC days, when the request has no time dimension or only
  ``time:day|week|month`` in a zone at UTC throughout, the clean days are read
  from ``rollup_daily_props`` (a row per day, name and value, not 24): the
  hours of the partial first and last days and of marked days as above.
- **user-daily**: metrics among ``events`` and ``users``; dimensions among
  ``time:day|week|month`` and ``user``; no filters; a time zone at UTC
  throughout, and a range of whole UTC days.

- **user-daily-names**: as user-daily, with ``name`` among the dimensions
  and filters on ``name`` allowed (``rollup_user_daily_names``): top events
  with their users.
- **user-daily-props**: as user-daily, with one dimension ``prop:KEY`` for a
  rolled-up key besides (``rollup_user_daily_props``; the key is checked in
  the statement as for hourly-props): top values with their users.

Anything else reads ``events`` as before. Either way the answer is the same
number: the rollup relation below takes rollup rows only for hours (days)
without a dirty mark, and the raw events of the marked ones, in the one
statement the answer is computed by (one snapshot).

Within the user-daily plan, ``users`` alone by ``time:day|week|month`` over a
range with a real start (not ``all``) is a series of periods
(``users_by_period``): a period wholly inside the range, with no mark anywhere
in it and a ``rollup_users`` row, takes the row's count; any other (a partial
first or last week or month, a marked one, one not rolled up yet) is counted
as the user-daily plan counts it, over its days in the range. With ``events``
beside ``users`` the whole user-daily relation is read anyway, so such a
request takes the user-daily plan as it is.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

from labs_analytics.read.dates import Granularity, Interval
from labs_analytics.read.fields import FieldRef
from labs_analytics.read.request import Dimension, QueryRequest
from labs_analytics.read.sql import SqlBuilder

Plan = Literal[
    "raw", "hourly", "hourly_props", "user_daily", "user_daily_names", "user_daily_props"
]

HOUR = dt.timedelta(hours=1)
# Zone offsets are checked day by day over the years a range covers; a range
# of more years than this is read raw rather than checked.
MAX_CHECKED_YEARS = 200


@dataclass(frozen=True, slots=True)
class Source:
    """What the aggregate reads: its relation, the conditions that limit it to
    the product and range, and how the ``events`` metric counts its rows."""

    kind: Literal["raw", "rollup"]
    relation: str
    conditions: list[str]
    events_sql: str
    # The property the relation carries as its column ``prop_value`` (the props plans).
    rolled_property: FieldRef | None = None


def choose_plan(
    request: QueryRequest, interval: Interval, property_keys: Collection[str] = ()
) -> Plan:
    if hourly_eligible(request, interval):
        return "hourly"
    if hourly_props_eligible(request, interval, property_keys):
        return "hourly_props"
    if user_daily_eligible(request, interval):
        return "user_daily"
    if user_daily_names_eligible(request, interval):
        return "user_daily_names"
    if user_daily_props_eligible(request, interval, property_keys):
        return "user_daily_props"
    return "raw"


def hourly_eligible(request: QueryRequest, interval: Interval) -> bool:
    return all(
        d.granularity or d.text == "name" for d in request.parsed_dimensions()
    ) and _hourly_shape(request, interval)


def hourly_props_eligible(
    request: QueryRequest, interval: Interval, property_keys: Collection[str]
) -> bool:
    prop = rolled_property(request, property_keys)
    return (
        prop is not None
        and all(
            d.granularity or d.text == "name" or d.field == prop
            for d in request.parsed_dimensions()
        )
        and _hourly_shape(request, interval)
    )


def rolled_property(request: QueryRequest, property_keys: Collection[str]) -> FieldRef | None:
    """The request's one ``prop:KEY`` dimension, if KEY is rolled up; else None."""
    fields = [d.field for d in request.parsed_dimensions() if d.field is not None]
    json_fields = [field for field in fields if field.is_json]
    if len(json_fields) != 1:
        return None
    (field,) = json_fields
    if field.column != "properties" or ".".join(field.path) not in property_keys:
        return None
    return field


def _hourly_shape(request: QueryRequest, interval: Interval) -> bool:
    """What both hourly rollups need besides their dimensions."""
    return (
        all(metric.kind == "events" for metric in request.parsed_metrics())
        and all(flt.field.column == "name" for flt in request.parsed_filters())
        and _on_utc_boundary(interval, HOUR)
        and offsets_whole_hours(request.timezone, interval)
    )


def user_daily_eligible(request: QueryRequest, interval: Interval) -> bool:
    return (
        all(_day_or_user(d) for d in request.parsed_dimensions())
        and not request.filters
        and _user_daily_shape(request, interval)
    )


def user_daily_names_eligible(request: QueryRequest, interval: Interval) -> bool:
    return (
        all(_day_or_user(d) or d.text == "name" for d in request.parsed_dimensions())
        and all(flt.field.column == "name" for flt in request.parsed_filters())
        and _user_daily_shape(request, interval)
    )


def user_daily_props_eligible(
    request: QueryRequest, interval: Interval, property_keys: Collection[str]
) -> bool:
    prop = rolled_property(request, property_keys)
    return (
        prop is not None
        and all(_day_or_user(d) or d.field == prop for d in request.parsed_dimensions())
        and not request.filters
        and _user_daily_shape(request, interval)
    )


def _day_or_user(dimension: Dimension) -> bool:
    return dimension.granularity in ("day", "week", "month") or dimension.text == "user"


def _user_daily_shape(request: QueryRequest, interval: Interval) -> bool:
    """What the day-level rollups need besides their dimensions and filters."""
    return (
        all(metric.kind in ("events", "users") for metric in request.parsed_metrics())
        and _on_utc_boundary(interval, dt.timedelta(days=1))
        and _utc_throughout(request.timezone, interval)
    )


def users_by_period(request: QueryRequest, plan: Plan, *, fill_from: bool) -> Granularity | None:
    """The period of a user-daily request answered from ``rollup_users`` (the
    ``users`` metric alone, by one time dimension, over a range with a real
    start), else None."""
    dimensions = request.parsed_dimensions()
    if (
        plan != "user_daily"
        or not fill_from
        or [metric.kind for metric in request.parsed_metrics()] != ["users"]
        or len(dimensions) != 1
    ):
        return None
    granularity = dimensions[0].granularity
    return granularity if granularity in ("day", "week", "month") else None


def daily_props_usable(request: QueryRequest, interval: Interval) -> bool:
    """Whether an hourly-props request can count a whole UTC day as one bucket:
    it has no time dimension, or only days, weeks or months in a zone at UTC
    throughout the range (elsewhere a UTC day spans two local days)."""
    granularities = {d.granularity for d in request.parsed_dimensions() if d.granularity}
    return not granularities or (
        granularities <= {"day", "week", "month"} and _utc_throughout(request.timezone, interval)
    )


def whole_utc_days(interval: Interval) -> tuple[dt.date, dt.date] | None:
    """The UTC days that lie wholly inside ``interval``, as [first, end); None if none."""
    start, end = interval.start.astimezone(dt.UTC), interval.end.astimezone(dt.UTC)
    first = start.date()
    if start != dt.datetime.combine(first, dt.time(0), dt.UTC):
        first += dt.timedelta(days=1)
    return (first, end.date()) if first < end.date() else None


def _on_utc_boundary(interval: Interval, unit: dt.timedelta) -> bool:
    return all(
        (bound.astimezone(dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) % unit
        == dt.timedelta(0)
        for bound in (interval.start, interval.end)
    )


def _utc_throughout(zone: str, interval: Interval) -> bool:
    """Whether the zone's offset is zero all through the range (a UTC day is a local one)."""
    return _offsets(zone, interval) == {dt.timedelta(0)}


def offsets_whole_hours(zone: str, interval: Interval) -> bool:
    offsets = _offsets(zone, interval)
    return bool(offsets) and all(offset % HOUR == dt.timedelta(0) for offset in offsets)


def _offsets(zone: str, interval: Interval) -> set[dt.timedelta]:
    """The zone's UTC offsets at the range's bounds and through every year it
    covers; empty when there are too many years to check."""
    first, last = interval.start.astimezone(dt.UTC).year, interval.end.astimezone(dt.UTC).year
    if last - first >= MAX_CHECKED_YEARS:
        return set()
    offsets = {_offset(bound, ZoneInfo(zone)) for bound in (interval.start, interval.end)}
    for year in range(first, last + 1):
        offsets |= _year_offsets(zone, year)
    return offsets


def _offset(moment: dt.datetime, zone: ZoneInfo) -> dt.timedelta:
    return moment.astimezone(zone).utcoffset() or dt.timedelta(0)


@functools.lru_cache(maxsize=4096)
def _year_offsets(zone: str, year: int) -> frozenset[dt.timedelta]:
    """Every offset the zone has in ``year``, sampled twice a day (Jan 1 and Jul 1
    among the samples): a zone that spends any day of the year at an offset
    shows it."""
    tz = ZoneInfo(zone)
    first = dt.date(year, 1, 1).toordinal()
    days = dt.date(year, 12, 31).toordinal() - first + 1
    return frozenset(
        _offset(dt.datetime.combine(dt.date.fromordinal(first + n), time), tz)
        for n in range(days)
        for time in (_MIDNIGHT, _NOON)
    )


_MIDNIGHT = dt.time(0, tzinfo=dt.UTC)
_NOON = dt.time(12, tzinfo=dt.UTC)


# --- the relations -------------------------------------------------------------


def rollup_source(
    builder: SqlBuilder,
    plan: Plan,
    product: str,
    interval: Interval,
    prop: FieldRef | None = None,
    *,
    by_whole_days: bool = False,
) -> Source:
    """The rows of ``plan`` for ``product`` over ``interval``, as a relation with
    the columns a raw query reads (``"timestamp"``, ``name`` or ``user_id``),
    ``prop_value`` (the props plans: ``prop`` as text) and ``events``, the
    number of events each row stands for. ``by_whole_days``: the request may
    read the hourly-props plan's whole UTC days from the daily rows
    (``daily_props_usable``)."""
    p = builder.param(product)
    s = builder.param(interval.start)
    e = builder.param(interval.end)
    by_prop = plan in ("hourly_props", "user_daily_props")
    if plan == "hourly":
        relation = _hourly_relation(p, s, e)
    elif plan == "hourly_props":
        assert prop is not None
        key = builder.param(".".join(prop.path), "text")
        whole_days = whole_utc_days(interval) if by_whole_days else None
        if whole_days is None:
            relation = _hourly_props_relation(p, s, e, key, builder.text_of(prop))
        else:
            first, end = (builder.param(day, "date") for day in whole_days)
            relation = _daily_props_relation(p, s, e, key, builder.text_of(prop), first, end)
    else:
        days = (
            builder.param(interval.start.astimezone(dt.UTC).date(), "date"),
            builder.param(interval.end.astimezone(dt.UTC).date(), "date"),
        )
        if plan == "user_daily_names":
            relation = _user_daily_names_relation(p, s, e, *days)
        elif plan == "user_daily_props":
            assert prop is not None
            key = builder.param(".".join(prop.path), "text")
            relation = _user_daily_props_relation(p, s, e, *days, key, builder.text_of(prop))
        else:
            relation = _user_daily_relation(p, s, e, *days)
    # count(*) of no rows is 0, a sum of none NULL: coalesced, and a bigint as count's.
    return Source(
        "rollup",
        f"({relation}) AS src",
        [],
        "coalesce(sum(events), 0)::bigint",
        prop if by_prop else None,
    )


def _hourly_relation(p: str, s: str, e: str) -> str:
    return (
        "WITH dirty AS ("
        f"SELECT hour FROM rollup_dirty WHERE product = {p} AND hour >= {s} AND hour < {e}) "
        'SELECT r.hour AS "timestamp", r.name, r.events FROM rollup_hourly r '
        f"WHERE r.product = {p} AND r.hour >= {s} AND r.hour < {e} "
        "AND NOT EXISTS (SELECT 1 FROM dirty WHERE dirty.hour = r.hour) "
        'UNION ALL SELECT ev."timestamp", ev.name, 1::bigint FROM dirty '
        f'JOIN events ev ON ev.product = {p} AND ev."timestamp" >= dirty.hour '
        "AND ev.\"timestamp\" < dirty.hour + interval '1 hour'"
    )


def _hourly_props_relation(p: str, s: str, e: str, key: str, raw_value: str) -> str:
    """Rollup rows for the key's clean hours, raw rows for its marked ones; and
    raw rows for the whole range if the key is not (or no longer) rolled up.
    ``raw_value``: the property as text over ``events``, as raw reads group it."""
    return (
        "WITH dirty AS ("
        f"SELECT hour FROM rollup_dirty WHERE product = {p} AND hour >= {s} AND hour < {e}) "
        'SELECT r.hour AS "timestamp", r.name, r.value AS prop_value, r.events '
        "FROM rollup_hourly_props r "
        f"WHERE r.product = {p} AND r.key = {key} AND r.hour >= {s} AND r.hour < {e} "
        "AND NOT EXISTS (SELECT 1 FROM dirty WHERE dirty.hour = r.hour) "
        + _raw_props_rows(p, s, e, key, raw_value)
    )


def _daily_props_relation(
    p: str, s: str, e: str, key: str, raw_value: str, first_day: str, end_day: str
) -> str:
    """As ``_hourly_props_relation``, with the clean UTC days of
    [``first_day``, ``end_day``) (inside [``s``, ``e``)) from ``rollup_daily_props``
    as one row per day, name and value, timed at the day's start: the hours
    outside those days (the partial first and last days, the marked days) are
    read hour by hour, the marked hours raw."""
    day, first, end = utc_day_start("marked.day"), utc_day_start(first_day), utc_day_start(end_day)
    clean_hour = "NOT EXISTS (SELECT 1 FROM dirty WHERE dirty.hour = r.hour)"
    return (
        "WITH dirty AS ("
        f"SELECT hour FROM rollup_dirty WHERE product = {p} AND hour >= {s} AND hour < {e}), "
        "marked AS (SELECT DISTINCT (hour AT TIME ZONE 'UTC')::date AS day FROM dirty) "
        f'SELECT {utc_day_start("r.day")} AS "timestamp", r.name, r.value AS prop_value, '
        "r.events FROM rollup_daily_props r "
        f"WHERE r.product = {p} AND r.key = {key} AND r.day >= {first_day} AND r.day < {end_day} "
        "AND NOT EXISTS (SELECT 1 FROM marked WHERE marked.day = r.day) "
        "UNION ALL SELECT r.hour, r.name, r.value, r.events FROM rollup_hourly_props r "
        f"WHERE r.product = {p} AND r.key = {key} "
        f"AND (r.hour >= {s} AND r.hour < {first} OR r.hour >= {end} AND r.hour < {e}) "
        f"AND {clean_hour} "
        "UNION ALL SELECT r.hour, r.name, r.value, r.events FROM marked "
        f"JOIN rollup_hourly_props r ON r.product = {p} AND r.key = {key} "
        f"AND r.hour >= {day} AND r.hour < {day} + interval '1 day' "
        f"WHERE marked.day >= {first_day} AND marked.day < {end_day} AND {clean_hour} "
        + _raw_props_rows(p, s, e, key, raw_value)
    )


def _raw_props_rows(p: str, s: str, e: str, key: str, raw_value: str) -> str:
    """The props relations' raw rows, as ``UNION ALL`` branches: the marked hours'
    events (the ``dirty`` CTE), and every event of the range if the key is not,
    or no longer, rolled up."""
    declared = key_declared(key)
    return (
        f'UNION ALL SELECT "timestamp", name, {raw_value}, 1::bigint FROM dirty '
        f'JOIN events ON events.product = {p} AND events."timestamp" >= dirty.hour '
        "AND events.\"timestamp\" < dirty.hour + interval '1 hour' "
        f"WHERE {declared} "
        f'UNION ALL SELECT "timestamp", name, {raw_value}, 1::bigint FROM events '
        f'WHERE NOT {declared} AND product = {p} AND "timestamp" >= {s} AND "timestamp" < {e}'
    )


_DAY_START = "({}::timestamp AT TIME ZONE 'UTC')"
# The UTC days of the range with a mark in any of their hours: read raw.
_DIRTY_DAYS = (
    "dirty AS (SELECT DISTINCT (hour AT TIME ZONE 'UTC')::date AS day "
    "FROM rollup_dirty WHERE product = {p} AND hour >= {s} AND hour < {e})"
)


def dirty_days(p: str, s: str, e: str) -> str:
    """The ``dirty`` CTE: the UTC days of product ``p`` with a marked hour in
    ``[s, e)`` (SQL expressions: parameters)."""
    return _DIRTY_DAYS.format(p=p, s=s, e=e)


def utc_day_start(day: str) -> str:
    """The instant a UTC day (a ``date`` SQL expression) starts."""
    return _DAY_START.format(day)


def key_declared(key: str) -> str:
    """True while the property ``key`` (a SQL parameter) is rolled up: the
    statements that read a key's rollup rows check it themselves, so a
    process whose ``ROLLUP_PROPERTIES`` differs still answers exactly."""
    return f"EXISTS (SELECT 1 FROM rollup_property_keys WHERE key = {key})"


def _marked_days_events(p: str, columns: str) -> str:
    """``columns`` of the product's raw events on the marked days (the ``dirty`` CTE)."""
    day = _DAY_START.format("dirty.day")
    return (
        f"SELECT {columns} FROM dirty JOIN events ON events.product = {p} "
        f'AND events."timestamp" >= {day} AND events."timestamp" < {day} + interval \'1 day\''
    )


def _user_daily_relation(p: str, s: str, e: str, start_day: str, end_day: str) -> str:
    """A day with any marked hour is dirty: its users are read raw.

    Events without a user are not in ``rollup_user_daily``; on a clean day they
    are the day's events (from ``rollup_hourly``, exact there too, since none
    of the day's hours is marked) less those with a user.
    """
    day = _DAY_START.format
    return (
        f"WITH {dirty_days(p, s, e)}, "
        "clean AS (SELECT r.day, r.user_id, r.events FROM rollup_user_daily r "
        f"WHERE r.product = {p} AND r.day >= {start_day} AND r.day < {end_day} "
        "AND NOT EXISTS (SELECT 1 FROM dirty WHERE dirty.day = r.day)), "
        "with_user AS (SELECT day, sum(events) AS events FROM clean GROUP BY day), "
        "every AS (SELECT (h.hour AT TIME ZONE 'UTC')::date AS day, sum(h.events) AS events "
        f"FROM rollup_hourly h WHERE h.product = {p} AND h.hour >= {s} AND h.hour < {e} "
        "GROUP BY 1) "
        f'SELECT {day("clean.day")} AS "timestamp", clean.user_id, clean.events FROM clean '
        f"UNION ALL SELECT {day('every.day')}, NULL, "
        "(every.events - coalesce(with_user.events, 0))::bigint "
        "FROM every LEFT JOIN with_user ON with_user.day = every.day "
        "WHERE every.events > coalesce(with_user.events, 0) "
        "AND NOT EXISTS (SELECT 1 FROM dirty WHERE dirty.day = every.day) "
        "UNION ALL " + _marked_days_events(p, 'events."timestamp", events.user_id, 1::bigint')
    )


def _user_daily_names_relation(p: str, s: str, e: str, start_day: str, end_day: str) -> str:
    day = _DAY_START.format
    return (
        f"WITH {dirty_days(p, s, e)} "
        f'SELECT {day("r.day")} AS "timestamp", r.name, r.user_id, r.events '
        f"FROM rollup_user_daily_names r WHERE r.product = {p} "
        f"AND r.day >= {start_day} AND r.day < {end_day} "
        "AND NOT EXISTS (SELECT 1 FROM dirty WHERE dirty.day = r.day) "
        "UNION ALL "
        + _marked_days_events(p, 'events."timestamp", events.name, events.user_id, 1::bigint')
    )


def _user_daily_props_relation(
    p: str, s: str, e: str, start_day: str, end_day: str, key: str, raw_value: str
) -> str:
    """Rollup rows for the key's clean days, raw rows for its marked ones; and
    raw rows for the whole range if the key is not (or no longer) rolled up."""
    day = _DAY_START.format
    declared = key_declared(key)
    return (
        f"WITH {dirty_days(p, s, e)} "
        f'SELECT {day("r.day")} AS "timestamp", r.value AS prop_value, r.user_id, r.events '
        f"FROM rollup_user_daily_props r WHERE r.product = {p} AND r.key = {key} "
        f"AND r.day >= {start_day} AND r.day < {end_day} "
        "AND NOT EXISTS (SELECT 1 FROM dirty WHERE dirty.day = r.day) "
        "UNION ALL "
        + _marked_days_events(p, f'events."timestamp", {raw_value}, events.user_id, 1::bigint')
        + f" WHERE {declared} "
        f'UNION ALL SELECT "timestamp", {raw_value}, user_id, 1::bigint FROM events '
        f'WHERE NOT {declared} AND product = {p} AND "timestamp" >= {s} AND "timestamp" < {e}'
    )


def user_period_series(
    builder: SqlBuilder,
    product: str,
    interval: Interval,
    granularity: Granularity,
    series: tuple[str, str, str],
) -> str:
    """Every period of the series (``first``, ``last``, ``step``: timestamps at UTC
    and an interval) with its distinct users over the part of it in ``interval``,
    as ``d0``, ``m0`` and ``total_rows``, the columns of a filled series.

    The count of a period wholly inside the range and unmarked is its
    ``rollup_users`` row's (exact: ``storage.rollups``); the subquery counting
    any other period runs only for those (a CASE branch is evaluated only when
    taken), over its clean days' ``rollup_user_daily`` rows and its marked
    days' raw events. Marks are looked up within the range only: a period
    taken whole lies inside it.
    """
    first, last, step = series
    p = builder.param(product)
    s = builder.param(interval.start)
    e = builder.param(interval.end)
    start_day = builder.param(interval.start.astimezone(dt.UTC).date(), "date")
    end_day = builder.param(interval.end.astimezone(dt.UTC).date(), "date")
    period = builder.param(granularity, "text")
    period_start = "series.d0::date"
    period_end = f"(series.d0 + {step})::date"
    lo, hi = f"greatest({period_start}, {start_day})", f"least({period_end}, {end_day})"
    counted = (
        "(SELECT count(DISTINCT x.user_id) FROM ("
        f"SELECT r.user_id FROM rollup_user_daily r WHERE r.product = {p} "
        f"AND r.day >= {lo} AND r.day < {hi} "
        "AND NOT EXISTS (SELECT 1 FROM dirty WHERE dirty.day = r.day) "
        "UNION ALL "
        + _marked_days_events(p, "events.user_id")
        + f" WHERE dirty.day >= {lo} AND dirty.day < {hi}) AS x)"
    )
    return (
        f"WITH {dirty_days(p, s, e)}, "
        f"series AS (SELECT generate_series({first}, {last}, {step}) AS d0) "
        f"SELECT series.d0, CASE WHEN u.users IS NOT NULL THEN u.users ELSE {counted} END AS m0, "
        "count(*) OVER () AS total_rows FROM series "
        f"LEFT JOIN rollup_users u ON u.product = {p} AND u.period = {period} "
        f"AND u.start = {period_start} AND {period_start} >= {start_day} "
        f"AND {period_end} <= {end_day} "
        "AND NOT EXISTS (SELECT 1 FROM dirty "
        f"WHERE dirty.day >= {period_start} AND dirty.day < {period_end})"
    )


__all__ = [
    "Plan",
    "Source",
    "choose_plan",
    "dirty_days",
    "hourly_eligible",
    "key_declared",
    "offsets_whole_hours",
    "rollup_source",
    "user_daily_eligible",
    "user_daily_names_eligible",
    "user_daily_props_eligible",
    "user_period_series",
    "users_by_period",
    "utc_day_start",
]
