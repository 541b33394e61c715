"""Who may read what, and what no request can make the read API do.

A key reads its own product only (``admin`` may name another); whatever the
request names — fields, keys, values, products — it reaches SQL as a bind
parameter, never as SQL text; a heavy query is cancelled on the server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from labs_analytics.auth.keys import Scope
from tests.helpers import ApiFactory, RunningApi, create_key
from tests.integration.test_query import generate_rows, store

RANGE = ["2026-10-26", "2026-11-08"]


@pytest.fixture
async def app(api: ApiFactory, db: asyncpg.Connection) -> AsyncIterator[RunningApi]:
    await store(db, generate_rows())
    async with api(run_flusher=False, read_rate_limit_per_second=10_000) as running:
        yield running


async def query(app: RunningApi, key: str, body: dict[str, Any]) -> Any:
    return await app.client.post("/v1/query", json=body, headers={"Authorization": f"Bearer {key}"})


async def counts_by_product(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch("SELECT product, count(*) AS n FROM events GROUP BY product")
    return {row["product"]: row["n"] for row in rows}


async def test_a_read_key_reads_its_own_product_only(
    app: RunningApi, db: asyncpg.Connection
) -> None:
    counts = await counts_by_product(db)
    key = await create_key(app.settings, "clubs", scopes=[Scope.READ])
    own = await query(app, key, {"metrics": ["events"], "date_range": RANGE})
    assert own.json()["results"] == [{"dimensions": [], "metrics": [counts["clubs"]]}]
    for body in (
        {"metrics": ["events"], "date_range": RANGE, "product": "mobile"},
        {"metrics": ["events"], "date_range": RANGE, "product": "nonexistent"},
    ):
        refused = await query(app, key, body)
        assert refused.status_code == 403
        assert refused.json()["error"] == "forbidden"


async def test_an_admin_key_may_name_another_product(
    app: RunningApi, db: asyncpg.Connection
) -> None:
    counts = await counts_by_product(db)
    admin = await create_key(app.settings, "clubs", scopes=[Scope.ADMIN])
    other = await query(
        app, admin, {"metrics": ["events"], "date_range": RANGE, "product": "mobile"}
    )
    assert other.status_code == 200
    assert other.json()["results"][0]["metrics"] == [counts["mobile"]]


async def test_keys_without_the_read_scope_and_strangers_are_refused(app: RunningApi) -> None:
    ingest = await create_key(app.settings, "clubs", scopes=[Scope.INGEST])
    body = {"metrics": ["events"]}
    assert (await query(app, ingest, body)).status_code == 403
    assert (await app.client.post("/v1/query", json=body)).status_code == 401
    # Authentication comes first: a stranger's bad body is a 401, not a 422.
    assert (await app.client.post("/v1/query", json={"metrics": "nope"})).status_code == 401


HOSTILE_KEYS = [
    "prop:a'b",
    "prop:') OR 1=1--",
    'prop:route"; DROP TABLE events; --',
    "prop:{route}",
    "prop:$.route",
    "prop:a,b",
    "prop:" + "k" * 120 + "." + "'" * 120,
    "context:app.'version'",
]


@pytest.mark.parametrize("field", HOSTILE_KEYS)
async def test_hostile_keys_are_only_ever_data(
    app: RunningApi, db: asyncpg.Connection, field: str
) -> None:
    key = await create_key(app.settings, "clubs", scopes=[Scope.READ])
    before = await counts_by_product(db)
    for body in (
        {"metrics": ["events", "p95:" + field], "dimensions": [field], "date_range": RANGE},
        {"metrics": ["users"], "filters": [["is", field, ["x' OR '1'='1"]]], "date_range": RANGE},
        {"metrics": ["events"], "filters": [["gt", field, [1]]], "date_range": RANGE},
        {"metrics": ["events"], "filters": [["contains", field, ["%_'"]]], "date_range": RANGE},
    ):
        answer = await query(app, key, body)
        assert answer.status_code == 200, answer.text
        # No event has such a property: everything is empty, nothing of another product.
        for row in answer.json()["results"]:
            assert row["dimensions"] in ([], [None])
    assert await counts_by_product(db) == before  # and nothing was changed


async def test_hostile_values_match_nothing_and_leak_nothing(app: RunningApi) -> None:
    key = await create_key(app.settings, "clubs", scopes=[Scope.READ])
    for value in ("' OR '1'='1", "mobile", "%", "_", "\\", "clubs' --"):
        for field in ("name", "user", "prop:route"):
            answer = await query(
                app,
                key,
                {"metrics": ["events"], "filters": [["is", field, [value]]], "date_range": RANGE},
            )
            assert answer.status_code == 200
            assert answer.json()["results"] == [{"dimensions": [], "metrics": [0]}]


INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "no metrics": ({"metrics": []}, "body.metrics"),
    "unknown metric": ({"metrics": ["clicks"]}, "body.metrics"),
    "unknown aggregate": ({"metrics": ["median:duration_ms"]}, "body.metrics"),
    "unknown dimension": ({"metrics": ["events"], "dimensions": ["time:year"]}, "body.dimensions"),
    "two time dimensions": (
        {"metrics": ["events"], "dimensions": ["time:day", "time:hour"]},
        "body.dimensions",
    ),
    "key too long": (
        {"metrics": ["events"], "dimensions": ["prop:" + "k" * 10_000]},
        "body.dimensions",
    ),
    "unknown field": (
        {"metrics": ["events"], "filters": [["is", "product", ["x"]]]},
        "body.filters",
    ),
    "unknown operator": (
        {"metrics": ["events"], "filters": [["like", "name", ["x"]]]},
        "body.filters",
    ),
    "gt without a number": (
        {"metrics": ["events"], "filters": [["gt", "prop:n", ["x"]]]},
        "body.filters",
    ),
    "exists with values": (
        {"metrics": ["events"], "filters": [["exists", "name", ["x"]]]},
        "body.filters",
    ),
    "bad range": ({"metrics": ["events"], "date_range": "fortnight"}, "body.date_range"),
    "range backwards": (
        {"metrics": ["events"], "date_range": ["2026-11-02", "2026-11-01"]},
        "body.date_range",
    ),
    "instant without offset": (
        {"metrics": ["events"], "date_range": ["2026-11-01T00:00:00", "2026-11-02"]},
        "body.date_range",
    ),
    "unknown zone": ({"metrics": ["events"], "timezone": "Mars/Olympus"}, "body.timezone"),
    "order by unknown": ({"metrics": ["events"], "order_by": [["users", "asc"]]}, "body"),
    "limit too large": ({"metrics": ["events"], "limit": 10_001}, "body.limit"),
    "unknown top-level field": ({"metrics": ["events"], "group_by": ["name"]}, "body.group_by"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
async def test_every_invalid_field_is_a_422_naming_it(app: RunningApi, case: str) -> None:
    body, field = INVALID[case]
    key = await create_key(app.settings, "clubs", scopes=[Scope.READ])
    answer = await query(app, key, body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_request"
    assert any(detail["field"].startswith(field) for detail in answer.json()["details"]), (
        answer.json()
    )


async def test_a_query_past_the_time_limit_is_cancelled_on_the_server(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    # Enough rows that a percentile over all of them takes far longer than the limit.
    await db.execute(
        "INSERT INTO events (timestamp, event_id, product, name, properties, received_at) "
        "SELECT timestamp '2026-11-01' + make_interval(secs => i), gen_random_uuid(), 'clubs', "
        "'http.request', jsonb_build_object('duration_ms', i % 997, 'route', 'r' || (i % 50)), "
        "now() FROM generate_series(1, 300000) AS i"
    )
    async with api(run_flusher=False, query_timeout_seconds=0.02) as app:
        key = await create_key(app.settings, "clubs", scopes=[Scope.READ])
        answer = await query(
            app,
            key,
            {
                "metrics": ["p50:duration_ms", "p99:duration_ms", "users"],
                "dimensions": ["prop:route"],
                "date_range": ["2026-10-01", "2026-11-30"],
            },
        )
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "query_timeout"
        # Nothing of it keeps running on the server.
        deadline = asyncio.get_running_loop().time() + 5
        while await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'labs-analytics read' AND state = 'active'"
        ):
            assert asyncio.get_running_loop().time() < deadline, "the query still runs"
            await asyncio.sleep(0.05)


async def test_a_key_starting_too_many_queries_is_rate_limited(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    async with api(run_flusher=False, read_rate_limit_per_second=1) as app:
        key = await create_key(app.settings, "clubs", scopes=[Scope.READ])
        statuses = [(await query(app, key, {"metrics": ["events"]})).status_code for _ in range(5)]
        assert statuses[0] == 200
        assert 429 in statuses
        limited = await query(app, key, {"metrics": ["events"]})
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1


async def test_relative_ranges_resolve_in_the_time_zone(app: RunningApi) -> None:
    key = await create_key(app.settings, "clubs", scopes=[Scope.READ])
    answer = await query(
        app, key, {"metrics": ["events"], "date_range": "7d", "timezone": "Asia/Kolkata"}
    )
    start, end = map(dt.datetime.fromisoformat, answer.json()["meta"]["date_range"])
    assert end - start == dt.timedelta(days=7)
    assert start.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert (start.hour, start.minute) == (0, 0)
