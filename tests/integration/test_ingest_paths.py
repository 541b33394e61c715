"""Ingest has two ways in, the bare ASGI handler and the framework route: same answers.

Requests without an ``Origin`` take the bare handler; browser requests (with
one) go through the middleware for CORS. A client must not be able to tell
them apart, on success or on any error.
"""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from labs_analytics.auth.keys import Scope
from tests.helpers import ApiFactory, RunningApi, create_key, make_event

ORIGIN = "https://clubs.example.edu"
COMPARED_HEADERS = ("content-type", "www-authenticate", "retry-after")


async def both_ways(
    app: RunningApi, body: Any, key: str | None, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, httpx.Response]:
    bare = await app.post(body, key, headers=headers or {})
    framework = await app.post(body, key, headers={**(headers or {}), "Origin": ORIGIN})
    assert framework.headers["access-control-allow-origin"] == ORIGIN  # it did take CORS
    assert "access-control-allow-origin" not in bare.headers
    return bare, framework


def assert_same_answer(bare: httpx.Response, framework: httpx.Response) -> None:
    assert bare.status_code == framework.status_code
    assert bare.json() == framework.json()
    for name in COMPARED_HEADERS:
        assert bare.headers.get(name) == framework.headers.get(name), name


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
    async with api(run_flusher=False, cors_origins=[ORIGIN]) as app:
        key = await create_key(app.settings)
        bare, framework = await both_ways(app, body, key, headers)
        assert 400 <= bare.status_code < 500
        assert_same_answer(bare, framework)


async def test_authentication_errors_are_the_same_both_ways(api: ApiFactory) -> None:
    async with api(run_flusher=False, cors_origins=[ORIGIN]) as app:
        read_only = await create_key(app.settings, scopes=[Scope.READ])
        for key in (None, "lak_000000000000_" + "x" * 43, read_only):
            bare, framework = await both_ways(app, make_event(), key)
            assert bare.status_code in (401, 403)
            assert_same_answer(bare, framework)


async def test_accepted_events_are_queued_the_same_both_ways(api: ApiFactory, redis: Redis) -> None:
    async with api(run_flusher=False, cors_origins=[ORIGIN]) as app:
        key = await create_key(app.settings)
        body = gzip.compress(b'{"events": [{"name": "a"}, {"name": "b"}]}')
        bare, framework = await both_ways(app, body, key, {"Content-Encoding": "gzip"})
        assert bare.status_code == framework.status_code == 202
        assert bare.json()["accepted"] == framework.json()["accepted"] == 2
        assert bare.headers["content-type"] == framework.headers["content-type"]
        assert await redis.xlen(app.settings.stream_key) == 2


async def test_other_methods_and_paths_still_get_the_framework_answers(api: ApiFactory) -> None:
    async with api(run_flusher=False) as app:
        assert (await app.client.get("/v1/events")).status_code == 405
        assert (await app.client.post("/v1/events/")).status_code in (307, 404)
        assert (await app.client.get("/healthz")).status_code == 200
