"""Every error a client can meet: the status, the JSON body, and that nothing was queued."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.asyncio import Redis

from labs_analytics.auth.keys import Scope
from tests.helpers import ApiFactory, RunningApi, create_key, make_event, make_events


async def stream_length(redis: Redis, app: RunningApi) -> int:
    return int(await redis.xlen(app.settings.stream_key))


def assert_error_shape(body: dict[str, object], code: str) -> None:
    assert body["error"] == code
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["details"], list)


async def test_malformed_json_is_400(api: ApiFactory, redis: Redis) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        response = await app.post(b'{"name": "x",', key)
        assert response.status_code == 400
        assert_error_shape(response.json(), "malformed_body")
        assert "not valid JSON" in response.json()["message"]
        assert await stream_length(redis, app) == 0


async def test_invalid_gzip_is_400(api: ApiFactory) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        response = await app.post(b"not gzip at all", key, headers={"Content-Encoding": "gzip"})
        assert response.status_code == 400
        assert_error_shape(response.json(), "malformed_body")


async def test_gzip_body_is_accepted(api: ApiFactory) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        body = gzip.compress(orjson.dumps({"events": make_events(3)}))
        response = await app.post(body, key, headers={"Content-Encoding": "gzip"})
        assert response.status_code == 202, response.text
        assert response.json()["accepted"] == 3


async def test_missing_key_is_401(api: ApiFactory) -> None:
    async with api(run_flusher=False) as app:
        response = await app.post(make_event(), None)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert_error_shape(response.json(), "unauthenticated")


@pytest.mark.parametrize(
    "token",
    [
        "nonsense",
        "lak_000000000000_" + "A" * 43,  # well formed, never issued
        "",
    ],
)
async def test_unknown_key_is_401(api: ApiFactory, token: str) -> None:
    async with api(run_flusher=False) as app:
        await create_key(app.settings)
        response = await app.post(make_event(), None, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
        assert_error_shape(response.json(), "unauthenticated")


async def test_right_id_with_wrong_secret_is_401(api: ApiFactory) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        response = await app.post(make_event(), forged)
        assert response.status_code == 401


async def test_key_without_ingest_scope_is_403(api: ApiFactory, redis: Redis) -> None:
    async with api(run_flusher=False) as app:
        read_only = await create_key(app.settings, scopes=[Scope.READ])
        response = await app.post(make_event(), read_only)
        assert response.status_code == 403
        assert_error_shape(response.json(), "forbidden")
        assert "ingest" in response.json()["message"]
        assert await stream_length(redis, app) == 0


async def test_event_for_another_product_is_403_and_nothing_is_queued(
    api: ApiFactory, redis: Redis
) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings, product="clubs")
        events = [make_event(product="clubs"), make_event(product="penn-mobile")]
        response = await app.post({"events": events}, key)
        assert response.status_code == 403
        body = response.json()
        assert_error_shape(body, "forbidden")
        assert [d["index"] for d in body["details"]] == [1]
        assert await stream_length(redis, app) == 0


async def test_admin_key_still_cannot_write_another_product(api: ApiFactory) -> None:
    async with api(run_flusher=False) as app:
        admin = await create_key(app.settings, product="clubs", scopes=[Scope.ADMIN])
        assert (await app.post(make_event(), admin)).status_code == 202
        response = await app.post(make_event(product="penn-mobile"), admin)
        assert response.status_code == 403


async def test_declared_content_length_over_limit_is_413(api: ApiFactory) -> None:
    async with api(run_flusher=False, max_body_bytes=1000) as app:
        key = await create_key(app.settings)
        body = orjson.dumps({"events": make_events(20)})
        assert len(body) > 1000
        response = await app.post(body, key)
        assert response.status_code == 413
        assert_error_shape(response.json(), "payload_too_large")


async def test_streamed_body_over_limit_is_413_without_buffering_it_all(
    api: ApiFactory, redis: Redis
) -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"name": "x", "properties": {"pad": "'
        for _ in range(10_000):  # 640 MB if it were all read
            sent += 1
            yield b"a" * 65536

    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        response = await app.post(endless(), key)
        assert response.status_code == 413
        # The server stopped reading at the limit (1 MiB = 16 chunks), not at the end.
        assert sent < 100
        assert await stream_length(redis, app) == 0


async def test_gzip_bomb_is_413(api: ApiFactory) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        bomb = gzip.compress(b'{"name": "x", "properties": {"p": "' + b"0" * 50_000_000 + b'"}}')
        assert len(bomb) < 1_000_000
        response = await app.post(bomb, key, headers={"Content-Encoding": "gzip"})
        assert response.status_code == 413


async def test_more_than_1000_events_is_413(api: ApiFactory) -> None:
    async with api(run_flusher=False, max_body_bytes=10_000_000) as app:
        key = await create_key(app.settings)
        response = await app.post({"events": [{"name": "x"}] * 1001}, key)
        assert response.status_code == 413
        assert "1000" in response.json()["message"]


async def test_unsupported_encoding_is_415(api: ApiFactory) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        response = await app.post(b"{}", key, headers={"Content-Encoding": "br"})
        assert response.status_code == 415
        assert_error_shape(response.json(), "unsupported_encoding")


async def test_invalid_events_are_422_naming_index_and_field_and_nothing_is_queued(
    api: ApiFactory, redis: Redis
) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        events = [
            make_event(),
            make_event(name="has spaces"),
            make_event(),
            make_event(timestamp="2999-01-01T00:00:00Z", properties={"x": "\u0000"}),
        ]
        response = await app.post({"events": events}, key)
        assert response.status_code == 422
        body = response.json()
        assert_error_shape(body, "invalid_events")
        problems = {(d["index"], d["field"]) for d in body["details"]}
        assert problems == {(1, "name"), (3, "timestamp"), (3, "properties")}
        assert "2 of 4" in body["message"]
        assert await stream_length(redis, app) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([make_event()], None),  # a list, not an object
        ({"events": []}, "events"),
        ({"events": "nope"}, "events"),
        ({"events": [make_event()], "extra": 1}, "extra"),
        ({"user": "u"}, "name"),  # single event without a name
    ],
)
async def test_wrong_shapes_are_422(api: ApiFactory, body: object, field: str | None) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        response = await app.post(body, key)
        assert response.status_code == 422, response.text
        assert_error_shape(response.json(), "invalid_events")
        assert field in {d["field"] for d in response.json()["details"]}


async def test_redis_unreachable_without_a_spool_is_503_with_retry_after(
    api: ApiFactory, db: object
) -> None:
    from labs_analytics.embedded import free_port

    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with api(run_flusher=False) as healthy:
        key = await create_key(healthy.settings)
    async with api(run_flusher=False, redis_url=nowhere, spool_dir="") as app:
        response = await app.post(make_event(), key)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == str(app.settings.retry_after_seconds)
        assert_error_shape(response.json(), "queue_unavailable")
        ready = await app.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["redis"] == "down"


async def test_unknown_route_and_method_use_the_same_error_shape(api: ApiFactory) -> None:
    async with api(run_flusher=False) as app:
        missing = await app.client.get("/v1/nothing")
        assert missing.status_code == 404
        assert_error_shape(missing.json(), "not_found")
        wrong_method = await app.client.delete("/v1/events")  # GET lists them, DELETE is none
        assert wrong_method.status_code == 405
        assert_error_shape(wrong_method.json(), "method_not_allowed")
