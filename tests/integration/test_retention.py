"""``POST /v1/retention`` against a brute-force cohort table in plain Python.

The generated data lies around today (so the newest cohorts have offsets that
have not begun, which must be null): users start once or several times, some
before the range, return before, at the same instant as, and long after their
start, in both products; some events have no user. The reference below
buckets every event by hand and shares no code with ``read/retention.py``
(filters are matched by ``tests/read_reference.py``'s plain-Python matcher).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from labs_analytics.auth.keys import Scope
from labs_analytics.settings import Settings
from tests.helpers import ApiFactory, RunningApi, create_key
from tests.integration.test_query import store, stored_rows
from tests.read_reference import _matches

PRODUCTS = ("clubs", "mobile")
NAMES = ("signup", "visit", "apply", "page.view")
ZONES = ("UTC", "America/New_York", "Asia/Kolkata")
TODAY = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
DAYS = 70  # the data starts this many days before today
START = TODAY - dt.timedelta(days=DAYS)


def _day(offset: int) -> str:
    return (START + dt.timedelta(days=offset)).date().isoformat()


def generate_retention_rows(seed: int = 5, users: int = 80) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []

    def add(product: str, name: str, user: str | None, at: dt.datetime) -> None:
        rows.append(
            {
                "timestamp": at,
                "event_id": uuid.UUID(int=rng.getrandbits(128)),
                "product": product,
                "name": name,
                "user_id": user,
                "properties": {"plan": rng.choice(["free", "pro"]), "n": rng.randint(0, 9)},
                "context": None,
            }
        )

    def moment(days_from: float, days_to: float) -> dt.datetime:
        seconds = rng.uniform(days_from * 86400, days_to * 86400)
        return START + dt.timedelta(seconds=round(seconds, rng.choice([0, 6])))

    for index in range(users):
        user = f"u{index}"
        for product in rng.sample(PRODUCTS, rng.choice([1, 1, 2])):
            first = moment(-5, DAYS + 1)
            add(product, "signup", user, first)
            for _ in range(rng.choice([0, 0, 1, 2])):  # starts again, later
                add(product, "signup", user, first + dt.timedelta(days=rng.uniform(0, 30)))
            for _ in range(rng.randint(0, 12)):
                gap = dt.timedelta(days=rng.choice([rng.uniform(-3, 1), rng.uniform(0, 60)]))
                add(product, rng.choice(NAMES[1:]), user, first + gap)
            if rng.random() < 0.2:  # a return at the very instant of the start
                add(product, "visit", user, first)
    for _ in range(40):
        add(rng.choice(PRODUCTS), rng.choice(NAMES), None, moment(0, DAYS))
    rows += [dict(row) for row in rng.sample(rows, 20)]  # a retry, stored once
    return rows


# --- the reference ------------------------------------------------------------------


def _period_start(moment: dt.datetime, period: str, zone: ZoneInfo) -> dt.date:
    day = moment.astimezone(zone).date()
    if period == "day":
        return day
    if period == "week":
        return day - dt.timedelta(days=day.weekday())
    return day.replace(day=1)


def _later(day: dt.date, period: str, k: int) -> dt.date:
    if period == "day":
        return day + dt.timedelta(days=k)
    if period == "week":
        return day + dt.timedelta(weeks=k)
    months = day.year * 12 + day.month - 1 + k
    return dt.date(months // 12, months % 12 + 1, 1)


def _is(row: Mapping[str, Any], event: Mapping[str, Any] | None) -> bool:
    if event is None:
        return True
    return row["name"] == event["name"] and all(_matches(row, f) for f in event.get("filters", []))


def reference_retention(
    rows: list[dict[str, Any]], body: Mapping[str, Any], product: str, as_of: dt.datetime
) -> list[dict[str, Any]]:
    zone = ZoneInfo(body.get("timezone", "UTC"))
    first_day, last_day = (dt.date.fromisoformat(day) for day in body["date_range"])
    start = dt.datetime.combine(first_day, dt.time(), tzinfo=zone)
    end = dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    period, periods = body.get("period", "week"), body.get("periods", 8)
    mine = [row for row in rows if row["product"] == product and row["user_id"] is not None]
    firsts: dict[str, dt.datetime] = {}
    for row in mine:
        if _is(row, body["start_event"]) and start <= row["timestamp"] < end:
            user = row["user_id"]
            firsts[user] = min(firsts.get(user, row["timestamp"]), row["timestamp"])
    cohorts: dict[dt.date, list[str]] = {}
    for user, first in firsts.items():
        cohorts.setdefault(_period_start(first, period, zone), []).append(user)
    returned: set[tuple[str, dt.date]] = {
        (row["user_id"], _period_start(row["timestamp"], period, zone))
        for row in mine
        if row["user_id"] in firsts
        and _is(row, body.get("return_event"))
        and row["timestamp"] > firsts[row["user_id"]]
    }
    answer = []
    for cohort in sorted(cohorts):
        members = cohorts[cohort]
        users: list[int | None] = []
        for k in range(periods + 1):
            begins = _later(cohort, period, k)
            if dt.datetime.combine(begins, dt.time(), tzinfo=zone) > as_of:
                users.append(None)
            else:
                users.append(sum((user, begins) in returned for user in members))
        answer.append(
            {
                "cohort": cohort.isoformat(),
                "size": len(members),
                "users": users,
                "percent": [None if n is None else 100 * n / len(members) for n in users],
            }
        )
    return answer


# --- the app -------------------------------------------------------------------------


class RetentionApi:
    """The app with a read key per product, and the rows as stored."""

    def __init__(self, app: RunningApi, keys: dict[str, str], rows: list[dict[str, Any]]) -> None:
        self.app = app
        self.keys = keys
        self.rows = rows

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return f"RetentionApi({len(self.rows)} rows)"

    async def retention(self, body: dict[str, Any], key: str | None = None) -> Any:
        return await self.app.client.post(
            "/v1/retention",
            json=body,
            headers={"Authorization": f"Bearer {key or self.keys['clubs']}"},
        )

    async def check(self, body: dict[str, Any], product: str = "clubs") -> dict[str, Any]:
        """The API's answer, asserted equal to the reference's."""
        answer = await self.retention(body, self.keys[product])
        assert answer.status_code == 200, (body, answer.text)
        got = answer.json()
        as_of = dt.datetime.fromisoformat(got["meta"]["as_of"])
        assert got["cohorts"] == reference_retention(self.rows, body, product, as_of)
        return got


@pytest.fixture
async def retention_api(
    api: ApiFactory, db: asyncpg.Connection, settings: Settings
) -> AsyncIterator[RetentionApi]:
    await store(db, generate_retention_rows())
    rows = await stored_rows(db)
    # Keys made before the app starts are in its key cache from the first request.
    keys = {
        product: await create_key(settings, product, scopes=[Scope.READ]) for product in PRODUCTS
    }
    async with api(run_flusher=False, read_rate_limit_per_second=10_000) as app:
        yield RetentionApi(app, keys, rows)


SIGNUP = {"name": "signup"}
EXAMPLES: dict[str, dict[str, Any]] = {
    "weekly, any event returns": {"start_event": SIGNUP, "period": "week", "periods": 8},
    "daily, a named return": {
        "start_event": SIGNUP,
        "return_event": {"name": "visit"},
        "period": "day",
        "periods": 14,
        "date_range": [_day(40), _day(DAYS)],
    },
    "monthly in New York": {
        "start_event": SIGNUP,
        "period": "month",
        "periods": 3,
        "timezone": "America/New_York",
    },
    "filters on both events, in Kolkata": {
        "start_event": {"name": "signup", "filters": [["is", "prop:plan", ["pro"]]]},
        "return_event": {"name": "apply", "filters": [["gte", "prop:n", [3]]]},
        "period": "week",
        "periods": 52,
        "timezone": "Asia/Kolkata",
    },
    "the start event as the return": {
        "start_event": SIGNUP,
        "return_event": SIGNUP,
        "period": "day",
        "periods": 30,
    },
}


@pytest.mark.parametrize("case", sorted(EXAMPLES))
async def test_answers_equal_the_reference(retention_api: RetentionApi, case: str) -> None:
    body = {"date_range": [_day(-5), _day(DAYS)], **EXAMPLES[case]}
    got = await retention_api.check(body)
    assert got["cohorts"]  # the example is not empty


async def test_offsets_that_have_not_begun_are_null_not_zero(
    retention_api: RetentionApi,
) -> None:
    body = {
        "start_event": SIGNUP,
        "return_event": {"name": "apply"},
        "period": "week",
        "periods": 12,
        "date_range": [_day(0), _day(DAYS)],
    }
    got = await retention_api.check(body)
    newest, oldest = got["cohorts"][-1], got["cohorts"][0]
    assert newest["users"][-1] is None
    assert newest["percent"][-1] is None
    assert newest["users"][0] is not None  # this week has begun
    assert 0 in [n for cohort in got["cohorts"] for n in cohort["users"]]  # zeros are zeros
    assert None not in oldest["users"][:9]  # ten weeks ago: nine offsets have begun


async def test_a_relative_range_is_resolved_in_the_time_zone(
    retention_api: RetentionApi,
) -> None:
    answer = await retention_api.retention(
        {"start_event": SIGNUP, "date_range": "30d", "timezone": "Asia/Kolkata"}
    )
    assert answer.status_code == 200, answer.text
    start, end = map(dt.datetime.fromisoformat, answer.json()["meta"]["date_range"])
    assert end - start == dt.timedelta(days=30)
    assert start.utcoffset() == dt.timedelta(hours=5, minutes=30)


async def test_exact_returns_on_a_hand_made_timeline(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    """The definitions, spelled out on a few users (days long past: no offset is null)."""

    def event(user: str | None, name: str, at: str, product: str = "clubs") -> Any:
        return {
            "timestamp": dt.datetime.fromisoformat(at).replace(tzinfo=dt.UTC),
            "event_id": uuid.uuid4(),
            "product": product,
            "name": name,
            "user_id": user,
            "properties": {},
            "context": None,
        }

    await store(
        db,
        [
            # a: cohort 11-02 (a second start does not move it); a visit before the
            # start and one at its very instant are not returns; day 1 and day 3 are.
            event("a", "signup", "2026-11-02T10:00"),
            event("a", "signup", "2026-11-03T08:00"),
            event("a", "visit", "2026-11-02T09:00"),
            event("a", "visit", "2026-11-02T10:00"),
            event("a", "visit", "2026-11-03T12:00"),
            event("a", "visit", "2026-11-05T23:59"),
            event("a", "visit", "2026-11-04T12:00", product="mobile"),  # another product
            # b: back the same day (offset 0), on day 2 with another event, and on
            # day 4, past the last offset.
            event("b", "signup", "2026-11-02T20:00"),
            event("b", "visit", "2026-11-02T21:00"),
            event("b", "page.view", "2026-11-04T00:00"),
            event("b", "visit", "2026-11-06T10:00"),
            # c: cohort 11-03, back on day 1 (after the range ends).
            event("c", "signup", "2026-11-03T01:00"),
            event("c", "visit", "2026-11-04T01:00"),
            # d: a start before the range does not count; the first one inside it does.
            event("d", "signup", "2026-11-01T05:00"),
            event("d", "signup", "2026-11-03T05:00"),
            event("d", "visit", "2026-11-03T06:00"),
            event(None, "signup", "2026-11-02T05:00"),
            event(None, "visit", "2026-11-02T06:00"),
        ],
    )
    body: dict[str, Any] = {
        "start_event": SIGNUP,
        "period": "day",
        "periods": 3,
        "date_range": ["2026-11-02", "2026-11-03"],
    }
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings, "clubs", scopes=[Scope.READ])
        headers = {"Authorization": f"Bearer {key}"}
        visits = await app.client.post(
            "/v1/retention", json={**body, "return_event": {"name": "visit"}}, headers=headers
        )
        anything = await app.client.post("/v1/retention", json=body, headers=headers)
    assert visits.status_code == 200, visits.text
    assert visits.json()["cohorts"] == [
        {"cohort": "2026-11-02", "size": 2, "users": [1, 1, 0, 1], "percent": [50, 50, 0, 50]},
        {"cohort": "2026-11-03", "size": 2, "users": [1, 1, 0, 0], "percent": [50, 50, 0, 0]},
    ]
    assert [cohort["users"] for cohort in anything.json()["cohorts"]] == [
        [1, 1, 1, 1],
        [1, 1, 0, 0],
    ]


# --- any retention ----------------------------------------------------------------

FILTERS = st.sampled_from(
    [
        ["is", "prop:plan", ["free"]],
        ["gt", "prop:n", [4]],
        ["is_not", "prop:n", [0, 1]],
        ["lt", "user", ["u5"]],
    ]
)


def events(names: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"name": st.sampled_from(names)},
        optional={"filters": st.lists(FILTERS, max_size=2)},
    )


@st.composite
def retentions(draw: st.DrawFn) -> dict[str, Any]:
    first = draw(st.integers(-6, DAYS))
    last = draw(st.integers(first, DAYS + 1))
    body: dict[str, Any] = {
        "start_event": draw(events(("signup", "signup", "visit"))),
        "period": draw(st.sampled_from(["day", "week", "month"])),
        "periods": draw(st.sampled_from([1, 2, 5, 10, 52])),
        "date_range": [_day(first), _day(last)],
        "timezone": draw(st.sampled_from(ZONES)),
    }
    if draw(st.booleans()):
        body["return_event"] = draw(events(NAMES))
    return body


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=retentions(), product=st.sampled_from(PRODUCTS))
async def test_any_retention_equals_the_reference(
    retention_api: RetentionApi, body: dict[str, Any], product: str
) -> None:
    note(f"{product}: {json.dumps(body)}")
    await retention_api.check(body, product)


# --- who may read what, and what is refused ---------------------------------------


async def test_a_read_key_reads_its_own_product_only(retention_api: RetentionApi) -> None:
    body = {"start_event": SIGNUP, "date_range": [_day(0), _day(DAYS)]}
    for product in ("mobile", "nonexistent"):
        refused = await retention_api.retention({**body, "product": product})
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == "forbidden"
    clubs = await retention_api.check(body, "clubs")
    mobile = await retention_api.check(body, "mobile")
    assert clubs["cohorts"] != mobile["cohorts"]


async def test_an_admin_key_may_name_another_product(retention_api: RetentionApi) -> None:
    admin = await create_key(retention_api.app.settings, "clubs", scopes=[Scope.ADMIN])
    body = {"start_event": SIGNUP, "date_range": [_day(0), _day(DAYS)]}
    answer = await retention_api.retention({**body, "product": "mobile"}, admin)
    assert answer.status_code == 200, answer.text
    as_of = dt.datetime.fromisoformat(answer.json()["meta"]["as_of"])
    assert answer.json()["cohorts"] == reference_retention(
        retention_api.rows, body, "mobile", as_of
    )


async def test_keys_without_the_read_scope_and_strangers_are_refused(
    retention_api: RetentionApi,
) -> None:
    ingest = await create_key(retention_api.app.settings, "clubs", scopes=[Scope.INGEST])
    body = {"start_event": SIGNUP}
    assert (await retention_api.retention(body, ingest)).status_code == 403
    client = retention_api.app.client
    assert (await client.post("/v1/retention", json=body)).status_code == 401
    assert (await client.post("/v1/retention", json={"periods": "x"})).status_code == 401


async def test_a_range_of_more_than_a_thousand_cohorts_is_refused(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO events (timestamp, event_id, product, name, user_id, properties, "
        "received_at) SELECT timestamptz '2020-01-01 12:00+00' + i * interval '1 day', "
        "gen_random_uuid(), 'clubs', 'signup', 'u' || i, '{}', now() "
        "FROM generate_series(0, 1000) AS i"
    )
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings, "clubs", scopes=[Scope.READ])
        headers = {"Authorization": f"Bearer {key}"}
        body = {"start_event": SIGNUP, "period": "day", "periods": 1, "date_range": "all"}
        refused = await app.client.post("/v1/retention", json=body, headers=headers)
        weekly = await app.client.post(
            "/v1/retention", json={**body, "period": "week"}, headers=headers
        )
    assert refused.status_code == 422, refused.text
    assert refused.json()["details"][0]["field"] == "body.date_range"
    assert weekly.status_code == 200, weekly.text
    assert sum(cohort["size"] for cohort in weekly.json()["cohorts"]) == 1001


INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "no start event": ({}, "body.start_event"),
    "a start event without a name": ({"start_event": {"filters": []}}, "body.start_event.name"),
    "a name no event can have": ({"start_event": {"name": "a b"}}, "body.start_event.name"),
    "a bad start filter": (
        {"start_event": {"name": "signup", "filters": [["gt", "prop:n", ["x"]]]}},
        "body.start_event.filters",
    ),
    "a bad return filter": (
        {"start_event": SIGNUP, "return_event": {"name": "v", "filters": [["exists"]]}},
        "body.return_event.filters",
    ),
    "an unknown event field": (
        {"start_event": {"name": "signup", "where": []}},
        "body.start_event.where",
    ),
    "an unknown period": ({"start_event": SIGNUP, "period": "year"}, "body.period"),
    "no periods": ({"start_event": SIGNUP, "periods": 0}, "body.periods"),
    "too many periods": ({"start_event": SIGNUP, "periods": 53}, "body.periods"),
    "periods not a number": ({"start_event": SIGNUP, "periods": "eight"}, "body.periods"),
    "bad range": ({"start_event": SIGNUP, "date_range": "fortnight"}, "body.date_range"),
    "range backwards": (
        {"start_event": SIGNUP, "date_range": ["2026-11-02", "2026-11-01"]},
        "body.date_range",
    ),
    "unknown zone": ({"start_event": SIGNUP, "timezone": "Mars/Olympus"}, "body.timezone"),
    "the host's zone file": ({"start_event": SIGNUP, "timezone": "localtime"}, "body.timezone"),
    "range past the year 9999": (
        {"start_event": SIGNUP, "date_range": ["2026-01-01", "9999-12-31"]},
        "body.date_range",
    ),
    "product not a string": ({"start_event": SIGNUP, "product": ["x"]}, "body.product"),
    "unknown top-level field": ({"start_event": SIGNUP, "cohort": "week"}, "body.cohort"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
async def test_every_invalid_field_is_a_422_naming_it(
    retention_api: RetentionApi, case: str
) -> None:
    body, field = INVALID[case]
    answer = await retention_api.retention(body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_request"
    fields = [detail["field"] for detail in answer.json()["details"]]
    assert fields
    assert all(name.startswith(field) for name in fields), fields
