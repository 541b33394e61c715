"""``GET /v1/events``: raw events, newest first, a keyset page at a time.

Pages are held to a plain-Python reference over the stored rows (the same
filters as ``/v1/query``, through ``tests/read_reference.py``); a walk through
every page while events keep arriving sees each event exactly once, in order;
a cursor changed in any way, or sent with other parameters, is a 422.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from labs_analytics.auth.keys import Scope
from tests.helpers import ApiFactory, RunningApi, create_key
from tests.integration.test_query import generate_rows, store, stored_rows
from tests.read_reference import _matches

RANGE = {"from": "2026-10-26", "to": "2026-11-08"}
T0 = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)


class EventsApi:
    def __init__(self, app: RunningApi, keys: dict[str, str]) -> None:
        self.app = app
        self.keys = keys

    async def get(
        self, params: dict[str, Any] | list[tuple[str, Any]], key: str | None = "clubs"
    ) -> Any:
        headers = {} if key is None else {"Authorization": f"Bearer {self.keys.get(key, key)}"}
        return await self.app.client.get("/v1/events", params=params, headers=headers)

    async def walk(self, params: list[tuple[str, Any]], key: str = "clubs") -> list[dict[str, Any]]:
        """Every page, through the cursors: all the events, in the order given."""
        events: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = await self.get(params + ([("cursor", cursor)] if cursor else []), key)
            assert page.status_code == 200, page.text
            body = page.json()
            events += body["events"]
            cursor = body["next_cursor"]
            if cursor is None:
                return events


@pytest.fixture
async def events_api(api: ApiFactory, db: asyncpg.Connection) -> AsyncIterator[EventsApi]:
    async with api(run_flusher=False, read_rate_limit_per_second=10_000) as app:
        keys = {
            product: await create_key(app.settings, product, scopes=[Scope.READ])
            for product in ("clubs", "mobile", "courses")
        }
        keys["admin"] = await create_key(app.settings, "clubs", scopes=[Scope.READ, Scope.ADMIN])
        keys["ingest"] = await create_key(app.settings, "clubs", scopes=[Scope.INGEST])
        yield EventsApi(app, keys)


async def insert(db: asyncpg.Connection, rows: list[tuple[dt.datetime, uuid.UUID, str]]) -> None:
    await db.executemany(
        "INSERT INTO events (timestamp, event_id, product, name, user_id, properties, "
        "received_at) VALUES ($1, $2, $3, 'page.view', 'u1', '{}', now())",
        rows,
    )


def sort_key(event: dict[str, Any]) -> tuple[dt.datetime, uuid.UUID]:
    return dt.datetime.fromisoformat(event["timestamp"]), uuid.UUID(event["event_id"])


# --- walking the pages


async def test_pages_see_every_event_once_newest_first_while_events_arrive(
    events_api: EventsApi, db: asyncpg.Connection
) -> None:
    # 30 instants, 10 events at each: most page boundaries fall inside a tie.
    original = [
        (T0 - dt.timedelta(minutes=minute), uuid.uuid4(), "clubs")
        for minute in range(30)
        for _ in range(10)
    ]
    await insert(db, original)
    seen: list[dict[str, Any]] = []
    newer: set[uuid.UUID] = set()  # arrive above the cursor: never on a later page
    late: set[uuid.UUID] = set()  # arrive below it (late events): met further down
    params = [("date_range", "all"), ("limit", 7)]
    cursor = None
    for page_number in range(1000):
        page = await events_api.get(params + ([("cursor", cursor)] if cursor else []))
        assert page.status_code == 200, page.text
        body = page.json()
        seen += body["events"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        last = sort_key(body["events"][-1])
        arriving = [
            (T0 + dt.timedelta(seconds=page_number + 1), uuid.uuid4(), "clubs"),
            # The same instant as the page's last row: the event id decides the side.
            (last[0], uuid.uuid4(), "clubs"),
            (T0 - dt.timedelta(hours=2, seconds=page_number), uuid.uuid4(), "clubs"),
        ]
        await insert(db, arriving)
        for moment, event_id, _ in arriving:
            (late if (moment, event_id) < last else newer).add(event_id)
    keys = [sort_key(event) for event in seen]
    assert keys == sorted(keys, reverse=True)
    assert len(set(keys)) == len(keys), "an event was seen twice"
    ids = {uuid.UUID(event["event_id"]) for event in seen}
    assert ids == {event_id for _, event_id, _ in original} | late
    assert not ids & newer
    assert late, "some events arrived below the cursor"
    assert newer


async def test_the_walk_equals_the_reference_for_each_filter(
    events_api: EventsApi, db: asyncpg.Connection
) -> None:
    await store(db, generate_rows())
    rows = await stored_rows(db)
    cases: list[tuple[list[tuple[str, Any]], dict[str, Any]]] = [
        ([], {}),
        ([("name", "club.view"), ("name", "search")], {"names": ["club.view", "search"]}),
        ([("user", "u2"), ("user", "ü6")], {"users": ["u2", "ü6"]}),
        (
            [("filter", json.dumps(["gte", "prop:status_code", [500]]))],
            {"filters": [["gte", "prop:status_code", [500]]]},
        ),
        (
            [
                ("name", "http.request"),
                ("filter", json.dumps(["is", "prop:utm.source", ["web", "ad"]])),
                ("filter", json.dumps(["is_not", "context:app.version", ["1.0"]])),
            ],
            {
                "names": ["http.request"],
                "filters": [
                    ["is", "prop:utm.source", ["web", "ad"]],
                    ["is_not", "context:app.version", ["1.0"]],
                ],
            },
        ),
        (
            [("filter", json.dumps(["contains", "prop:route", ["club"]]))],
            {"filters": [["contains", "prop:route", ["club"]]]},
        ),
    ]
    for zone in ("UTC", "America/New_York", "Asia/Kolkata"):
        for params, wanted in cases:
            got = await events_api.walk(
                [("from", "2026-10-28"), ("to", "2026-11-03"), ("timezone", zone), *params]
            )
            start = dt.datetime.combine(dt.date(2026, 10, 28), dt.time(), ZoneInfo(zone))
            end = dt.datetime.combine(dt.date(2026, 11, 4), dt.time(), ZoneInfo(zone))
            expected = sorted(
                (
                    row
                    for row in rows
                    if row["product"] == "clubs"
                    and start <= row["timestamp"] < end
                    and (not wanted.get("names") or row["name"] in wanted["names"])
                    and (not wanted.get("users") or row["user_id"] in wanted["users"])
                    and all(_matches(row, flt) for flt in wanted.get("filters", []))
                ),
                key=lambda row: (row["timestamp"], row["event_id"]),
                reverse=True,
            )
            assert [uuid.UUID(event["event_id"]) for event in got] == [
                row["event_id"] for row in expected
            ], (zone, params)
            assert expected, "every case should match some events"


async def test_a_row_shows_the_event_as_stored(
    events_api: EventsApi, db: asyncpg.Connection
) -> None:
    event_id = uuid.uuid4()
    properties = (
        '{"n": 12345678901234567890, "x": 0.1, "s": "ü \\"q\\" \\u2028", '
        '"nested": {"deep": [1, true, null]}, "e": 1e400}'
    )
    await db.execute(
        "INSERT INTO events (timestamp, event_id, product, name, user_id, properties, context, "
        "received_at) VALUES ('2026-11-20T12:00:00.123456Z', $1, 'clubs', 'page.view', NULL, "
        "$2::jsonb, NULL, '2026-11-20T12:00:01Z')",
        event_id,
        properties,
    )
    page = await events_api.get({"date_range": "all"})
    assert page.status_code == 200
    assert page.headers["content-type"] == "application/json"
    (row,) = page.json()["events"]
    stored = json.loads(await db.fetchval("SELECT properties::text FROM events"))
    assert row == {
        "event_id": str(event_id),
        "timestamp": "2026-11-20T12:00:00.123456Z",
        "name": "page.view",
        "user": None,
        "properties": stored,  # exact: a 20-digit integer and 1e400 survive
        "context": None,
        "received_at": "2026-11-20T12:00:01Z",
        "corrected_timestamp": None,  # the request did not say when it was sent
        "clock_skew_ms": None,
    }
    assert row["properties"]["n"] == 12345678901234567890
    assert row["properties"]["e"] == 10**400
    assert page.json()["next_cursor"] is None


async def test_the_cursor_keeps_the_range_of_the_first_page(
    events_api: EventsApi, db: asyncpg.Connection
) -> None:
    await insert(db, [(T0 - dt.timedelta(seconds=s), uuid.uuid4(), "clubs") for s in range(5)])
    first = (await events_api.get({"date_range": "all", "limit": 2})).json()
    second = (
        await events_api.get({"date_range": "all", "limit": 2, "cursor": first["next_cursor"]})
    ).json()
    assert second["meta"]["date_range"] == first["meta"]["date_range"]
    # The limit may change from page to page; the cursor stays valid.
    rest = await events_api.get({"date_range": "all", "limit": 10, "cursor": first["next_cursor"]})
    assert rest.status_code == 200
    assert len(rest.json()["events"]) == 3


# --- cursors that are not ours


def _flip(text: str, index: int) -> str:
    replacement = "A" if text[index] != "A" else "B"
    return text[:index] + replacement + text[index + 1 :]


async def test_a_tampered_cursor_is_a_422(events_api: EventsApi, db: asyncpg.Connection) -> None:
    await insert(db, [(T0 - dt.timedelta(seconds=s), uuid.uuid4(), "clubs") for s in range(5)])
    params = {"date_range": "all", "limit": 2, "name": "page.view"}
    cursor = (await events_api.get(params)).json()["next_cursor"]
    assert cursor
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    tampered = {
        **{f"character {i} changed": _flip(cursor, i) for i in range(len(cursor))},
        "cut short": cursor[:-4],
        "one character more": cursor + "A",
        "not base64": "%%%",
        "padding": cursor + "==",
        "a byte flipped, re-encoded": base64.urlsafe_b64encode(
            raw[:9] + bytes([raw[9] ^ 1]) + raw[10:]
        ).decode(),
        "random bytes": base64.urlsafe_b64encode(uuid.uuid4().bytes * 4).decode(),
        "empty": "",
        "too long": "A" * 201,
    }
    for case, text in tampered.items():
        answer = await events_api.get({**params, "cursor": text})
        assert answer.status_code == 422, (case, answer.text)
        assert answer.json()["error"] == "invalid_request"
        assert answer.json()["details"][0]["field"] == "query.cursor", case
    # With other parameters, the cursor is refused too.
    for other in (
        {**params, "name": "club.view"},
        {**params, "date_range": "7d"},
        {**params, "timezone": "Asia/Kolkata"},
        {"date_range": "all", "limit": 2},
    ):
        answer = await events_api.get({**other, "cursor": cursor})
        assert answer.status_code == 422, (other, answer.text)
        assert answer.json()["details"][0]["field"] == "query.cursor"
    # And from another product (an admin key can name one).
    answer = await events_api.get({**params, "product": "mobile", "cursor": cursor}, "admin")
    assert answer.status_code == 422
    assert (await events_api.get({**params, "cursor": cursor})).status_code == 200


# --- who may read what


async def test_only_the_keys_product_is_listed(
    events_api: EventsApi, db: asyncpg.Connection
) -> None:
    await store(db, generate_rows())
    rows = await stored_rows(db)
    for product in ("clubs", "mobile"):
        got = await events_api.walk([("date_range", "all"), ("limit", 1000)], key=product)
        expected = {(r["timestamp"], r["event_id"]) for r in rows if r["product"] == product}
        assert {sort_key(event) for event in got} == expected
    # An admin key may name another product; a read key may not.
    admin = await events_api.walk([("date_range", "all"), ("product", "courses")], key="admin")
    assert len(admin) == sum(r["product"] == "courses" for r in rows)
    refused = await events_api.get({"product": "mobile"}, "clubs")
    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden"


async def test_strangers_and_ingest_keys_are_refused_before_parameters_are_read(
    events_api: EventsApi,
) -> None:
    invalid = {"limit": 0, "cursor": "%%%"}
    stranger = await events_api.get(invalid, key=None)
    assert stranger.status_code == 401
    assert (await events_api.get(invalid, key="lak_nothing")).status_code == 401
    assert (await events_api.get({}, key="ingest")).status_code == 403


async def test_hostile_values_are_only_data(events_api: EventsApi, db: asyncpg.Connection) -> None:
    await store(db, generate_rows())
    for value in ("' OR '1'='1", "clubs' --", "%", "\\"):
        for name in ("name", "user"):
            answer = await events_api.get({"date_range": "all", name: value})
            assert answer.status_code == 200
            assert answer.json()["events"] == []
        flt = json.dumps(["is", f"prop:{value}", [value]])
        answer = await events_api.get({"date_range": "all", "filter": flt})
        assert answer.status_code == 200
        assert answer.json()["events"] == []


INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "limit 0": ({"limit": 0}, "query.limit"),
    "limit too large": ({"limit": 1001}, "query.limit"),
    "filter not JSON": ({"filter": "is name x"}, "query.filter"),
    "unknown operator": ({"filter": '["like", "name", ["x"]]'}, "query.filter"),
    "unknown field": ({"filter": '["is", "product", ["x"]]'}, "query.filter"),
    "64-bit overflow": ({"filter": '["gt", "prop:n", [1e999]]'}, "query.filter"),
    "bad range": ({"date_range": "fortnight"}, "query.date_range"),
    "range and from": ({"date_range": "7d", "from": "2026-01-01"}, "query.from"),
    "to before from": ({"from": "2026-02-01", "to": "2026-01-01"}, "query.to"),
    "not a date": ({"from": "2026-13-01"}, "query.from"),
    "to past 9999": ({"to": "9999-12-31"}, "query.to"),
    "before 1970 locally": ({"from": "1970-01-01", "timezone": "Asia/Tokyo"}, "query.from"),
    "unknown zone": ({"timezone": "Mars/Olympus"}, "query.timezone"),
    "NUL in a name": ({"name": "a\x00b"}, "query.name"),
    "NUL in a filter": ({"filter": '["is", "name", ["a\\u0000"]]'}, "query.filter"),
    "user too long": ({"user": "u" * 257}, "query.user"),
    "unknown parameter": ({"names": "x"}, "query.names"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
async def test_every_invalid_parameter_is_a_422_naming_it(events_api: EventsApi, case: str) -> None:
    params, field = INVALID[case]
    answer = await events_api.get(params)
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["error"] == "invalid_request"
    # A repeated parameter is named with the position of the wrong value (query.user.0).
    assert any(
        detail["field"] == field or detail["field"].startswith(f"{field}.")
        for detail in body["details"]
    ), body


async def test_a_user_id_with_any_characters_is_one_value(
    events_api: EventsApi, db: asyncpg.Connection
) -> None:
    user = "ü/ser %2F&name=x'"
    await db.execute(
        "INSERT INTO events (timestamp, event_id, product, name, user_id, properties, "
        "received_at) VALUES (now(), gen_random_uuid(), 'clubs', 'x', $1, '{}', now())",
        user,
    )
    answer = await events_api.app.client.get(
        f"/v1/events?user={quote(user, safe='')}",
        headers={"Authorization": f"Bearer {events_api.keys['clubs']}"},
    )
    assert [event["user"] for event in answer.json()["events"]] == [user]
