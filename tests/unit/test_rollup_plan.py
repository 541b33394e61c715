"""Which requests the rollups answer: only those whose every number sums exactly from them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from labs_analytics.read.request import QueryRequest
from labs_analytics.read.rollup_plan import choose_plan, users_by_period

NOW = dt.datetime(2026, 11, 27, 15, 30, tzinfo=dt.UTC)
DAYS = ["2026-10-26", "2026-11-08"]


def plan(**body: Any) -> str:
    request = QueryRequest.model_validate({"date_range": DAYS, **body})
    return choose_plan(request, request.interval(NOW))


@pytest.mark.parametrize(
    "body",
    [
        {"metrics": ["events"]},
        {"metrics": ["events"], "dimensions": ["time:hour"], "timezone": "America/New_York"},
        {"metrics": ["events"], "dimensions": ["time:day", "name"], "timezone": "Europe/Paris"},
        {"metrics": ["events"], "dimensions": ["time:month"], "date_range": "all"},
        {"metrics": ["events"], "date_range": "7d", "timezone": "America/New_York"},
        {"metrics": ["events"], "filters": [["is", "name", ["a"]], ["gt", "name", ["b"]]]},
        {"metrics": ["events"], "filters": [["contains", "name", ["a"]], ["exists", "name"]]},
        {"metrics": ["events"], "date_range": ["2026-11-01T05:00:00Z", "2026-11-02T13:00:00Z"]},
        # Caracas was at -4:30 until May 2016; whole hours since.
        {
            "metrics": ["events"],
            "timezone": "America/Caracas",
            "date_range": ["2017-01-01", "2017-02-01"],
        },
    ],
)
def test_event_counts_by_time_and_name_come_from_the_hourly_rollup(body: dict[str, Any]) -> None:
    assert plan(**body) == "hourly"


@pytest.mark.parametrize(
    "body",
    [
        {"metrics": ["events", "users"]},
        {"metrics": ["users"], "dimensions": ["time:week"]},
        {"metrics": ["users", "events"], "dimensions": ["time:month", "user"], "date_range": "all"},
        {"metrics": ["events"], "dimensions": ["user"], "timezone": "Etc/UTC"},
        {"metrics": ["users"], "date_range": "30d"},
    ],
)
def test_users_by_utc_day_come_from_the_user_daily_rollup(body: dict[str, Any]) -> None:
    assert plan(**body) == "user_daily"


@pytest.mark.parametrize(
    "body",
    [
        {"metrics": ["users"], "dimensions": ["name"]},
        {
            "metrics": ["events", "users"],
            "dimensions": ["name"],
            "order_by": [["events", "desc"]],
            "limit": 10,
            "date_range": "30d",
        },
        {"metrics": ["users"], "filters": [["is", "name", ["a"]]]},
        {
            "metrics": ["users", "events"],
            "dimensions": ["time:week", "name", "user"],
            "filters": [["contains", "name", ["a"]]],
        },
    ],
)
def test_users_by_name_come_from_the_user_daily_names_rollup(body: dict[str, Any]) -> None:
    assert plan(**body) == "user_daily_names"


def test_users_by_a_rolled_up_value_come_from_the_user_daily_props_rollup() -> None:
    def props_plan(**body: Any) -> str:
        request = QueryRequest.model_validate({"date_range": DAYS, **body})
        return choose_plan(request, request.interval(NOW), ("route", "a.b"))

    users_by = {"metrics": ["events", "users"], "date_range": "30d"}
    assert props_plan(**users_by, dimensions=["prop:route"]) == "user_daily_props"
    assert props_plan(**users_by, dimensions=["time:day", "prop:a.b"]) == "user_daily_props"
    # Events alone: the hourly rollup of the key, which has fewer rows to sum.
    assert props_plan(metrics=["events"], dimensions=["prop:route"]) == "hourly_props"
    # Not rolled up, with a name or a filter, two properties, or a day that is not UTC's.
    assert props_plan(**users_by, dimensions=["prop:other"]) == "raw"
    assert props_plan(**users_by, dimensions=["prop:route", "name"]) == "raw"
    assert props_plan(**users_by, dimensions=["prop:route", "prop:a.b"]) == "raw"
    assert (
        props_plan(**users_by, dimensions=["prop:route"], filters=[["is", "name", ["a"]]]) == "raw"
    )
    assert props_plan(**users_by, dimensions=["prop:route"], timezone="America/New_York") == "raw"


@pytest.mark.parametrize(
    "body",
    [
        {"metrics": ["events", "p95:duration_ms"]},
        {"metrics": ["sum:duration_ms"]},
        {"metrics": ["events"], "dimensions": ["prop:route"]},
        {"metrics": ["events"], "filters": [["is", "prop:route", ["/"]]]},
        {"metrics": ["events"], "filters": [["is", "user", ["u1"]]]},
        {"metrics": ["events"], "dimensions": ["time:day"], "timezone": "Asia/Kolkata"},
        {"metrics": ["events"], "timezone": "Australia/Lord_Howe"},  # +10:30 half the year
        {
            "metrics": ["events"],
            "timezone": "America/Caracas",
            "date_range": ["2016-06-01", "2016-07-01"],
        },
        {"metrics": ["events"], "date_range": ["2026-11-01T05:30:00Z", "2026-11-02T13:00:00Z"]},
        {"metrics": ["users"], "dimensions": ["time:day"], "timezone": "America/New_York"},
        {"metrics": ["users"], "timezone": "Europe/London"},  # +1 in summer
        {"metrics": ["users"], "dimensions": ["time:hour"]},
        {"metrics": ["users"], "dimensions": ["name", "time:hour"]},
        {"metrics": ["users"], "dimensions": ["name"], "timezone": "America/New_York"},
        {"metrics": ["users"], "dimensions": ["name"], "filters": [["is", "user", ["u1"]]]},
        {"metrics": ["users"], "dimensions": ["prop:route"]},  # not rolled up (no keys here)
        {"metrics": ["users"], "date_range": ["2026-11-01T05:00:00Z", "2026-11-02T00:00:00Z"]},
        {"metrics": ["events"], "date_range": ["1970-01-01", "2300-01-01"]},  # too long to check
    ],
)
def test_anything_else_is_read_raw(body: dict[str, Any]) -> None:
    assert plan(**body) == "raw"


def period(fill_from: bool = True, **body: Any) -> str | None:
    request = QueryRequest.model_validate({"date_range": DAYS, **body})
    return users_by_period(
        request, choose_plan(request, request.interval(NOW)), fill_from=fill_from
    )


@pytest.mark.parametrize("granularity", ["day", "week", "month"])
def test_users_alone_by_day_week_or_month_are_counted_per_period(granularity: str) -> None:
    assert period(metrics=["users"], dimensions=[f"time:{granularity}"]) == granularity
    assert period(metrics=["users"], dimensions=[f"time:{granularity}"], date_range="30d")


@pytest.mark.parametrize(
    ("body", "fill_from"),
    [
        ({"metrics": ["events", "users"], "dimensions": ["time:week"]}, True),  # events: all rows
        ({"metrics": ["users"]}, True),  # the range is no period
        ({"metrics": ["users"], "dimensions": ["time:week", "user"]}, True),
        ({"metrics": ["users"], "dimensions": ["user"]}, True),
        ({"metrics": ["users"], "dimensions": ["time:hour"]}, True),
        ({"metrics": ["users"], "dimensions": ["time:month"], "date_range": "all"}, False),
        ({"metrics": ["users"], "dimensions": ["time:week"], "timezone": "Europe/Paris"}, True),
        ({"metrics": ["users"], "dimensions": ["time:day"], "filters": [["exists", "name"]]}, True),
    ],
)
def test_anything_else_in_the_user_daily_plan_counts_users_from_its_rows(
    body: dict[str, Any], fill_from: bool
) -> None:
    assert period(fill_from, **body) is None
