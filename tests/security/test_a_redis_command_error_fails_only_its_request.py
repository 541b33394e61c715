"""A Redis error that is not an outage fails its request, not the whole service.

`keys create --rate-limit inf` made the append script fail; the producer took
every error reply for "Redis is down", marked it down and sent all traffic to
the spool, where no rate limit and no backlog bound applied: a 100/s key got
34,050 events accepted in 5.3 s. Now an error reply is classified: outage-like
ones (LOADING, BUSY, READONLY, MISCONF, …) still spool, OOM is overload, and
anything else (WRONGTYPE, a script error) is that request's 500; Redis stays
up for everyone else and nothing is spooled. Each entry's commands run under
`redis.pcall`, so one key's broken bucket does not fail the others sharing
its script call; and a rate the script cannot use never reaches it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from labs_analytics.queue.producer import (
    OUTAGE_ERROR_CODES,
    AppendRefused,
    BacklogFull,
    InvalidRateLimit,
    QueueWriteFailed,
    RateLimit,
    StreamProducer,
    classify_error_reply,
)
from labs_analytics.settings import Settings
from tests.helpers import (
    ApiFactory,
    RunningApi,
    create_key,
    make_event,
    make_events,
    stream_events,
)


def key_id(key: str) -> str:
    return key.split("_")[1]


def assert_not_down_and_nothing_spooled(app: RunningApi) -> None:
    queue = app.app.state.labs.queue
    assert queue.health.redis_up
    assert queue.spool is not None
    assert queue.spool.segments() == []


async def test_a_stream_of_the_wrong_type_fails_requests_without_spooling_them(
    api: ApiFactory, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        await redis.set(app.settings.stream_key, "x")  # XADD now answers WRONGTYPE
        with caplog.at_level(logging.ERROR, logger="labs_analytics"):
            responses = [await app.post(make_event(), key) for _ in range(3)]
        for response in responses:
            assert response.status_code == 500
            assert response.json()["error"] == "queue_error"
            assert "Retry-After" not in response.headers
        assert_not_down_and_nothing_spooled(app)
        refused = [r for r in caplog.records if r.getMessage() == "ingest.append_refused"]
        assert len(refused) == 3  # once per occurrence
        assert all("WRONGTYPE" in r.fields["error"] for r in refused)  # type: ignore[attr-defined]
        assert not [r for r in caplog.records if r.getMessage() == "queue.redis_down"]
        assert key not in caplog.text
        assert (await app.client.get("/readyz")).status_code == 200

        await redis.delete(app.settings.stream_key)
        response = await app.post({"events": make_events(5)}, key)
        assert response.status_code == 202
        assert await redis.xlen(app.settings.stream_key) == 1


async def test_a_broken_backlog_counter_fails_requests_without_spooling_them(
    api: ApiFactory, redis: Redis
) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        await redis.set(app.settings.backlog_key, "not a number")
        response = await app.post(make_event(), key)
        assert response.status_code == 500
        assert response.json()["error"] == "queue_error"
        assert_not_down_and_nothing_spooled(app)

        await redis.delete(app.settings.backlog_key)
        assert (await app.post(make_event(), key)).status_code == 202


async def test_one_keys_broken_bucket_fails_only_that_keys_requests(
    api: ApiFactory, redis: Redis
) -> None:
    async with api(run_flusher=False) as app:
        broken = await create_key(app.settings)
        healthy = await create_key(app.settings)
        await redis.set(app.settings.rate_limit_key(key_id(broken)), "x")
        # Sent together, so their entries share script calls.
        responses = await asyncio.gather(
            *(app.post(make_event(), key) for _ in range(10) for key in (broken, healthy))
        )
        statuses = [r.status_code for r in responses]
        assert statuses == [500, 202] * 10
        assert_not_down_and_nothing_spooled(app)
        # The healthy key's events, in entries its requests shared.
        assert await stream_events(redis, app.settings) == 10


@pytest.fixture
async def producer(settings: Settings, redis: Redis) -> AsyncIterator[StreamProducer]:
    made = StreamProducer(redis, stream_key=settings.stream_key, backlog_key=settings.backlog_key)
    try:
        yield made
    finally:
        await made.aclose()


@pytest.mark.parametrize(
    ("rate", "burst"),
    [
        (math.inf, math.inf),
        (math.nan, 1000.0),
        (100.0, math.nan),
        (-1.0, 10.0),
        (100.0, 0.0),
        (100.0, math.inf),
        (0.0, 1000.0),
        (1e-300, 1000.0),  # a bucket that would take longer than Redis can expire
    ],
)
async def test_a_rate_the_script_cannot_use_never_reaches_it(
    producer: StreamProducer, redis: Redis, settings: Settings, rate: float, burst: float
) -> None:
    with pytest.raises(InvalidRateLimit):
        await producer.append_fields(
            {b"v": b"1"}, events=1, rate_limit=RateLimit(rate, burst), rate_key="k"
        )
    with pytest.raises(InvalidRateLimit):
        await producer.debit(settings.rate_limit_key("k"), 1, RateLimit(rate, burst))
    assert await redis.exists(settings.stream_key) == 0
    # The same producer goes on serving valid limits.
    appended = await producer.append_fields(
        {b"v": b"1"}, events=1, rate_limit=RateLimit(100, 1000), rate_key="k"
    )
    assert appended.backlog == 1


def test_error_replies_are_classified_outage_overload_or_this_requests_own() -> None:
    for code in OUTAGE_ERROR_CODES:
        assert classify_error_reply(code) is QueueWriteFailed
    assert classify_error_reply("OOM") is BacklogFull
    for code in ("ERR", "WRONGTYPE", "NOSCRIPT", "NOPERM", "EXECABORT"):
        assert classify_error_reply(code) is AppendRefused
