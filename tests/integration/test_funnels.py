"""``POST /v1/funnels`` against a brute-force funnel in plain Python, on generated data.

Users walk the steps the way real ones do: in order with drop-outs, with
repeats, out of order, with gaps longer than any window, several events at the
same instant, starting before the range and finishing after it; some events
have no user; the same user ids act in a second product. The reference below
follows each user event by event and shares no code with ``read/funnels.py``
(filters are matched by ``tests/read_reference.py``'s plain-Python matcher).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
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
from tests.read_reference import MISSING, _field_value, _matches

PRODUCTS = ("clubs", "mobile")
STEPS = ("visit", "signup", "apply", "accept")
OTHER = "page.view"
START = dt.datetime(2026, 10, 26, tzinfo=dt.UTC)  # a Monday; DST ends in New York on 11-01
DAYS = 14
ZONES = ("UTC", "America/New_York", "Asia/Kolkata")
RANGE = ["2026-10-26", "2026-11-08"]
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _properties(rng: random.Random) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    plan = rng.choice(["free", "free", "pro", "team", 1, True, None, MISSING])
    if plan is not MISSING:
        properties["plan"] = plan
    if rng.random() < 0.6:
        properties["utm"] = {"source": rng.choice(["web", "mail", "ad", "ünï"])}
    if rng.random() < 0.7:
        properties["n"] = rng.randint(0, 10)
    return properties


def _gap(rng: random.Random) -> dt.timedelta:
    """Seconds to weeks: some next steps fall inside every window, some outside all."""
    scale = rng.choice([0, 30, 600, 3600, 6 * 3600, 86400, 3 * 86400, 9 * 86400])
    micros = rng.choice([0, 0, rng.randint(1, 999_999)])
    return dt.timedelta(seconds=rng.randint(0, scale), microseconds=micros)


def generate_funnel_rows(seed: int = 11, users: int = 70) -> list[dict[str, Any]]:
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
                "properties": _properties(rng),
                "context": {"app": {"version": rng.choice(["1.0", "1.1"])}}
                if rng.random() < 0.5
                else None,
            }
        )

    for index in range(users):
        user = f"u{index}" if index % 9 else f"ü{index}"
        for product in rng.sample(PRODUCTS, rng.choice([1, 1, 2])):
            for _session in range(rng.randint(1, 3)):
                at = START + dt.timedelta(seconds=rng.randint(-3 * 86400, DAYS * 86400))
                depth = rng.randint(1, len(STEPS))
                order = list(STEPS[:depth])
                if depth > 1 and rng.random() < 0.2:  # out of order: two steps swapped
                    i, j = rng.sample(range(depth), 2)
                    order[i], order[j] = order[j], order[i]
                for name in order:
                    at += _gap(rng)
                    add(product, name, user, at)
                    if rng.random() < 0.15:  # a repeat, now or a bit later
                        add(product, name, user, at + rng.choice([_gap(rng), dt.timedelta(0)]))
                    if rng.random() < 0.2:
                        add(product, OTHER, user, at + _gap(rng))
    for _ in range(60):  # steps without a user: never part of a funnel
        at = START + dt.timedelta(seconds=rng.randint(0, DAYS * 86400))
        add(rng.choice(PRODUCTS), rng.choice(STEPS), None, at)
    rows += [dict(row) for row in rng.sample(rows, 30)]  # a retry, stored once
    return rows


# --- the reference ------------------------------------------------------------------


def _window_seconds(window: str | int) -> int:
    return window if isinstance(window, int) else int(window[:-1]) * UNITS[window[-1]]


def _text(value: Any) -> str | None:
    """A property as ``#>>`` gives it (the generated breakdown values are simple)."""
    if value is MISSING or value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    raise AssertionError(f"no text for {value!r}")


def _is_step(row: Mapping[str, Any], step: Mapping[str, Any]) -> bool:
    return row["name"] == step["name"] and all(_matches(row, f) for f in step.get("filters", []))


def _seconds(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def _steps(paths: list[list[dt.datetime]], names: list[str]) -> list[dict[str, Any]]:
    users = [sum(1 for path in paths if len(path) > k) for k in range(len(names))]
    answer = []
    for k, name in enumerate(names):
        gaps = sorted(
            Decimal((path[k] - path[k - 1]) // dt.timedelta(microseconds=1)) / 1_000_000
            for path in paths
            if k and len(path) > k
        )
        median = (gaps[(len(gaps) - 1) // 2] + gaps[len(gaps) // 2]) / 2 if gaps else None
        previous = users[k - 1] if k else users[0]
        answer.append(
            {
                "step": k + 1,
                "name": name,
                "users": users[k],
                "conversion_from_first": users[k] / users[0] if users[0] else None,
                "conversion_from_previous": users[k] / previous if previous else None,
                "median_seconds_from_previous": None if median is None else _seconds(median),
            }
        )
    return answer


def reference_funnel(
    rows: list[dict[str, Any]], body: Mapping[str, Any], product: str
) -> dict[str, Any]:
    """``steps`` and ``breakdown`` as the API must answer, following each user's events."""
    zone = ZoneInfo(body.get("timezone", "UTC"))
    first_day, last_day = (dt.date.fromisoformat(day) for day in body["date_range"])
    start = dt.datetime.combine(first_day, dt.time(), tzinfo=zone)
    end = dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    window = dt.timedelta(seconds=_window_seconds(body.get("window", "7d")))
    steps = body["steps"]
    timelines: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["product"] == product and row["user_id"] is not None:
            timelines.setdefault(row["user_id"], []).append(row)
    paths: list[tuple[str | None, list[dt.datetime]]] = []
    for events in timelines.values():
        events.sort(key=lambda row: (row["timestamp"], row["event_id"]))
        entry = next(
            (r for r in events if _is_step(r, steps[0]) and start <= r["timestamp"] < end), None
        )
        if entry is None:
            continue
        path = [entry["timestamp"]]
        for step in steps[1:]:
            following = [
                r["timestamp"]
                for r in events
                if _is_step(r, step) and path[-1] < r["timestamp"] <= path[0] + window
            ]
            if not following:
                break
            path.append(min(following))
        value = _text(_field_value(entry, body["breakdown"])) if body.get("breakdown") else None
        paths.append((value, path))
    names = [step["name"] for step in steps]
    answer: dict[str, Any] = {
        "steps": _steps([p for _, p in paths], names),
        "breakdown": None,
        "paths": [p for _, p in paths],
    }
    if body.get("breakdown"):
        values = {value for value, _ in paths}
        groups = [
            (value, [p for v, p in paths if v == value])
            for value in sorted(values, key=lambda v: (v is None, v or ""))
        ]
        groups.sort(key=lambda group: -len(group[1]))  # stable: ties stay in byte order
        answer["breakdown"] = [
            {"value": value, "steps": _steps(members, names)}
            for value, members in groups[: body.get("breakdown_limit", 100)]
        ]
        answer["groups"] = len(groups)
    return answer


# --- the app -------------------------------------------------------------------------


class FunnelApi:
    """The app with a read key per product, and the rows as stored."""

    def __init__(self, app: RunningApi, keys: dict[str, str], rows: list[dict[str, Any]]) -> None:
        self.app = app
        self.keys = keys
        self.rows = rows

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return f"FunnelApi({len(self.rows)} rows)"

    async def funnel(self, body: dict[str, Any], key: str | None = None) -> Any:
        return await self.app.client.post(
            "/v1/funnels",
            json=body,
            headers={"Authorization": f"Bearer {key or self.keys['clubs']}"},
        )

    async def check(self, body: dict[str, Any], product: str = "clubs") -> dict[str, Any]:
        """The API's answer, asserted equal to the reference's."""
        answer = await self.funnel(body, self.keys[product])
        assert answer.status_code == 200, (body, answer.text)
        got = answer.json()
        want = reference_funnel(self.rows, body, product)
        assert got["steps"] == want["steps"]
        assert got["breakdown"] == want["breakdown"]
        assert got["meta"]["breakdown_groups"] == want.get("groups")
        assert got["meta"]["window_seconds"] == _window_seconds(body.get("window", "7d"))
        return got


@pytest.fixture
async def funnel_api(
    api: ApiFactory, db: asyncpg.Connection, settings: Settings
) -> AsyncIterator[FunnelApi]:
    await store(db, generate_funnel_rows())
    rows = await stored_rows(db)
    # Keys made before the app starts are in its key cache from the first request.
    keys = {
        product: await create_key(settings, product, scopes=[Scope.READ]) for product in PRODUCTS
    }
    async with api(run_flusher=False, read_rate_limit_per_second=10_000) as app:
        yield FunnelApi(app, keys, rows)


def test_the_generated_data_has_what_funnels_must_handle() -> None:
    rows = generate_funnel_rows()
    assert any(row["user_id"] is None for row in rows)
    assert {row["product"] for row in rows} == set(PRODUCTS)
    in_both = {
        user
        for user in {row["user_id"] for row in rows}
        if {row["product"] for row in rows if row["user_id"] == user} == set(PRODUCTS)
    }
    assert in_both  # the same user ids act in both products
    instants = [(row["product"], row["user_id"], row["timestamp"]) for row in rows]
    assert len(set(instants)) < len(instants)  # events of a user at the same instant


EXAMPLES: dict[str, dict[str, Any]] = {
    "two steps": {"steps": [{"name": "visit"}, {"name": "signup"}]},
    "every step, a day's window": {
        "steps": [{"name": name} for name in STEPS],
        "window": "1d",
    },
    "the same step twice needs a second, later event": {
        "steps": [{"name": "visit"}, {"name": "visit"}, {"name": "signup"}],
        "window": 3 * 86400,
    },
    "a window of seconds": {"steps": [{"name": "signup"}, {"name": "apply"}], "window": 30},
    "the longest window": {
        "steps": [{"name": "visit"}, {"name": "apply"}, {"name": "accept"}],
        "window": "90d",
    },
    "filters on steps": {
        "steps": [
            {"name": "visit", "filters": [["is", "prop:plan", ["free", "pro"]]]},
            {"name": "signup", "filters": [["gte", "prop:n", [3]]]},
            {"name": "apply", "filters": [["is_not", "prop:utm.source", ["ad"]]]},
        ]
    },
    "breakdown by a nested property": {
        "steps": [{"name": "visit"}, {"name": "signup"}, {"name": "apply"}],
        "breakdown": "prop:utm.source",
    },
    "breakdown with strings, numbers, booleans and nulls, limited": {
        "steps": [{"name": "visit"}, {"name": "signup"}],
        "breakdown": "prop:plan",
        "breakdown_limit": 3,
    },
    "breakdown by context in New York across the DST change": {
        "steps": [{"name": "signup"}, {"name": "apply"}],
        "breakdown": "context:app.version",
        "timezone": "America/New_York",
        "date_range": ["2026-10-31", "2026-11-02"],
    },
    "steps out of the usual order": {
        "steps": [{"name": "apply"}, {"name": "signup"}, {"name": "visit"}],
        "window": "14d",
    },
}


@pytest.mark.parametrize("case", sorted(EXAMPLES))
async def test_answers_equal_the_reference(funnel_api: FunnelApi, case: str) -> None:
    body = {"date_range": RANGE, **EXAMPLES[case]}
    got = await funnel_api.check(body)
    assert got["steps"][0]["users"] > 0  # the example is not empty
    assert got["meta"]["date_range"][0].startswith(body["date_range"][0])


async def test_later_steps_may_happen_after_the_range_ends(funnel_api: FunnelApi) -> None:
    body = {
        "steps": [{"name": "signup"}, {"name": "apply"}],
        "date_range": ["2026-11-06", "2026-11-08"],
        "window": "7d",
    }
    got = await funnel_api.check(body)
    end = dt.datetime(2026, 11, 9, tzinfo=dt.UTC)
    paths = reference_funnel(funnel_api.rows, body, "clubs")["paths"]
    after_the_end = [path for path in paths if len(path) > 1 and path[1] >= end]
    assert after_the_end  # the data has such users: they count
    assert got["steps"][1]["users"] == sum(len(path) > 1 for path in paths)


async def test_an_entry_with_nothing_in_range_is_empty_not_an_error(
    funnel_api: FunnelApi,
) -> None:
    body = {
        "steps": [{"name": "visit"}, {"name": "signup"}],
        "date_range": ["2020-01-01", "2020-01-31"],
        "breakdown": "prop:plan",
    }
    got = await funnel_api.check(body)
    assert [step["users"] for step in got["steps"]] == [0, 0]
    assert got["steps"][1]["conversion_from_first"] is None
    assert got["steps"][1]["median_seconds_from_previous"] is None
    assert got["breakdown"] == []


async def test_exact_pairs_on_a_hand_made_timeline(api: ApiFactory, db: asyncpg.Connection) -> None:
    """The definitions, spelled out on one user each."""
    t0 = dt.datetime(2026, 11, 2, 12, tzinfo=dt.UTC)

    def event(user: str | None, name: str, seconds: float, product: str = "clubs") -> Any:
        return {
            "timestamp": t0 + dt.timedelta(seconds=seconds),
            "event_id": uuid.uuid4(),
            "product": product,
            "name": name,
            "user_id": user,
            "properties": {"plan": user or "none"},
            "context": None,
        }

    await store(
        db,
        [
            # a: the earliest visit in range is the entry, the earliest signup after it counts.
            event("a", "visit", -86400 * 3),  # before the range: not the entry
            event("a", "visit", 0),
            event("a", "visit", 50),
            event("a", "signup", 100),
            event("a", "signup", 40),
            # b: signup at the same instant as the visit is not after it.
            event("b", "visit", 0),
            event("b", "signup", 0),
            # c: signup before the visit, then one past the one-hour window.
            event("c", "signup", -10),
            event("c", "visit", 0),
            event("c", "signup", 3601),
            # d: exactly at the window's end still counts; 300.5 s after the visit.
            event("d", "visit", 0),
            event("d", "signup", 300.5),
            event("d", "apply", 3600),
            # No user, and another product: never count.
            event(None, "visit", 0),
            event(None, "signup", 10),
            event("b", "signup", 10, product="mobile"),
        ],
    )
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings, "clubs", scopes=[Scope.READ])
        answer = await app.client.post(
            "/v1/funnels",
            json={
                "steps": [{"name": "visit"}, {"name": "signup"}, {"name": "apply"}],
                "window": "1h",
                "date_range": ["2026-11-01", "2026-11-03"],
                "breakdown": "prop:plan",
            },
            headers={"Authorization": f"Bearer {key}"},
        )
    assert answer.status_code == 200, answer.text
    steps = answer.json()["steps"]
    assert [step["users"] for step in steps] == [4, 2, 1]
    assert steps[1]["conversion_from_first"] == 0.5
    assert steps[2]["conversion_from_previous"] == 0.5
    assert steps[1]["median_seconds_from_previous"] == (40 + 300.5) / 2
    assert steps[2]["median_seconds_from_previous"] == 3600 - 300.5
    by_value = {group["value"]: group["steps"] for group in answer.json()["breakdown"]}
    assert {value: [s["users"] for s in by_value[value]] for value in by_value} == {
        "a": [1, 1, 0],
        "b": [1, 0, 0],
        "c": [1, 0, 0],
        "d": [1, 1, 1],
    }


# --- any funnel ----------------------------------------------------------------------

FILTERS = st.sampled_from(
    [
        ["is", "prop:plan", ["free"]],
        ["is", "prop:plan", [1, True]],
        ["is_not", "prop:plan", ["pro"]],
        ["exists", "prop:utm"],
        ["gt", "prop:n", [4]],
        ["lte", "prop:n", [2.5]],
        ["contains", "prop:utm.source", ["a"]],
        ["is", "context:app.version", ["1.1"]],
        ["gt", "user", ["u3"]],
    ]
)
STEP = st.fixed_dictionaries(
    {"name": st.sampled_from([*STEPS, OTHER])},
    optional={"filters": st.lists(FILTERS, max_size=2)},
)
WINDOWS = st.sampled_from(["1s", "45s", "30m", "1h", "6h", "1d", "3d", "7d", 90, 172_800, "90d"])
BREAKDOWNS = st.sampled_from([None, "prop:plan", "prop:utm.source", "context:app.version"])


@st.composite
def funnels(draw: st.DrawFn) -> dict[str, Any]:
    first = draw(st.integers(-3, DAYS - 1))
    last = draw(st.integers(first, DAYS - 1))
    days = [(START + dt.timedelta(days=d)).date().isoformat() for d in (first, last)]
    body: dict[str, Any] = {
        "steps": draw(st.lists(STEP, min_size=2, max_size=5)),
        "date_range": days,
        "timezone": draw(st.sampled_from(ZONES)),
    }
    if draw(st.booleans()):
        body["window"] = draw(WINDOWS)
    breakdown = draw(BREAKDOWNS)
    if breakdown is not None:
        body["breakdown"] = breakdown
        body["breakdown_limit"] = draw(st.sampled_from([1, 2, 100]))
    return body


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=funnels(), product=st.sampled_from(PRODUCTS))
async def test_any_funnel_equals_the_reference(
    funnel_api: FunnelApi, body: dict[str, Any], product: str
) -> None:
    note(f"{product}: {json.dumps(body)}")
    await funnel_api.check(body, product)


async def test_eight_steps_run(funnel_api: FunnelApi) -> None:
    body = {
        "steps": [{"name": name} for name in (*STEPS, *STEPS)],
        "window": "90d",
        "date_range": RANGE,
        "breakdown": "prop:plan",
    }
    got = await funnel_api.check(body)
    assert len(got["steps"]) == 8


# --- who may read what -------------------------------------------------------------


async def test_a_read_key_reads_its_own_product_only(funnel_api: FunnelApi) -> None:
    body = {"steps": [{"name": "visit"}, {"name": "signup"}], "date_range": RANGE}
    for product in ("mobile", "nonexistent"):
        refused = await funnel_api.funnel({**body, "product": product})
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == "forbidden"
    clubs = await funnel_api.check(body, "clubs")
    mobile = await funnel_api.check(body, "mobile")
    assert clubs["steps"] != mobile["steps"]


async def test_an_admin_key_may_name_another_product(funnel_api: FunnelApi) -> None:
    admin = await create_key(funnel_api.app.settings, "clubs", scopes=[Scope.ADMIN])
    body = {"steps": [{"name": "visit"}, {"name": "signup"}], "date_range": RANGE}
    answer = await funnel_api.funnel({**body, "product": "mobile"}, admin)
    assert answer.status_code == 200, answer.text
    assert answer.json()["steps"] == reference_funnel(funnel_api.rows, body, "mobile")["steps"]


async def test_keys_without_the_read_scope_and_strangers_are_refused(
    funnel_api: FunnelApi,
) -> None:
    ingest = await create_key(funnel_api.app.settings, "clubs", scopes=[Scope.INGEST])
    body = {"steps": [{"name": "visit"}, {"name": "signup"}]}
    assert (await funnel_api.funnel(body, ingest)).status_code == 403
    client = funnel_api.app.client
    assert (await client.post("/v1/funnels", json=body)).status_code == 401
    # Authentication comes first: a stranger's bad body is a 401, not a 422.
    assert (await client.post("/v1/funnels", json={"steps": "nope"})).status_code == 401


async def test_hostile_keys_and_values_are_only_ever_data(
    funnel_api: FunnelApi, db: asyncpg.Connection
) -> None:
    before = await db.fetchval("SELECT count(*) FROM events")
    for field in ("prop:a'b", "prop:') OR 1=1--", 'prop:x"; DROP TABLE events; --'):
        body = {
            "steps": [
                {"name": "visit", "filters": [["is_not", field, ["' OR '1'='1"]]]},
                {"name": "signup", "filters": [["contains", "name", ["%_'"]]]},
            ],
            "date_range": RANGE,
            "breakdown": field,
        }
        got = await funnel_api.check(body)
        assert all(group["value"] is None for group in got["breakdown"])
    assert await db.fetchval("SELECT count(*) FROM events") == before


TWO = [{"name": "visit"}, {"name": "signup"}]
INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "no steps": ({}, "body.steps"),
    "one step": ({"steps": TWO[:1]}, "body.steps"),
    "nine steps": ({"steps": TWO * 4 + TWO[:1]}, "body.steps"),
    "a step without a name": ({"steps": [TWO[0], {"filters": []}]}, "body.steps.1.name"),
    "a name no event can have": ({"steps": [TWO[0], {"name": "a b"}]}, "body.steps.1.name"),
    "an unknown step field": ({"steps": [TWO[0], {"name": "x", "id": 1}]}, "body.steps.1.id"),
    "a bad filter": (
        {"steps": [TWO[0], {"name": "x", "filters": [["like", "name", ["x"]]]}]},
        "body.steps.1.filters",
    ),
    "a filter on an unknown field": (
        {"steps": [{"name": "x", "filters": [["is", "product", ["x"]]]}, TWO[1]]},
        "body.steps.0.filters",
    ),
    "a window of nothing": ({"steps": TWO, "window": "0s"}, "body.window"),
    "a window too long": ({"steps": TWO, "window": "91d"}, "body.window"),
    "a window in weeks": ({"steps": TWO, "window": "1w"}, "body.window"),
    "a negative window": ({"steps": TWO, "window": -5}, "body.window"),
    "a window in seconds too long": ({"steps": TWO, "window": 90 * 86400 + 1}, "body.window"),
    "a window that is a boolean": ({"steps": TWO, "window": True}, "body.window"),
    "bad range": ({"steps": TWO, "date_range": "fortnight"}, "body.date_range"),
    "range backwards": (
        {"steps": TWO, "date_range": ["2026-11-02", "2026-11-01"]},
        "body.date_range",
    ),
    "range past the year 9999": (
        {"steps": TWO, "date_range": ["2026-01-01", "9999-12-31"]},
        "body.date_range",
    ),
    "unknown zone": ({"steps": TWO, "timezone": "Mars/Olympus"}, "body.timezone"),
    "the host's zone file": ({"steps": TWO, "timezone": "localtime"}, "body.timezone"),
    "an instant past the year 9999 in UTC": (
        {"steps": TWO, "date_range": ["2026-01-01", "9999-12-31T23:00:00-05:00"]},
        "body.date_range",
    ),
    "breakdown by name": ({"steps": TWO, "breakdown": "name"}, "body.breakdown"),
    "breakdown by an empty key": ({"steps": TWO, "breakdown": "prop:"}, "body.breakdown"),
    "breakdown limit of 0": ({"steps": TWO, "breakdown_limit": 0}, "body.breakdown_limit"),
    "breakdown limit too large": ({"steps": TWO, "breakdown_limit": 1001}, "body.breakdown_limit"),
    "product not a string": ({"steps": TWO, "product": 5}, "body.product"),
    "unknown top-level field": ({"steps": TWO, "metrics": ["events"]}, "body.metrics"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
async def test_every_invalid_field_is_a_422_naming_it(funnel_api: FunnelApi, case: str) -> None:
    body, field = INVALID[case]
    answer = await funnel_api.funnel(body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_request"
    fields = [detail["field"] for detail in answer.json()["details"]]
    assert fields
    assert all(name.startswith(field) for name in fields), fields
