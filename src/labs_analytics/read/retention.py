"""``POST /v1/retention``: of the users who started in a period, how many came back later.

::

    {"start_event": {"name": "signup"}, "return_event": {"name": "club.view"},
     "period": "week", "periods": 8, "date_range": "90d", "timezone": "America/New_York"}

Exactly (the README says the same):

- Only events with a user take part.
- A user's cohort is the local period (day, ISO week from Monday, or month in
  ``timezone``) of their earliest ``start_event`` inside ``date_range``; each
  user is in one cohort.
- At offset k (0..``periods``) the cohort's users who did a ``return_event``
  (any event when it is not given) strictly after that first start event and
  inside the cohort's period + k. The start event itself never counts as its
  own return, so offset 0 is "came back later in the same period". Returns may
  fall after the range ends.
- An offset whose period starts after the moment the request was answered
  (``meta.as_of``) is ``null``, not 0; the period holding that moment counts
  what has happened so far. Cohorts without users are left out.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from labs_analytics.auth.keys import ApiKey
from labs_analytics.errors import AppError
from labs_analytics.read.dates import Interval
from labs_analytics.read.funnels import AnalysisRequest, EventMatch, match_conditions
from labs_analytics.read.service import ReadService
from labs_analytics.read.sql import SqlBuilder

Period = Literal["day", "week", "month"]
MAX_PERIODS = 52
MAX_COHORTS = 1_000

# How far the cohort of a return is (in periods), from two local period starts.
_OFFSET = {
    "day": "(returned::date - cohort::date)",
    "week": "(returned::date - cohort::date) / 7",
    "month": "((extract(year FROM returned) - extract(year FROM cohort)) * 12 "
    "+ extract(month FROM returned) - extract(month FROM cohort))::int",
}
_PERIODS_LATER = {"day": "days", "week": "weeks", "month": "months"}


class TooManyCohorts(AppError):
    status_code = 422
    code = "invalid_request"


class RetentionRequest(AnalysisRequest):
    """The body of ``POST /v1/retention``."""

    start_event: EventMatch = Field(
        description="What puts a user in a cohort: its first occurrence in the range.",
        examples=[{"name": "signup"}],
    )
    return_event: EventMatch | None = Field(
        default=None,
        description="What counts as coming back; default: any event of the user.",
        examples=[{"name": "club.view"}],
    )
    period: Period = Field(
        default="week", description="`day`, `week` (ISO, from Monday) or `month`, local."
    )
    periods: int = Field(
        default=8,
        ge=1,
        le=MAX_PERIODS,
        description="N: the answer has offsets 0 to N (N + 1 columns).",
    )


@dataclass(frozen=True, slots=True)
class CompiledRetention:
    sql: str
    args: list[Any]


def compile_retention(
    request: RetentionRequest, *, product: str, interval: Interval, now: dt.datetime
) -> CompiledRetention:
    """One statement: one row per (cohort, offset), the first ``MAX_COHORTS + 1`` cohorts."""
    builder = SqlBuilder()
    start, end = builder.param(interval.start), builder.param(interval.end)
    zone, period = builder.param(request.timezone), builder.param(request.period)
    periods = builder.param(request.periods, "int")
    starts = " AND ".join(match_conditions(builder, request.start_event, product))
    returns = " AND ".join(match_conditions(builder, request.return_event, product))
    # The last cohort starts before the range ends, and its last offset ends N + 1
    # periods later; two days more cover any time zone's offset and DST.
    later = _PERIODS_LATER[request.period]
    horizon = f"{end} + make_interval({later} => {periods} + 1) + make_interval(days => 2)"
    sql = (
        'WITH starts AS (SELECT user_id, min("timestamp") AS first_at FROM events '
        f'WHERE {starts} AND "timestamp" >= {start} AND "timestamp" < {end} GROUP BY user_id), '
        "cohorts AS (SELECT user_id, first_at, "
        f"date_trunc({period}, first_at AT TIME ZONE {zone}) AS cohort FROM starts), "
        # More than MAX_COHORTS is refused; counting one past it is enough to know.
        "sizes AS (SELECT cohort, count(*) AS size FROM cohorts GROUP BY cohort "
        f"ORDER BY cohort LIMIT {builder.param(MAX_COHORTS + 1)}), "
        # The return's events in a subquery of their own: its filters name bare columns.
        "returns AS (SELECT cohorts.cohort, cohorts.user_id, "
        f"date_trunc({period}, e.at AT TIME ZONE {zone}) AS returned FROM cohorts "
        f'JOIN (SELECT user_id, "timestamp" AS at FROM events WHERE {returns} '
        f'AND "timestamp" > {start} AND "timestamp" < {horizon}) AS e '
        "ON e.user_id = cohorts.user_id AND e.at > cohorts.first_at), "
        f"retained AS (SELECT cohort, {_OFFSET[request.period]} AS k, "
        "count(DISTINCT user_id) AS users FROM returns "
        f"WHERE returned < cohort + make_interval({later} => {periods} + 1) GROUP BY 1, 2) "
        "SELECT sizes.cohort, sizes.size, offsets.k, coalesce(retained.users, 0) AS users, "
        # Local calendar arithmetic, then the instant that local time is in the zone.
        f"(sizes.cohort + make_interval({later} => offsets.k)) AT TIME ZONE {zone} "
        f"> {builder.param(now)} AS future "
        f"FROM sizes CROSS JOIN generate_series(0, {periods}) AS offsets(k) "
        "LEFT JOIN retained ON retained.cohort = sizes.cohort AND retained.k = offsets.k "
        "ORDER BY sizes.cohort, offsets.k"
    )
    return CompiledRetention(sql, builder.args)


def shape_retention(rows: list[Any]) -> list[dict[str, Any]]:
    """One entry per cohort: its size, and users and percent per offset (null: future)."""
    cohorts: dict[dt.datetime, dict[str, Any]] = {}
    for row in rows:
        cohort = cohorts.setdefault(
            row["cohort"],
            {
                "cohort": row["cohort"].date().isoformat(),
                "size": row["size"],
                "users": [],
                "percent": [],
            },
        )
        users = None if row["future"] else row["users"]
        cohort["users"].append(users)
        cohort["percent"].append(None if users is None else 100 * users / row["size"])
    if len(cohorts) > MAX_COHORTS:
        raise TooManyCohorts(
            f"the range holds more than {MAX_COHORTS} cohorts: narrow date_range "
            "or use a longer period",
            details=[{"field": "body.date_range", "message": "too many cohorts"}],
        )
    return list(cohorts.values())


async def run_retention(
    reads: ReadService, key: ApiKey, request: RetentionRequest
) -> dict[str, Any]:
    """The answer to ``request`` for the product ``key`` may read."""
    reads.admit(key)
    product = reads.product_for(key, request.product)
    started = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    interval = request.interval(now)
    compiled = compile_retention(request, product=product, interval=interval, now=now)
    cohorts = shape_retention(await reads.fetch(compiled.sql, compiled.args))
    return {
        "cohorts": cohorts,
        "meta": {
            "date_range": [interval.start.isoformat(), interval.end.isoformat()],
            "period": request.period,
            "periods": request.periods,
            "as_of": now.isoformat(),
            "took_ms": round((time.monotonic() - started) * 1000, 1),
        },
    }
