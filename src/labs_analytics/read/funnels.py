"""``POST /v1/funnels``: how many users went through ordered steps, in one SQL statement.

::

    {"steps": [{"name": "club.view"},
               {"name": "club.apply", "filters": [["is", "prop:source", ["web"]]]}],
     "window": "7d", "date_range": "30d", "timezone": "America/New_York",
     "breakdown": "prop:utm.source"}

Which events pair up, exactly (the README says the same):

- Only events with a user take part; each user goes through the funnel once.
- Entry: the user's earliest step-1 event inside ``date_range`` (ties on the
  timestamp broken by the smaller event id). The breakdown value is read from
  that event.
- Step k (k ≥ 2): the user's earliest step-k event strictly after the time of
  step k - 1 and at most ``window`` after the entry. It may fall after the
  range ends. Earliest is the greedy choice, and it is also the one that lets a
  user reach the most steps: any later choice leaves less time for the rest.
- ``median_seconds_from_previous``: over the users who reached step k, the
  median of (time of step k - time of step k - 1), the two middle values
  averaged when their number is even; exact to the microsecond.

The request model and the shared pieces (``EventMatch``, ``AnalysisRequest``,
``match_conditions``) are used by ``read/retention.py`` too.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator

from labs_analytics.auth.keys import ApiKey
from labs_analytics.events import EventName
from labs_analytics.read.dates import Interval, resolve
from labs_analytics.read.fields import parse_field
from labs_analytics.read.request import (
    MAX_FILTERS,
    Filter,
    check_date_range,
    check_timezone,
    parse_filter,
)
from labs_analytics.read.service import ReadService
from labs_analytics.read.sql import SqlBuilder

MIN_STEPS = 2
MAX_STEPS = 8
MAX_WINDOW_SECONDS = 90 * 86_400
MAX_BREAKDOWN_GROUPS = 1_000
WINDOW_PATTERN = r"^[0-9]{1,8}[smhd]$"
_WINDOW = re.compile(WINDOW_PATTERN)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
# A dotted key, as /v1/query's patterns spell it.
_KEY = r"[^.\x00-\x1f]{1,128}(\.[^.\x00-\x1f]{1,128}){0,7}"
BREAKDOWN_PATTERN = rf"^(prop|context):{_KEY}$"


class EventMatch(BaseModel):
    """Which events a step (or a retention event) is: a name, and filters on top of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: EventName = Field(description="The event's name.", examples=["club.view"])
    filters: Annotated[list[Any], Field(max_length=MAX_FILTERS)] = Field(
        default_factory=list,
        description="`[operator, field, [values]]`, all combined with AND, as in /v1/query.",
    )

    @field_validator("filters")
    @classmethod
    def _filters(cls, value: list[Any]) -> list[Any]:
        for raw in value:
            parse_filter(raw)
        return value

    def parsed_filters(self) -> list[Filter]:
        return [parse_filter(raw) for raw in self.filters]


class AnalysisRequest(BaseModel):
    """What every analysis shares with /v1/query: the range, its time zone, the product."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    date_range: str | list[str] = Field(
        default="30d",
        description="As in /v1/query: `today`, `yesterday`, `Nd`, `month`, `year`, `all`, or "
        "`[start, end]` as dates (the end day included) or RFC 3339 instants.",
    )
    timezone: str = Field(default="UTC", description="An IANA time zone, e.g. America/New_York.")
    product: str | None = Field(
        default=None, description="Another product's name: `admin` keys only."
    )

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("date_range")
    @classmethod
    def _date_range(cls, value: str | list[str]) -> str | list[str]:
        return check_date_range(value)

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def interval(self, now: dt.datetime) -> Interval:
        return resolve(self.date_range, self.zone(), now)


def window_seconds(value: str | int) -> int:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"90s"`` or a number of seconds, as seconds."""
    if isinstance(value, str):
        match = _WINDOW.fullmatch(value)
        if match is None:
            raise ValueError("a window is Ns, Nm, Nh, Nd (e.g. 7d) or a number of seconds")
        seconds = int(value[:-1]) * _UNIT_SECONDS[value[-1]]
    else:
        seconds = value
    if not 1 <= seconds <= MAX_WINDOW_SECONDS:
        raise ValueError(f"a window is 1 second to {MAX_WINDOW_SECONDS // 86_400} days")
    return seconds


class FunnelRequest(AnalysisRequest):
    """The body of ``POST /v1/funnels``."""

    steps: Annotated[list[EventMatch], Field(min_length=MIN_STEPS, max_length=MAX_STEPS)] = Field(
        description="2 to 8 steps, in order.",
        examples=[[{"name": "club.view"}, {"name": "club.apply"}]],
    )
    window: (
        Annotated[str, Field(json_schema_extra={"pattern": WINDOW_PATTERN})]
        | Annotated[int, Field(ge=1, le=MAX_WINDOW_SECONDS, strict=True)]
    ) = Field(
        default="7d",
        json_schema_extra={"examples": ["7d", 3600]},
        description="How long after step 1 the last step may happen: `Ns`, `Nm`, `Nh`, `Nd` "
        f"or seconds; 1 s to {MAX_WINDOW_SECONDS // 86_400} days. Default 7 days.",
    )
    breakdown: Annotated[str, Field(json_schema_extra={"pattern": BREAKDOWN_PATTERN})] | None = (
        Field(
            default=None,
            description="`prop:KEY` or `context:KEY`: the answer per value of it on the user's "
            "step-1 event (as text; null where the event lacks it).",
        )
    )
    breakdown_limit: int = Field(
        default=100,
        ge=1,
        le=MAX_BREAKDOWN_GROUPS,
        description="At most this many breakdown values, those with most users at step 1 first.",
    )

    @field_validator("window")
    @classmethod
    def _window(cls, value: str | int) -> str | int:
        window_seconds(value)
        return value

    @field_validator("breakdown")
    @classmethod
    def _breakdown(cls, value: str | None) -> str | None:
        if value is not None and not parse_field(value).is_json:
            raise ValueError("a breakdown is prop:KEY or context:KEY")
        return value


# --- SQL


def match_conditions(builder: SqlBuilder, match: EventMatch | None, product: str) -> list[str]:
    """Conditions on ``events`` for ``match`` (``None``: any event) by users of ``product``."""
    conditions = [f"product = {builder.param(product)}", "user_id IS NOT NULL"]
    if match is not None:
        conditions.append(f"name = {builder.param(match.name)}")
        conditions += [builder.condition(flt) for flt in match.parsed_filters()]
    return conditions


@dataclass(frozen=True, slots=True)
class CompiledFunnel:
    sql: str
    args: list[Any]


def _median(value: str) -> str:
    # The lower middle by nearest rank, and the lower middle from the other end (the
    # upper middle): averaged, the exact median of numeric values, odd counts or even.
    return (
        f"(percentile_disc(0.5) WITHIN GROUP (ORDER BY {value}) "
        f"+ percentile_disc(0.5) WITHIN GROUP (ORDER BY {value} DESC)) / 2"
    )


def compile_funnel(request: FunnelRequest, *, product: str, interval: Interval) -> CompiledFunnel:
    """One statement: a CTE per step, each the earliest next event of the users of the last."""
    builder = SqlBuilder()
    start, end = builder.param(interval.start), builder.param(interval.end)
    # Seconds, not days: an interval of days would follow the session's time zone over DST.
    seconds = builder.param(float(window_seconds(request.window)), "double precision")
    window = f"make_interval(secs => {seconds})"
    breakdown = (
        builder.text_of(parse_field(request.breakdown)) if request.breakdown else "NULL::text"
    )
    first = " AND ".join(match_conditions(builder, request.steps[0], product))
    ctes = [
        # DISTINCT ON keeps the first row per user in this order: the entry event.
        f'step1 AS (SELECT DISTINCT ON (user_id) user_id, "timestamp" AS at, '
        f'"timestamp" + {window} AS deadline, {breakdown} AS breakdown FROM events '
        f'WHERE {first} AND "timestamp" >= {start} AND "timestamp" < {end} '
        'ORDER BY user_id, "timestamp", event_id)'
    ]
    for number, step in enumerate(request.steps[1:], start=2):
        where = " AND ".join(match_conditions(builder, step, product))
        # The step's events in a subquery of their own: its filters name bare columns.
        # The time bounds are implied by the join; spelled out, they prune partitions.
        ctes.append(
            f"step{number} AS (SELECT previous.user_id, previous.deadline, min(e.at) AS at "
            f'FROM step{number - 1} AS previous JOIN (SELECT user_id, "timestamp" AS at '
            f'FROM events WHERE {where} AND "timestamp" > {start} '
            f'AND "timestamp" < {end} + {window}) AS e '
            "ON e.user_id = previous.user_id AND e.at > previous.at "
            "AND e.at <= previous.deadline GROUP BY previous.user_id, previous.deadline)"
        )
    count = len(request.steps)
    joins = " ".join(f"LEFT JOIN step{k} USING (user_id)" for k in range(2, count + 1))
    times = ", ".join(f"step{k}.at AS t{k}" for k in range(2, count + 1))
    gaps = ", ".join(
        f"extract(epoch FROM t{k}) - extract(epoch FROM t{k - 1}) AS d{k}"
        for k in range(2, count + 1)
    )
    ctes.append(f"paths AS (SELECT step1.breakdown, step1.at AS t1, {times} FROM step1 {joins})")
    ctes.append(f"spans AS (SELECT *, {gaps} FROM paths)")
    aggregates = ", ".join(
        ["count(t1) AS u1"]
        + [f"count(t{k}) AS u{k}, {_median(f'd{k}')} AS m{k}" for k in range(2, count + 1)]
    )
    if request.breakdown is None:
        select = f"SELECT true AS overall, NULL::text AS breakdown, {aggregates} FROM spans"
    else:
        limit = builder.param(request.breakdown_limit)
        # One row for everyone, one per value; values by users at step 1, then byte order.
        select = (
            "SELECT * FROM (SELECT GROUPING(breakdown) = 1 AS overall, breakdown, "
            f"{aggregates}, count(*) OVER (PARTITION BY GROUPING(breakdown)) AS groups, "
            "row_number() OVER (PARTITION BY GROUPING(breakdown) "
            'ORDER BY count(*) DESC, breakdown COLLATE "C" ASC NULLS LAST) AS rank '
            "FROM spans GROUP BY GROUPING SETS ((), (breakdown))) AS grouped "
            f"WHERE rank <= {limit} ORDER BY overall DESC, rank"
        )
    return CompiledFunnel(f"WITH {', '.join(ctes)} {select}", builder.args)


# --- the answer


def _seconds(value: Decimal | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else float(value)


def _steps(request: FunnelRequest, row: Any) -> list[dict[str, Any]]:
    users = [row[f"u{k}"] if row else 0 for k in range(1, len(request.steps) + 1)]
    answer = []
    for index, step in enumerate(request.steps):
        previous = users[index - 1] if index else users[0]
        answer.append(
            {
                "step": index + 1,
                "name": step.name,
                "users": users[index],
                # Ratios of counts; null where nobody could have converted.
                "conversion_from_first": users[index] / users[0] if users[0] else None,
                "conversion_from_previous": users[index] / previous if previous else None,
                "median_seconds_from_previous": _seconds(row[f"m{index + 1}"])
                if index and row
                else None,
            }
        )
    return answer


def shape_funnel(request: FunnelRequest, rows: list[Any]) -> dict[str, Any]:
    """``steps`` for everyone, and ``breakdown`` per value (``None`` when not asked)."""
    overall = next((row for row in rows if row["overall"]), None)
    groups = [row for row in rows if not row["overall"]]
    return {
        "steps": _steps(request, overall),
        "breakdown": None
        if request.breakdown is None
        else [{"value": row["breakdown"], "steps": _steps(request, row)} for row in groups],
        "breakdown_groups": groups[0]["groups"] if groups else 0,
    }


async def run_funnel(reads: ReadService, key: ApiKey, request: FunnelRequest) -> dict[str, Any]:
    """The answer to ``request`` for the product ``key`` may read."""
    reads.admit(key)
    product = reads.product_for(key, request.product)
    started = time.monotonic()
    interval = request.interval(dt.datetime.now(dt.UTC))
    compiled = compile_funnel(request, product=product, interval=interval)
    shaped = shape_funnel(request, await reads.fetch(compiled.sql, compiled.args))
    return {
        "steps": shaped["steps"],
        "breakdown": shaped["breakdown"],
        "meta": {
            "date_range": [interval.start.isoformat(), interval.end.isoformat()],
            "window_seconds": window_seconds(request.window),
            "breakdown": request.breakdown,
            "breakdown_groups": shaped["breakdown_groups"] if request.breakdown else None,
            "took_ms": round((time.monotonic() - started) * 1000, 1),
        },
    }
