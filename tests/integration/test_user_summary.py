"""``GET /v1/users/{user}/summary`` against a brute-force computation in plain Python.

The data has what makes the definitions matter: events in the hour New York
repeats when clocks go back (and around the hour it skips in spring), a
streak of days across a month boundary, and a user whose busiest weekdays,
hours, names, values and streaks tie. The reference below shares no code
with ``read/summary.py``: it counts the stored rows one by one.

Ties, as documented: the earliest weekday (Monday first) and hour, the
earliest streak, names and values in byte order.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from labs_analytics.auth.keys import Scope
from tests.helpers import ApiFactory, RunningApi, create_key
from tests.integration.test_query import store, stored_rows
from tests.read_reference import MISSING, _field_value

ZONES = ("UTC", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe")
WEIRD_USER = "ü/ser %2F 'x'\nOR 1=1 -- ?a=b#c"  # slashes, a line break, quotes
USERS = ("alice", "bob", WEIRD_USER, "tie", "nobody")
TOP = ("prop:club", "prop:color", "context:app.version")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
UTC = dt.UTC


def _row(
    moment: dt.datetime,
    user: str | None,
    name: str,
    properties: dict[str, Any] | None = None,
    product: str = "clubs",
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "timestamp": moment,
        "event_id": uuid.uuid4(),
        "product": product,
        "name": name,
        "user_id": user,
        "properties": properties or {},
        "context": context,
    }


def generate_rows(seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    clubs = ["pennlabs", "ascend", "wharton", "ü-club", 7, True, None, {"id": 3}]
    for user in ("alice", "bob", WEIRD_USER):
        for _ in range(150):
            # March to December, on multiples of 3: no streak of their own longer than
            # two days, and none touching January's.
            day = dt.date(2026, rng.randint(3, 12), rng.choice([3, 6, 9, 12, 15, 18, 21, 24, 27]))
            moment = dt.datetime.combine(day, dt.time(), UTC) + dt.timedelta(
                seconds=rng.randint(0, 86_399)
            )
            properties: dict[str, Any] = {"club": rng.choice(clubs)}
            if rng.random() < 0.7:
                properties["color"] = rng.choice(["red", "blue", "green"])
            context = (
                {"app": {"version": rng.choice(["1.0", "1.1"])}} if rng.random() < 0.5 else None
            )
            name = rng.choice(["club.view", "club.apply", "search", "page.view"])
            rows.append(_row(moment, user, name, properties, context=context))
    # Alice: twelve days in a row across the end of January, at noon UTC (the same
    # local day in every zone tested, or the next one for all of them).
    for offset in range(12):
        moment = dt.datetime(2026, 1, 25, 12, tzinfo=UTC) + dt.timedelta(days=offset)
        rows.append(_row(moment, "alice", "daily.check", {"club": "pennlabs"}))
    # Alice in New York's DST changes: 01:30 happens twice on 1 November
    # (EDT, then EST); 8 March skips from 01:59 to 03:00.
    for moment in (
        "2026-11-01T05:30:00Z",
        "2026-11-01T06:30:00Z",
        "2026-11-01T06:59:59Z",
        "2026-03-08T06:59:59Z",
        "2026-03-08T07:00:00Z",
        "2026-06-30T03:30:00Z",  # 23:30 the day before, in New York
    ):
        rows.append(_row(dt.datetime.fromisoformat(moment), "alice", "dst.edge"))
    # The tie user: Tuesdays and Fridays equally busy, 09:00 and 14:00 equally busy,
    # two streaks of three days, two names and two colours with equal counts.
    tie_days = [dt.date(2026, 3, 3), dt.date(2026, 3, 4), dt.date(2026, 3, 5)]  # Tue-Thu
    tie_days += [dt.date(2026, 6, 9), dt.date(2026, 6, 10), dt.date(2026, 6, 11)]  # Tue-Thu
    tie_days += [dt.date(2026, 3, 6), dt.date(2026, 6, 12)]  # Fridays: ends the runs at 4 days
    for index, day in enumerate(tie_days):
        for hour in (9, 14):
            name = "a.name" if index % 2 == 0 else "b.name"
            colour = "red" if hour == 9 else "blue"
            moment = dt.datetime.combine(day, dt.time(hour), UTC)
            rows.append(_row(moment, "tie", name, {"color": colour}))
    # The same user ids in another product, and events without a user.
    for row in list(rows)[:200]:
        rows.append({**row, "event_id": uuid.uuid4(), "product": "mobile"})
    rows.append(_row(dt.datetime(2026, 5, 5, tzinfo=UTC), None, "anonymous"))
    # Outside the year.
    rows.append(_row(dt.datetime(2025, 12, 31, 23, tzinfo=UTC), "alice", "last.year"))
    rows.append(_row(dt.datetime(2027, 1, 1, 1, tzinfo=UTC), "alice", "next.year"))
    return rows


def _text(value: Any) -> str | None:
    """What PostgreSQL's ``#>>`` gives for a JSON value."""
    if value is MISSING or value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)  # single-key objects only: the same text jsonb prints


def _ranked(counts: Counter[str], limit: int) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0].encode()))[:limit]


def _earliest_most(counts: list[int]) -> int | None:
    best = None
    for index, count in enumerate(counts):
        if count and (best is None or count > counts[best]):
            best = index
    return best


def reference_summary(
    rows: list[dict[str, Any]],
    *,
    product: str,
    user: str,
    zone_name: str,
    first: dt.date,
    last: dt.date,
    top: tuple[str, ...],
) -> dict[str, Any]:
    zone = ZoneInfo(zone_name)
    start = dt.datetime.combine(first, dt.time(), zone)
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), zone)
    mine = [
        row
        for row in rows
        if row["product"] == product and row["user_id"] == user and start <= row["timestamp"] < end
    ]
    local = [row["timestamp"].astimezone(zone) for row in mine]
    weekdays, hours = [0] * 7, [0] * 24
    for moment in local:
        weekdays[moment.weekday()] += 1
        hours[moment.hour] += 1
    # Runs of consecutive days, walked one day at a time.
    days = sorted({moment.date() for moment in local})
    best: tuple[int, dt.date, dt.date] | None = None
    run_start = None
    for index, day in enumerate(days):
        if index == 0 or days[index - 1] != day - dt.timedelta(days=1):
            run_start = day
        assert run_start is not None
        length = (day - run_start).days + 1
        if best is None or length > best[0]:  # strictly longer: the earliest run wins ties
            best = (length, run_start, day)
    weekday, hour = _earliest_most(weekdays), _earliest_most(hours)
    tops = {}
    for field in top:
        values = Counter(
            text for row in mine if (text := _text(_field_value(row, field))) is not None
        )
        tops[field] = [{"value": v, "events": n} for v, n in _ranked(values, 10)]
    return {
        "user": user,
        "product": product,
        "timezone": zone_name,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "date_range": [start.isoformat(), end.isoformat()],
        "total_events": len(mine),
        "active_days": len(days),
        "first_seen": min(local) if local else None,
        "last_seen": max(local) if local else None,
        "events_by_name": [
            {"name": name, "events": count}
            for name, count in _ranked(Counter(row["name"] for row in mine), 1000)
        ],
        "top": tops,
        "events_by_weekday": weekdays,
        "events_by_hour": hours,
        "most_active_weekday": None
        if weekday is None
        else {"weekday": weekday, "name": WEEKDAYS[weekday], "events": weekdays[weekday]},
        "most_active_hour": None if hour is None else {"hour": hour, "events": hours[hour]},
        "longest_streak": None
        if best is None
        else {"days": best[0], "start": best[1].isoformat(), "end": best[2].isoformat()},
    }


class SummaryApi:
    def __init__(self, app: RunningApi, keys: dict[str, str], rows: list[dict[str, Any]]) -> None:
        self.app = app
        self.keys = keys
        self.rows = rows

    async def get(
        self, user: str, params: dict[str, Any] | list[tuple[str, Any]], key: str | None = "clubs"
    ) -> Any:
        headers = {} if key is None else {"Authorization": f"Bearer {self.keys.get(key, key)}"}
        return await self.app.client.get(
            f"/v1/users/{quote(user, safe='')}/summary", params=params, headers=headers
        )


@pytest.fixture
async def summary_api(api: ApiFactory, db: asyncpg.Connection) -> AsyncIterator[SummaryApi]:
    await store(db, generate_rows())
    rows = await stored_rows(db)
    async with api(run_flusher=False, read_rate_limit_per_second=10_000) as app:
        keys = {
            "clubs": await create_key(app.settings, "clubs", scopes=[Scope.READ]),
            "admin": await create_key(app.settings, "mobile", scopes=[Scope.READ, Scope.ADMIN]),
            "ingest": await create_key(app.settings, "clubs", scopes=[Scope.INGEST]),
        }
        yield SummaryApi(app, keys, rows)


def as_json(summary: dict[str, Any]) -> dict[str, Any]:
    """The reference as the API writes it (instants in RFC 3339, in the zone's offset)."""
    return {
        key: value.isoformat() if isinstance(value, dt.datetime) else value
        for key, value in summary.items()
    }


def normalized(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer with its instants parsed back and written the reference's way."""
    del answer["took_ms"]
    assert answer.pop("source") in ("raw", "rollup")
    for key in ("first_seen", "last_seen"):
        if answer[key] is not None:
            answer[key] = dt.datetime.fromisoformat(answer[key].replace("Z", "+00:00")).isoformat()
    return answer


@pytest.mark.parametrize("zone", ZONES)
async def test_every_summary_equals_the_brute_force_reference(
    summary_api: SummaryApi, zone: str
) -> None:
    for user in USERS:
        params = [("from", "2026-01-01"), ("to", "2026-12-31"), ("timezone", zone)]
        params += [("top", field) for field in TOP]
        answer = await summary_api.get(user, params)
        assert answer.status_code == 200, answer.text
        expected = reference_summary(
            summary_api.rows,
            product="clubs",
            user=user,
            zone_name=zone,
            first=dt.date(2026, 1, 1),
            last=dt.date(2026, 12, 31),
            top=TOP,
        )
        assert normalized(answer.json()) == as_json(expected), (zone, user)


async def test_ties_go_to_the_earliest_and_to_byte_order(summary_api: SummaryApi) -> None:
    answer = (await summary_api.get("tie", {"from": "2026-01-01", "top": "prop:color"})).json()
    weekdays, hours = answer["events_by_weekday"], answer["events_by_hour"]
    assert weekdays[1] == weekdays[2] == weekdays[3] == weekdays[4]  # Tuesday to Friday
    assert answer["most_active_weekday"] == {"weekday": 1, "name": "Tuesday", "events": 4}
    assert hours[9] == hours[14]
    assert answer["most_active_hour"] == {"hour": 9, "events": 8}
    assert answer["longest_streak"] == {"days": 4, "start": "2026-03-03", "end": "2026-03-06"}
    assert answer["events_by_name"] == [
        {"name": "a.name", "events": 8},
        {"name": "b.name", "events": 8},
    ]
    assert answer["top"]["prop:color"] == [
        {"value": "blue", "events": 8},
        {"value": "red", "events": 8},
    ]


async def test_a_streak_crosses_a_month_and_dst_hours_are_local(summary_api: SummaryApi) -> None:
    utc = (await summary_api.get("alice", {"from": "2026-01-01"})).json()
    assert utc["longest_streak"] == {"days": 12, "start": "2026-01-25", "end": "2026-02-05"}
    new_york = (
        await summary_api.get("alice", {"from": "2026-01-01", "timezone": "America/New_York"})
    ).json()
    reference = reference_summary(
        summary_api.rows,
        product="clubs",
        user="alice",
        zone_name="America/New_York",
        first=dt.date(2026, 1, 1),
        last=dt.date(2026, 12, 31),
        top=(),
    )
    # 01:30 EDT and 01:30 EST are both 01:xx: the repeated hour counts both.
    assert new_york["events_by_hour"] == reference["events_by_hour"]
    repeated = [
        row
        for row in summary_api.rows
        if row["user_id"] == "alice"
        and row["product"] == "clubs"
        and row["name"] == "dst.edge"
        and row["timestamp"].astimezone(ZoneInfo("America/New_York")).hour == 1
    ]
    assert len(repeated) >= 3
    assert new_york["date_range"] == ["2026-01-01T00:00:00-05:00", "2027-01-01T00:00:00-05:00"]


async def test_the_range_defaults_to_this_calendar_year(
    summary_api: SummaryApi, db: asyncpg.Connection
) -> None:
    zone = ZoneInfo("Asia/Kolkata")
    now = dt.datetime.now(UTC)
    await store(
        db,
        [
            _row(now - dt.timedelta(minutes=1), "carol", "now"),
            _row(now.replace(year=now.year - 1), "carol", "last.year"),
        ],
    )
    answer = (await summary_api.get("carol", {"timezone": "Asia/Kolkata"})).json()
    year = now.astimezone(zone).year
    assert (answer["from"], answer["to"]) == (f"{year}-01-01", f"{year}-12-31")
    assert answer["events_by_name"] == [{"name": "now", "events": 1}]
    # One bound alone: the rest of its calendar year.
    only_from = (await summary_api.get("alice", {"from": "2026-06-01"})).json()
    assert (only_from["from"], only_from["to"]) == ("2026-06-01", "2026-12-31")
    only_to = (await summary_api.get("alice", {"to": "2026-01-31"})).json()
    assert (only_to["from"], only_to["to"]) == ("2026-01-01", "2026-01-31")
    assert only_to["longest_streak"] == {"days": 7, "start": "2026-01-25", "end": "2026-01-31"}


async def test_another_products_events_never_count(summary_api: SummaryApi) -> None:
    params = {"from": "2026-01-01"}
    own = (await summary_api.get("alice", params)).json()
    assert own["total_events"] == sum(
        1
        for row in summary_api.rows
        if row["product"] == "clubs" and row["user_id"] == "alice" and row["timestamp"].year == 2026
    )
    # The admin key's own product is mobile: it sees mobile's alice, or names clubs.
    mobile = (await summary_api.get("alice", params, key="admin")).json()
    assert mobile["product"] == "mobile"
    assert mobile["total_events"] != own["total_events"]
    named = (await summary_api.get("alice", {**params, "product": "clubs"}, key="admin")).json()
    assert named["total_events"] == own["total_events"]
    refused = await summary_api.get("alice", {**params, "product": "mobile"})
    assert refused.status_code == 403
    assert (await summary_api.get("alice", params, key=None)).status_code == 401
    assert (await summary_api.get("alice", {"from": "x"}, key=None)).status_code == 401
    assert (await summary_api.get("alice", params, key="ingest")).status_code == 403


INVALID: dict[str, tuple[str, dict[str, Any] | list[tuple[str, str]], str]] = {
    "not a date": ("alice", {"from": "2026-02-30"}, "query.from"),
    "an instant": ("alice", {"to": "2026-02-01T00:00:00Z"}, "query.to"),
    "to before from": ("alice", {"from": "2026-03-01", "to": "2026-02-01"}, "query.to"),
    "before 1970": ("alice", {"from": "1969-12-31"}, "query.from"),
    "past 9998": ("alice", {"to": "9999-12-31"}, "query.to"),
    "top not a property": ("alice", {"top": "name"}, "query.top"),
    "top twice": ("alice", [("top", "prop:a"), ("top", "prop:a")], "query.top"),
    "six tops": ("alice", [("top", f"prop:k{i}") for i in range(6)], "query.top"),
    "unknown zone": ("alice", {"timezone": "Mars/Olympus"}, "query.timezone"),
    "unknown parameter": ("alice", {"year": "2026"}, "query.year"),
    "user too long": ("u" * 257, {}, "path.user"),
    "user with NUL": ("a\x00b", {}, "path.user"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
async def test_every_invalid_parameter_is_a_422_naming_it(
    summary_api: SummaryApi, case: str
) -> None:
    user, params, field = INVALID[case]
    answer = await summary_api.get(user, params)
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["error"] == "invalid_request"
    assert any(
        detail["field"] == field or detail["field"].startswith(f"{field}.")
        for detail in body["details"]
    ), body


async def test_a_user_id_with_slashes_line_breaks_and_quotes_is_one_value(
    summary_api: SummaryApi,
) -> None:
    answer = await summary_api.get(WEIRD_USER, {"from": "2026-01-01"})
    assert answer.status_code == 200
    assert answer.json()["user"] == WEIRD_USER
    assert answer.json()["total_events"] == 150
    nobody = (await summary_api.get("' OR '1'='1", {"from": "2026-01-01"})).json()
    assert nobody["total_events"] == 0
    assert nobody["longest_streak"] is None
    assert nobody["most_active_weekday"] is None
    assert nobody["first_seen"] is None
