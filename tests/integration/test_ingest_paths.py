"""Ingest has two ways in, the fast path and the framework route: the same answers.

The same requests go to two apps on the same PostgreSQL and Redis, one with
the fast path (the default) and one without (``fast_path=False``), and must
get the same status, body and headers, on success and on every error: the
client errors, authentication, rate limits (429), both 503s, a 500 and a
client that goes away in the middle of its body.
"""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as ASGIScope

from labs_analytics.api.app import create_app
from labs_analytics.auth.keys import Scope
from labs_analytics.embedded import free_port
from labs_analytics.settings import Settings
from tests.helpers import ApiFactory, RunningApi, create_key, make_event, stream_events

ORIGIN = "https://clubs.example.edu"
COMPARED_HEADERS = ("content-type", "www-authenticate", "retry-after")


@contextlib.asynccontextmanager
async def two_apps(
    api: ApiFactory, **settings: Any
) -> AsyncIterator[tuple[RunningApi, RunningApi]]:
    async with api(fast_path=True, **settings) as fast, api(fast_path=False, **settings) as slow:
        yield fast, slow


async def both_ways(
    apps: tuple[RunningApi, RunningApi],
    body: Any,
    key: str | None,
    headers: dict[str, str] | None = None,
) -> tuple[httpx.Response, httpx.Response]:
    fast, slow = apps
    return (
        await fast.post(body, key, headers=headers or {}),
        await slow.post(body, key, headers=headers or {}),
    )


def assert_same_answer(fast: httpx.Response, slow: httpx.Response) -> None:
    assert fast.status_code == slow.status_code
    assert fast.json() == slow.json()
    for name in COMPARED_HEADERS:
        assert fast.headers.get(name) == slow.headers.get(name), name


CASES: dict[str, tuple[Any, dict[str, str]]] = {
    "malformed json": (b'{"name": "x",', {}),
    "not an object": (b"[1, 2]", {}),
    "invalid event": ({"events": [make_event(), {"name": "bad name!"}]}, {}),
    "bad gzip": (b"not gzip", {"Content-Encoding": "gzip"}),
    "unsupported encoding": (b"{}", {"Content-Encoding": "br"}),
    "too large": (b"x" * (1024 * 1024 + 1), {}),
    "foreign product": ({"name": "a", "product": "someone-else"}, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_client_errors_are_the_same_both_ways(api: ApiFactory, case: str) -> None:
    body, headers = CASES[case]
    async with two_apps(api, run_flusher=False) as apps:
        key = await create_key(apps[0].settings)
        fast, slow = await both_ways(apps, body, key, headers)
        assert 400 <= fast.status_code < 500
        assert_same_answer(fast, slow)


async def test_authentication_errors_are_the_same_both_ways(api: ApiFactory) -> None:
    async with two_apps(api, run_flusher=False) as apps:
        read_only = await create_key(apps[0].settings, scopes=[Scope.READ])
        for key in (None, "lak_000000000000_" + "x" * 43, read_only):
            fast, slow = await both_ways(apps, make_event(), key)
            assert fast.status_code in (401, 403)
            assert_same_answer(fast, slow)


async def test_accepted_events_are_queued_the_same_both_ways(api: ApiFactory, redis: Redis) -> None:
    async with two_apps(api, run_flusher=False) as apps:
        key = await create_key(apps[0].settings)
        body = gzip.compress(b'{"events": [{"name": "a"}, {"name": "b"}]}')
        fast, slow = await both_ways(apps, body, key, {"Content-Encoding": "gzip"})
        assert fast.status_code == slow.status_code == 202
        assert fast.json()["accepted"] == slow.json()["accepted"] == 2
        assert fast.headers["content-type"] == slow.headers["content-type"]
        assert await stream_events(redis, apps[0].settings) == 4


async def test_rate_limited_answers_are_the_same_both_ways(api: ApiFactory) -> None:
    async with two_apps(api, run_flusher=False) as apps:
        key = await create_key(apps[0].settings, rate_limit_per_second=1)
        # The burst is one full request (1000 events): this one empties the bucket.
        full = await apps[0].post({"events": [make_event() for _ in range(1000)]}, key)
        assert full.status_code == 202
        fast, slow = await both_ways(apps, make_event(), key)
        assert fast.status_code == slow.status_code == 429
        assert fast.json()["error"] == slow.json()["error"] == "rate_limited"
        assert fast.headers["content-type"] == slow.headers["content-type"]
        # Seconds until the shared bucket refills: the second answer came a little later.
        assert abs(int(fast.headers["retry-after"]) - int(slow.headers["retry-after"])) <= 1


async def test_a_full_backlog_is_the_same_503_both_ways(api: ApiFactory) -> None:
    async with two_apps(api, run_flusher=False, backlog_max_events=3) as apps:
        key = await create_key(apps[0].settings)
        batch = {"events": [make_event() for _ in range(5)]}
        fast, slow = await both_ways(apps, batch, key)
        assert fast.status_code == 503
        assert fast.json()["error"] == "overloaded"
        # It says why: what is queued, what this request adds, and the limit.
        assert "holds 0 unflushed events and this request adds 5" in fast.json()["message"]
        assert "over the backlog limit of 3" in fast.json()["message"]
        assert_same_answer(fast, slow)


async def test_a_queue_that_is_down_is_the_same_503_both_ways(api: ApiFactory) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with two_apps(api, run_flusher=False, redis_url=closed, spool_dir="") as apps:
        key = await create_key(apps[0].settings)
        fast, slow = await both_ways(apps, make_event(), key)
        assert fast.status_code == 503
        assert fast.json()["error"] == "queue_unavailable"
        assert_same_answer(fast, slow)


async def test_a_queue_error_is_the_same_500_both_ways(api: ApiFactory, redis: Redis) -> None:
    async with two_apps(api, run_flusher=False) as apps:
        key = await create_key(apps[0].settings)
        # A real fault that is not an outage: the stream's key holds a string,
        # so XADD fails with WRONGTYPE.
        await redis.set(apps[0].settings.stream_key, "not a stream")
        fast, slow = await both_ways(apps, make_event(), key)
        assert fast.status_code == 500
        assert fast.json()["error"] == "queue_error"
        assert_same_answer(fast, slow)


async def _answer_to_a_body_cut_short(app: RunningApi, key: str) -> tuple[int, dict[str, Any]]:
    """Drive the app as a server would for a client that disconnects mid-body."""
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"events": [{"name": "a"},', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/events",
        "raw_path": b"/v1/events",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await app.app(scope, receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], orjson.loads(body)


async def test_a_client_gone_mid_body_gets_the_same_answer_and_queues_nothing(
    api: ApiFactory, redis: Redis
) -> None:
    async with two_apps(api, run_flusher=False) as (fast, slow):
        key = await create_key(fast.settings)
        assert await _answer_to_a_body_cut_short(fast, key) == (
            await _answer_to_a_body_cut_short(slow, key)
        )
        status, body = await _answer_to_a_body_cut_short(fast, key)
        assert status == 400
        assert body["error"] == "malformed_body"
        assert await redis.xlen(fast.settings.stream_key) == 0


async def test_behind_a_proxy_the_fast_path_answers_under_the_root_path(
    api: ApiFactory, redis: Redis
) -> None:
    async with two_apps(api, run_flusher=False) as apps:
        key = await create_key(apps[0].settings)
        for app in apps:
            # uvicorn --root-path /analytics: the path keeps the prefix, root_path names it.
            app.client._transport = httpx.ASGITransport(app=app.app, root_path="/analytics")
            answer = await app.client.post(
                "/analytics/v1/events",
                json=make_event(),
                headers={"Authorization": f"Bearer {key}"},
            )
            assert answer.status_code == 202, answer.text
        assert await stream_events(redis, apps[0].settings) == 2


async def test_browser_requests_get_cors_headers_on_both_ways(api: ApiFactory) -> None:
    async with two_apps(api, run_flusher=False, cors_origins=[ORIGIN]) as apps:
        key = await create_key(apps[0].settings)
        fast, slow = await both_ways(apps, make_event(), key, {"Origin": ORIGIN})
        assert fast.status_code == slow.status_code == 202
        assert fast.headers["access-control-allow-origin"] == ORIGIN
        assert slow.headers["access-control-allow-origin"] == ORIGIN


async def test_other_methods_and_paths_still_get_the_framework_answers(api: ApiFactory) -> None:
    async with api(run_flusher=False) as app:
        assert (await app.client.delete("/v1/events")).status_code == 405
        assert (await app.client.post("/v1/events/")).status_code in (307, 404)
        assert (await app.client.get("/healthz")).status_code == 200


async def test_a_middleware_added_to_the_app_sees_fast_path_requests(
    settings: Settings, redis: Redis, db: object
) -> None:
    seen: list[str] = []

    class Recorder:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                seen.append(f"{scope['method']} {scope['path']}")
            await self.app(scope, receive, send)

    app = create_app(settings.model_copy(update={"run_flusher": False}))
    app.add_middleware(Recorder)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            key = await create_key(settings)
            answer = await client.post(
                "/v1/events", json=make_event(), headers={"Authorization": f"Bearer {key}"}
            )
    assert answer.status_code == 202
    assert seen == ["POST /v1/events"]
    assert await redis.xlen(settings.stream_key) == 1
