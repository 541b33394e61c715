"""Date ranges and time buckets, in the request's time zone.

A range is resolved once, at the moment the request arrives, into a
half-open interval of instants ``[start, end)``. Calendar words (``today``,
``7d``, ``month``) are whole local days ending with today; dates given as
``YYYY-MM-DD`` are whole local days, the end date included; RFC 3339 instants
are taken as they are.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

Granularity = Literal["hour", "day", "week", "month"]
RELATIVE_RANGES = ("today", "yesterday", "7d", "30d", "90d", "month", "year", "all")
_DAYS = re.compile(r"^([0-9]{1,4})d$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
# The earliest instant a range may start at (the contract's earliest timestamp).
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MAX_BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class Interval:
    start: dt.datetime  # inclusive, aware
    end: dt.datetime  # exclusive, aware


def _local_midnight(day: dt.date, zone: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=zone)


def resolve(value: str | list[str], zone: ZoneInfo, now: dt.datetime) -> Interval:
    """``value`` as ``[start, end)``; ``ValueError`` if it is not a range we know."""
    today = now.astimezone(zone).date()
    tomorrow = _local_midnight(today + dt.timedelta(1), zone)
    if isinstance(value, list):
        return _explicit(value, zone)
    if value == "today":
        return Interval(_local_midnight(today, zone), tomorrow)
    if value == "yesterday":
        yesterday = today - dt.timedelta(1)
        return Interval(_local_midnight(yesterday, zone), _local_midnight(today, zone))
    if value == "month":
        first = today.replace(day=1)
        return Interval(_local_midnight(first, zone), tomorrow)
    if value == "year":
        first = today.replace(month=1, day=1)
        return Interval(_local_midnight(first, zone), tomorrow)
    if value == "all":
        return Interval(EPOCH, _local_midnight(today + dt.timedelta(2), zone))
    match = _DAYS.match(value)
    if match and 1 <= int(match.group(1)) <= 3660:
        days = int(match.group(1))
        first = today - dt.timedelta(days - 1)
        return Interval(_local_midnight(first, zone), tomorrow)
    raise ValueError(
        f"unknown date_range {value[:40]!r}: use {', '.join(RELATIVE_RANGES)}, "
        "Nd (1 to 3660 days) or [start, end]"
    )


def _explicit(bounds: list[str], zone: ZoneInfo) -> Interval:
    if len(bounds) != 2:
        raise ValueError("a date_range list is [start, end]")
    start = _bound(bounds[0], zone, end=False)
    end = _bound(bounds[1], zone, end=True)
    if not start < end:
        raise ValueError("date_range must end after it starts")
    if start < EPOCH:
        raise ValueError("date_range must not start before 1970-01-01")
    return Interval(start, end)


def _bound(text: str, zone: ZoneInfo, *, end: bool) -> dt.datetime:
    if _DATE.match(text):
        day = dt.date.fromisoformat(text)
        return _local_midnight(day + dt.timedelta(1) if end else day, zone)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text[:40]!r} is neither a date (YYYY-MM-DD) nor an RFC 3339 date-time"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{text[:40]!r} needs an offset (Z or ±HH:MM), or give a date")
    return moment


def truncate(moment: dt.datetime, granularity: Granularity, zone: ZoneInfo) -> dt.datetime:
    """The start of the local bucket holding ``moment`` (naive, local wall time)."""
    local = moment.astimezone(zone).replace(tzinfo=None)
    if granularity == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if granularity == "day":
        return day
    if granularity == "week":  # ISO weeks start on Monday, as PostgreSQL's date_trunc
        return day - dt.timedelta(days=day.weekday())
    return day.replace(day=1)


def buckets(interval: Interval, granularity: Granularity, zone: ZoneInfo) -> Iterator[dt.datetime]:
    """Every local bucket start from the one holding ``start`` to the one before ``end``."""
    current = truncate(interval.start, granularity, zone)
    last = truncate(interval.end - dt.timedelta(microseconds=1), granularity, zone)
    count = 0
    while current <= last:
        yield current
        count += 1
        if count > MAX_BUCKETS:
            raise ValueError(f"more than {MAX_BUCKETS} time buckets: use a coarser one")
        current = _next(current, granularity)


def _next(bucket: dt.datetime, granularity: Granularity) -> dt.datetime:
    if granularity == "hour":
        return bucket + dt.timedelta(hours=1)
    if granularity == "day":
        return bucket + dt.timedelta(days=1)
    if granularity == "week":
        return bucket + dt.timedelta(weeks=1)
    year, month = (bucket.year + 1, 1) if bucket.month == 12 else (bucket.year, bucket.month + 1)
    return bucket.replace(year=year, month=month)


def label(bucket: dt.datetime, granularity: Granularity) -> str:
    """How a bucket is written in an answer: a date, or a local date-time for hours."""
    if granularity == "hour":
        return bucket.strftime("%Y-%m-%dT%H:00")
    return bucket.date().isoformat()
