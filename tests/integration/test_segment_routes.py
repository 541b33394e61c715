"""Segment-compatible routes at the HTTP level: what analytics.js, the server
libraries and curl send, and what lands (ingest.segment's mapping)."""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from labs_analytics.api.segment import BATCH_PATHS, MESSAGE_PATHS
from labs_analytics.ingest.segment import MAX_BATCH_MESSAGES, MESSAGE_ID_NAMESPACE
from tests.helpers import (
    ApiFactory,
    RunningApi,
    create_key,
    create_key_with_rate,
    event_rows,
    wait_for_drained_stream,
    wait_for_events,
)

TIMESTAMP = "2026-11-30T15:04:05.123Z"


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def track(event: str = "Order Completed", **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "track",
        "event": event,
        "userId": "u_1",
        "properties": {"revenue": 12.5},
        "timestamp": TIMESTAMP,
        "messageId": str(uuid.uuid4()),
    }
    message.update(fields)
    return message


async def post(
    app: RunningApi, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await app.client.post(
        path, content=content, headers={"Content-Type": "application/json", **(headers or {})}
    )


async def test_a_batch_of_every_type_lands_with_the_documented_mapping(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    async with api() as app:
        key = await create_key(app.settings)
        batch = [
            track("Order Completed 🛒", anonymousId="anon-1", integrations={"All": False}),
            {
                "type": "page",
                "name": "Home",
                "category": "Docs",
                "properties": {"path": "/"},
                "anonymousId": "anon-1",
                "messageId": "page-msg-1",
                "timestamp": TIMESTAMP,
            },
            {"type": "screen", "name": "Feed", "userId": 42, "messageId": "s-1"},
            {"type": "identify", "userId": "u_1", "traits": {"email": "a@b.c"}, "messageId": "i-1"},
            {"type": "group", "userId": "u_1", "groupId": "g1", "traits": {"n": 3}},
            {"type": "alias", "userId": "u_1", "previousId": "anon-1", "messageId": "a-1"},
        ]
        response = await post(
            app, "/v1/batch", {"batch": batch, "context": {"app": "penn-clubs"}}, basic(key)
        )
        assert response.status_code == 200
        assert response.json() == {"success": True}
        await wait_for_events(db, 6, product="clubs")

    rows = {row["name"]: row for row in await event_rows(db, "clubs")}
    assert set(rows) == {
        "Order Completed 🛒",
        "page.view",
        "screen.view",
        "identify",
        "group",
        "alias",
    }
    tracked = rows["Order Completed 🛒"]
    assert tracked["event_id"] == uuid.UUID(batch[0]["messageId"])
    assert tracked["user_id"] == "u_1"  # userId before anonymousId
    assert tracked["properties"] == {"revenue": 12.5}
    assert tracked["timestamp"].isoformat() == "2026-11-30T15:04:05.123000+00:00"
    assert tracked["context"]["app"] == "penn-clubs"  # the batch's context
    segment = tracked["context"]["$segment"]
    assert segment["type"] == "track"
    assert segment["anonymousId"] == "anon-1"
    assert segment["integrations"] == {"All": False}
    page = rows["page.view"]
    assert page["user_id"] == "anon-1"
    assert page["properties"] == {"path": "/"}
    assert page["context"]["$segment"]["name"] == "Home"
    assert page["context"]["$segment"]["category"] == "Docs"
    assert page["event_id"] == uuid.uuid5(MESSAGE_ID_NAMESPACE, "clubs\npage-msg-1")
    assert rows["screen.view"]["user_id"] == "42"
    assert rows["identify"]["properties"] == {"email": "a@b.c"}
    assert rows["group"]["context"]["$segment"]["groupId"] == "g1"
    assert rows["group"]["properties"] == {"n": 3}
    assert rows["alias"]["context"]["$segment"]["previousId"] == "anon-1"
    assert rows["alias"]["properties"] == {}


@pytest.mark.parametrize(
    ("where", "path"),
    [
        ("basic", "/v1/batch"),
        ("bearer", "/v1/import"),
        ("x-write-key", "/v1/b"),
        ("body", "/v1/batch"),
    ],
)
async def test_the_write_key_is_found_wherever_the_clients_put_it(
    api: ApiFactory, db: asyncpg.Connection, where: str, path: str
) -> None:
    async with api() as app:
        key = await create_key(app.settings)
        body: dict[str, Any] = {"batch": [track()]}
        headers = {
            "basic": basic(key),
            "bearer": {"Authorization": f"Bearer {key}"},
            "x-write-key": {"X-Write-Key": key},
            "body": {},
        }[where]
        if where == "body":
            body["writeKey"] = key
        response = await post(app, path, body, headers)
        assert response.status_code == 200, response.text
        await wait_for_events(db, 1, product="clubs")


async def test_single_message_routes_and_their_short_forms_set_the_type(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    async with api() as app:
        key = await create_key(app.settings)
        sent = {
            "/v1/track": {"event": "Signed Up"},
            "/v1/t": {"event": "Clicked"},
            "/v1/page": {"name": "Home"},
            "/v1/p": {"name": "About"},
            "/v1/identify": {"traits": {"plan": "pro"}},
            "/v1/i": {"traits": {"plan": "free"}},
            "/v1/screen": {},
            "/v1/s": {},
            "/v1/group": {"groupId": "g"},
            "/v1/g": {"groupId": "h"},
            "/v1/alias": {"previousId": "x"},
            "/v1/a": {"previousId": "y"},
        }
        for path, fields in sent.items():
            message = {"userId": "u_9", "messageId": str(uuid.uuid4()), **fields}
            # Browsers send text/plain, so that the POST needs no preflight.
            response = await app.client.post(
                path,
                content=json.dumps({**message, "writeKey": key}),
                headers={"Content-Type": "text/plain"},
            )
            assert response.status_code == 200, (path, response.text)
        await wait_for_events(db, len(sent), product="clubs")
    names = sorted(row["name"] for row in await event_rows(db, "clubs"))
    expected = ["Signed Up", "Clicked"]
    for name in ("page.view", "identify", "screen.view", "group", "alias"):
        expected += [name, name]
    assert names == sorted(expected)


async def test_a_resent_batch_and_gzip_are_stored_once(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    async with api() as app:
        key = await create_key(app.settings)
        batch = {"batch": [track(), track(messageId="not-a-uuid"), track(messageId=None)]}
        del batch["batch"][2]["messageId"]
        plain = json.dumps(batch).encode()
        assert (await post(app, "/v1/batch", plain, basic(key))).status_code == 200
        zipped = gzip.compress(plain)
        headers = {**basic(key), "Content-Encoding": "gzip"}
        assert (await post(app, "/v1/batch", zipped, headers)).status_code == 200
        # The client's sentAt changes on every attempt: still the same events.
        batch["sentAt"] = "2026-11-30T15:05:00Z"
        assert (await post(app, "/v1/batch", batch, basic(key))).status_code == 200
        await wait_for_events(db, 3, product="clubs")
        await wait_for_drained_stream(app.settings)  # all nine flushed: three rows
    assert len(await event_rows(db, "clubs")) == 3


async def test_one_bad_message_does_not_refuse_the_others(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    async with api() as app:
        key = await create_key(app.settings)
        batch = [
            track("ok 1"),
            {"type": "track", "userId": "u", "messageId": "m-no-event"},  # no event name
            track("ok 2", properties={"big": 2**70}),  # would be rounded: refused
            track("ok 3", timestamp="yesterday"),
            {"type": "bogus", "messageId": "m-bogus"},
            "not an object",
            track("ok 4", context={"$segment": {}}),
            track("ok 5"),
        ]
        response = await post(app, "/v1/batch", {"batch": batch}, basic(key))
        assert response.status_code == 200
        answer = response.json()
        assert answer["success"] is True
        assert (answer["accepted"], answer["refused"]) == (2, 6)
        refused = {r["index"]: r for r in answer["refusals"]}
        assert set(refused) == {1, 2, 3, 4, 5, 6}
        assert refused[1]["field"] == "event"
        assert refused[1]["messageId"] == "m-no-event"
        assert refused[2]["field"] == "properties.big"
        assert refused[3]["field"] == "timestamp"
        assert refused[4]["field"] == "type"
        assert refused[6]["field"] == "context.$segment"
        await wait_for_events(db, 2, product="clubs")
    assert sorted(row["name"] for row in await event_rows(db, "clubs")) == ["ok 1", "ok 5"]


async def test_errors_have_segments_shape_and_the_status_its_clients_expect(
    api: ApiFactory,
) -> None:
    async with api() as app:
        key = await create_key(app.settings)
        cases: list[tuple[str, Any, dict[str, str], int, str]] = [
            ("/v1/batch", {"batch": [track()]}, {}, 401, "unauthenticated"),
            ("/v1/batch", {"batch": [track()]}, basic("lak_nope"), 401, "unauthenticated"),
            ("/v1/batch", b"{not json", basic(key), 400, "malformed_body"),
            ("/v1/batch", {"messages": []}, basic(key), 400, "malformed_body"),
            ("/v1/batch", {"batch": [{"type": "track"}]}, basic(key), 400, "invalid_messages"),
            (
                "/v1/track",
                {"event": "x" * 40_000, "userId": "u"},
                basic(key),
                400,
                "invalid_messages",
            ),
            (
                "/v1/batch",
                {"batch": [track()] * (MAX_BATCH_MESSAGES + 1)},
                basic(key),
                400,
                "malformed_body",
            ),
            ("/v1/batch", b"x" * (5 * 1024 * 1024), basic(key), 413, "payload_too_large"),
        ]
        for path, body, headers, status, code in cases:
            response = await post(app, path, body, headers)
            assert response.status_code == status, (code, response.text)
            answer = response.json()
            assert answer["success"] is False
            assert answer["code"] == code  # without a code, segment-analytics-python retries
            assert answer["message"]


async def test_a_rate_limited_key_gets_429_with_retry_after(api: ApiFactory) -> None:
    async with api() as app:
        key = await create_key_with_rate(app.settings, rate=5)
        statuses = []
        for _ in range(3):
            response = await post(app, "/v1/batch", {"batch": [track()] * 1000}, basic(key))
            statuses.append(response.status_code)
        assert statuses[0] == 200
        assert 429 in statuses
        limited = response
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["code"] == "rate_limited"


async def test_browsers_get_cors_on_text_plain_posts_and_preflights(api: ApiFactory) -> None:
    origin = "https://pennclubs.com"
    async with api(cors_origins=[origin]) as app:
        key = await create_key(app.settings)
        preflight = await app.client.options(
            "/v1/t",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, x-write-key, "
                "anonymousid",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        response = await app.client.post(
            "/v1/t",
            content=json.dumps({"event": "Clicked", "anonymousId": "a", "writeKey": key}),
            headers={"Content-Type": "text/plain", "Origin": origin},
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == origin


async def test_the_fast_path_and_the_framework_answer_alike(api: ApiFactory) -> None:
    answers = []
    for fast_path in (True, False):
        async with api(fast_path=fast_path) as app:
            key = await create_key(app.settings)
            got = []
            for body, headers in (
                ({"batch": [track(), {"type": "nope"}]}, basic(key)),
                ({"batch": [{"type": "nope"}]}, basic(key)),
                ({"batch": [track()]}, basic("lak_unknown")),
                (b"[", basic(key)),
            ):
                response = await post(app, "/v1/batch", body, headers)
                got.append((response.status_code, response.json()))
            answers.append(got)
    assert answers[0] == answers[1]


async def test_every_route_answers_without_the_fast_path_too(api: ApiFactory) -> None:
    async with api(fast_path=False) as app:
        for path in [*BATCH_PATHS, *MESSAGE_PATHS]:
            response = await post(app, path, {"batch": []})
            assert response.status_code == 401, path
            assert response.json()["success"] is False
