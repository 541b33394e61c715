"""``POST /v1/query`` against a reference in plain Python, on generated data.

The data has what real traffic has: several products (and one event id sent
by two of them), events stored twice by a retry, late events, users and no
users, numbers, strings, booleans and nested objects in properties. Every
answer the API gives must equal the reference's (``tests/read_reference.py``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from labs_analytics.auth.keys import Scope
from labs_analytics.storage.rollups import mark_dirty_sql
from tests.helpers import ApiFactory, RunningApi, create_key, make_event, wait_for_events
from tests.read_reference import reference_query

PRODUCTS = ("clubs", "mobile", "courses")
NAMES = ("page.view", "club.view", "club.apply", "http.request", "search")
USERS = ("u1", "u2", "u3", "u4", "u5", "ü6", None)
ROUTES = ("/clubs", "/clubs/{club_id}", "/search", "/api/v1/'quoted'")
START = dt.datetime(2026, 10, 26, tzinfo=dt.UTC)  # a Monday; DST ends in New York on 11-01
DAYS = 14
ZONES = ("UTC", "America/New_York", "Asia/Kolkata")


def _properties(rng: random.Random) -> dict[str, Any]:
    properties: dict[str, Any] = {"route": rng.choice(ROUTES)}
    if rng.random() < 0.8:
        properties["status_code"] = rng.choice([200, 200, 201, 404, 500, 503])
    if rng.random() < 0.8:
        # Numbers of every shape, and now and then not a number at all.
        properties["duration_ms"] = rng.choice(
            [rng.randint(1, 900), round(rng.uniform(0.5, 900), 2), "slow", True, None]
        )
    if rng.random() < 0.5:
        properties["utm"] = {"source": rng.choice(["mail", "web", "ad"])}
    if rng.random() < 0.3:
        properties["ok"] = rng.random() < 0.5
    return properties


def generate_rows(seed: int = 7, count: int = 600) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(count):
        timestamp = START + dt.timedelta(seconds=rng.randint(0, DAYS * 86400 - 1))
        rows.append(
            {
                "timestamp": timestamp,
                "event_id": uuid.UUID(int=rng.getrandbits(128)),
                "product": rng.choice(PRODUCTS),
                "name": rng.choice(NAMES),
                "user_id": rng.choice(USERS),
                "properties": _properties(rng),
                "context": {"app": {"version": rng.choice(["1.0", "1.1"])}}
                if rng.random() < 0.5
                else None,
            }
        )
    # A retry: the same events again (stored once); one id in two products (two events).
    rows += [dict(row) for row in rng.sample(rows, 40)]
    twin = dict(rows[0])
    twin["product"] = next(p for p in PRODUCTS if p != rows[0]["product"])
    rows.append(twin)
    return rows


async def store(db: asyncpg.Connection, rows: list[dict[str, Any]]) -> None:
    """As the flusher stores: each (timestamp, product, event_id) once, and every
    hour written into marked for the rollups, in the same transaction."""
    async with db.transaction():
        await _insert(db, rows)
        await db.execute(mark_dirty_sql("events"))


async def _insert(db: asyncpg.Connection, rows: list[dict[str, Any]]) -> None:
    await db.executemany(
        "INSERT INTO events (timestamp, event_id, product, name, user_id, properties, context, "
        "received_at) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, now()) "
        "ON CONFLICT DO NOTHING",
        [
            (
                row["timestamp"],
                row["event_id"],
                row["product"],
                row["name"],
                row["user_id"],
                json.dumps(row["properties"]),
                None if row["context"] is None else json.dumps(row["context"]),
            )
            for row in rows
        ],
    )


async def stored_rows(db: asyncpg.Connection) -> list[dict[str, Any]]:
    records = await db.fetch(
        "SELECT timestamp, event_id, product, name, user_id, properties::text AS properties, "
        "context::text AS context FROM events"
    )
    return [
        {
            **dict(record),
            "properties": json.loads(record["properties"]),
            "context": None if record["context"] is None else json.loads(record["context"]),
        }
        for record in records
    ]


class ReadApi:
    """The app with a read key per product, and the rows as stored."""

    def __init__(self, app: RunningApi, keys: dict[str, str], rows: list[dict[str, Any]]) -> None:
        self.app = app
        self.keys = keys
        self.rows = rows

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return f"ReadApi({len(self.rows)} rows)"

    async def query(self, body: dict[str, Any], product: str = "clubs") -> Any:
        answer = await self.app.client.post(
            "/v1/query", json=body, headers={"Authorization": f"Bearer {self.keys[product]}"}
        )
        return answer


@pytest.fixture
async def read_api(api: ApiFactory, db: asyncpg.Connection) -> AsyncIterator[ReadApi]:
    await store(db, generate_rows())
    rows = await stored_rows(db)
    async with api(run_flusher=False, read_rate_limit_per_second=10_000) as app:
        keys = {
            product: await create_key(app.settings, product, scopes=[Scope.READ])
            for product in PRODUCTS
        }
        yield ReadApi(app, keys, rows)


def assert_same(api_answer: dict[str, Any], expected: tuple[list[dict[str, Any]], int]) -> None:
    results, total = expected
    assert api_answer["meta"]["total_rows"] == total
    assert len(api_answer["results"]) == len(results)
    for got, want in zip(api_answer["results"], results, strict=True):
        assert got["dimensions"] == want["dimensions"]
        for value, reference in zip(got["metrics"], want["metrics"], strict=True):
            if isinstance(reference, float) or isinstance(value, float):
                assert value is not None
                assert math.isclose(value, reference, rel_tol=1e-12), (got, want)
            else:
                assert value == reference, (got, want)


def test_the_generated_data_has_duplicates_and_a_shared_id() -> None:
    rows = generate_rows()
    keys = {(row["timestamp"], row["product"], row["event_id"]) for row in rows}
    assert len(keys) < len(rows)  # retries
    assert len({(row["timestamp"], row["event_id"]) for row in rows}) < len(keys)  # shared id


async def test_stored_rows_are_the_deduplicated_events(
    read_api: ReadApi,
) -> None:
    rows = read_api.rows
    generated = generate_rows()
    assert len(rows) == len({(r["timestamp"], r["product"], r["event_id"]) for r in generated})


EXAMPLES: dict[str, dict[str, Any]] = {
    "total": {"metrics": ["events", "users"]},
    "daily series": {"metrics": ["events", "users"], "dimensions": ["time:day"]},
    "hourly in New York across the DST change": {
        "metrics": ["events"],
        "dimensions": ["time:hour"],
        "timezone": "America/New_York",
        "date_range": ["2026-10-31", "2026-11-02"],
        "limit": 1000,
    },
    "weekly in Kolkata": {
        "metrics": ["events", "users"],
        "dimensions": ["time:week"],
        "timezone": "Asia/Kolkata",
    },
    "monthly": {"metrics": ["events"], "dimensions": ["time:month"]},
    "latency by route": {
        "metrics": ["events", "p50:duration_ms", "p95:duration_ms", "p99:duration_ms"],
        "dimensions": ["prop:route"],
        "filters": [["is", "name", ["http.request"]]],
    },
    "errors": {
        "metrics": ["events", "sum:status_code", "avg:duration_ms", "min:duration_ms"],
        "dimensions": ["name"],
        "filters": [["gte", "prop:status_code", [500]]],
    },
    "top users": {
        "metrics": ["events", "max:duration_ms"],
        "dimensions": ["user"],
        "order_by": [["events", "desc"]],
        "limit": 3,
    },
    "nested property": {
        "metrics": ["events"],
        "dimensions": ["prop:utm.source", "context:app.version"],
        "filters": [["exists", "prop:utm"]],
    },
    "is_not keeps events without the field": {
        "metrics": ["events"],
        "filters": [["is_not", "prop:status_code", [200, 201]]],
    },
    "booleans are not numbers": {
        "metrics": ["events", "sum:duration_ms"],
        "filters": [["is", "prop:ok", [True]]],
    },
    "contains": {"metrics": ["users"], "filters": [["contains", "prop:route", ["club"]]]},
    # `users` is counted per user first, then per group (read/query.py): the edges of that.
    "users before events, by user": {"metrics": ["users", "events"], "dimensions": ["user"]},
    "users by name and a property": {
        "metrics": ["events", "users"],
        "dimensions": ["name", "prop:route"],
    },
    "events and users of an empty range": {
        "metrics": ["events", "users"],
        "date_range": ["2001-01-01", "2001-01-02"],
    },
    "second page": {
        "metrics": ["events"],
        "dimensions": ["name", "user"],
        "limit": 5,
        "offset": 5,
    },
}


@pytest.mark.parametrize("case", sorted(EXAMPLES))
async def test_answers_equal_the_reference(read_api: ReadApi, case: str) -> None:
    api, rows = read_api, read_api.rows
    body = {"date_range": ["2026-10-26", "2026-11-08"], **EXAMPLES[case]}
    answer = await api.query(body)
    assert answer.status_code == 200, answer.text
    # Rollups only where they can answer (tests/integration/test_rollups.py).
    assert answer.json()["meta"]["source"] in ("raw", "rollup")
    assert_same(answer.json(), reference_query(rows, body, "clubs"))


FIELDS = st.sampled_from(
    ["name", "user", "prop:route", "prop:status_code", "prop:duration_ms", "prop:utm.source"]
)
METRICS = st.sampled_from(
    [
        "events",
        "users",
        "sum:duration_ms",
        "avg:duration_ms",
        "p90:duration_ms",
        "max:status_code",
        "p50:status_code",
    ]
)
DIMENSIONS = st.sampled_from(
    [
        "time:hour",
        "time:day",
        "time:week",
        "time:month",
        "name",
        "user",
        "prop:route",
        "prop:status_code",
        "prop:utm.source",
        "context:app.version",
    ]
)


@st.composite
def filters(draw: st.DrawFn) -> list[Any]:
    field = draw(FIELDS)
    operator = draw(st.sampled_from(["is", "is_not", "exists", "gt", "lte", "contains"]))
    if operator == "exists":
        return [operator, field]
    if operator in ("gt", "lte"):
        if field in ("name", "user"):  # text, compared byte by byte
            return [operator, field, [draw(st.sampled_from(["club", "u3", "/s"]))]]
        if field in ("prop:status_code", "prop:duration_ms"):  # numbers
            return [operator, field, [draw(st.sampled_from([0, 100, 250.5, 404, 500]))]]
        operator = "is"
    if operator == "contains":
        field = draw(st.sampled_from(["name", "user", "prop:route"]))
        return [operator, field, [draw(st.sampled_from(["club", "u", "'", "view"]))]]
    values = st.sampled_from([*NAMES, "u2", "/clubs", 200, 500, 404.0, "web", True])
    return [operator, field, draw(st.lists(values, min_size=1, max_size=3))]


@st.composite
def queries(draw: st.DrawFn) -> dict[str, Any]:
    first = draw(st.integers(0, DAYS - 1))
    last = draw(st.integers(first, min(DAYS - 1, first + 6)))
    days = [(START + dt.timedelta(days=d)).date().isoformat() for d in (first, last)]
    metrics = draw(st.lists(METRICS, min_size=1, max_size=3, unique=True))
    dimensions = draw(st.lists(DIMENSIONS, max_size=2, unique=True))
    if sum(d.startswith("time:") for d in dimensions) > 1:
        dimensions = dimensions[:1]
    body: dict[str, Any] = {
        "metrics": metrics,
        "dimensions": dimensions,
        "date_range": days,
        "timezone": draw(st.sampled_from(ZONES)),
        "filters": draw(st.lists(filters(), max_size=2)),
        "limit": draw(st.sampled_from([1, 7, 100, 1000])),
        "offset": draw(st.sampled_from([0, 0, 2])),
    }
    if draw(st.booleans()):
        orderable = metrics + dimensions
        body["order_by"] = [
            [draw(st.sampled_from(orderable)), draw(st.sampled_from(["asc", "desc"]))]
        ]
    return body


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=queries(), product=st.sampled_from(PRODUCTS))
async def test_any_query_equals_the_reference(
    read_api: ReadApi, body: dict[str, Any], product: str
) -> None:
    api, rows = read_api, read_api.rows
    note(f"{product}: {json.dumps(body)}")
    answer = await api.query(body, product)
    assert answer.status_code == 200, (body, answer.text)
    assert_same(answer.json(), reference_query(rows, body, product))


async def test_events_sent_twice_through_the_pipeline_are_counted_once(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    async with api(run_flusher=True) as app:
        ingest = await create_key(app.settings, "clubs")
        read = await create_key(app.settings, "clubs", scopes=[Scope.READ])
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        late = now - dt.timedelta(days=3)  # a late event: days old when it arrives
        batch = {
            "events": [
                make_event(name="club.view", user=f"u{i % 4}", timestamp=now.isoformat())
                for i in range(30)
            ]
            + [make_event(name="club.view", user="u9", timestamp=late.isoformat())]
        }
        for _ in range(2):  # a client retrying a batch it never got an answer for
            assert (await app.post(batch, ingest)).status_code == 202
        await wait_for_events(db, 31)
        answer = await app.client.post(
            "/v1/query",
            json={"metrics": ["events", "users"], "date_range": "7d"},
            headers={"Authorization": f"Bearer {read}"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"] == [{"dimensions": [], "metrics": [31, 5]}]
