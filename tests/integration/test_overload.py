"""Overload: one noisy key cannot starve the others, and Redis never runs out of room."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from redis.asyncio import Redis

from labs_analytics.queue.entries import decode_entry
from labs_analytics.settings import Settings
from tests.helpers import (
    ApiFactory,
    create_key,
    create_key_with_rate,
    make_events,
    running_api,
    stream_events,
    wait_for,
    wait_for_events,
)


async def test_key_over_its_rate_gets_429_with_retry_after_and_others_are_unaffected(
    api: ApiFactory,
) -> None:
    async with api(run_flusher=False) as app:
        noisy = await create_key_with_rate(app.settings, rate=100)
        quiet = await create_key(app.settings, product="penn-mobile")
        # The bucket holds one full request (1000 events) even at 100 events/s.
        assert (await app.post({"events": make_events(1000)}, noisy)).status_code == 202
        limited = await app.post({"events": make_events(10)}, noisy)
        assert limited.status_code == 429
        assert limited.json()["error"] == "rate_limited"
        assert limited.json()["details"] == [{"limit_events_per_second": 100.0}]
        assert int(limited.headers["Retry-After"]) >= 1
        assert (await app.post({"events": make_events(10)}, quiet)).status_code == 202


async def test_the_rate_limit_is_shared_by_every_api_process(
    api: ApiFactory, settings: Settings
) -> None:
    async with (
        api(run_flusher=False) as first,
        running_api(settings.model_copy(update={"run_flusher": False})) as second,
    ):
        key = await create_key_with_rate(settings, rate=1)
        assert (await first.post({"events": make_events(600)}, key)).status_code == 202
        assert (await second.post({"events": make_events(400)}, key)).status_code == 202
        # 1000 taken of a 1000-event bucket, through two processes: the next is refused.
        assert (await second.post({"events": make_events(5)}, key)).status_code == 429
        assert (await first.post({"events": make_events(5)}, key)).status_code == 429


async def test_backlog_over_the_limit_is_503_and_nothing_acknowledged_is_lost(
    api: ApiFactory, db: asyncpg.Connection, redis: Redis
) -> None:
    acknowledged: list[dict[str, object]] = []
    async with api(run_flusher=False, backlog_max_events=50) as app:
        key = await create_key(app.settings)
        for _ in range(5):
            events = make_events(10)
            assert (await app.post({"events": events}, key)).status_code == 202
            acknowledged.extend(events)
        refused = await app.post({"events": make_events(10)}, key)
        assert refused.status_code == 503
        assert refused.json()["error"] == "overloaded"
        assert int(refused.headers["Retry-After"]) >= 1
        ready = (await app.client.get("/readyz")).json()
        assert ready["backlog"] == {"events": 50, "max_events": 50}

    async with api(backlog_max_events=50) as app:  # a flusher drains the backlog
        await wait_for_events(db, 50)

        async def backlog_drained() -> bool:  # acked after commit: a moment after the rows
            return int(await redis.get(app.settings.backlog_key) or 0) == 0

        await wait_for(backlog_drained, what="the backlog counter back to 0")
        events = make_events(10)
        assert (await app.post({"events": events}, key)).status_code == 202
        acknowledged.extend(events)
        await wait_for_events(db, 60)
    stored = {str(r["event_id"]) for r in await db.fetch("SELECT event_id FROM events")}
    assert stored == {str(e["event_id"]) for e in acknowledged}
    assert int(await redis.get(app.settings.backlog_key) or 0) == 0


async def test_metrics_count_what_happened(api: ApiFactory, db: asyncpg.Connection) -> None:
    async with api() as app:
        key = await create_key(app.settings)
        assert (await app.post({"events": make_events(7)}, key)).status_code == 202
        assert (await app.post(b"{nope", key)).status_code == 400
        await wait_for_events(db, 7)
        response = await app.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = dict(
        line.rsplit(" ", 1) for line in response.text.splitlines() if not line.startswith("#")
    )
    assert float(samples['labs_events_accepted_total{destination="redis"}']) >= 7
    assert float(samples['labs_ingest_rejected_total{reason="malformed_body"}']) >= 1
    assert float(samples["labs_events_flushed_total"]) >= 7
    assert float(samples["labs_postgres_up"]) == 1
    assert float(samples["labs_redis_up"]) == 1
    assert "labs_flush_duration_seconds_bucket" in response.text
    assert "labs_stream_oldest_entry_age_seconds" in samples


async def test_concurrent_requests_sharing_a_redis_call_each_get_their_own_verdict(
    api: ApiFactory, redis: Redis
) -> None:
    async with api(run_flusher=False) as app:
        exhausted = await create_key_with_rate(app.settings, rate=1)
        fresh = await create_key(app.settings, product="penn-mobile")
        assert (await app.post({"events": make_events(1000)}, exhausted)).status_code == 202
        posts = [app.post({"events": make_events(3)}, exhausted) for _ in range(20)]
        posts += [app.post({"events": make_events(3)}, fresh) for _ in range(20)]
        responses = await asyncio.gather(*posts)
        assert [r.status_code for r in responses] == [429] * 20 + [202] * 20
        # The first request's events and the 20 fresh ones' made it (those 20 share
        # entries), and the backlog counts them.
        assert await stream_events(redis, app.settings) == 1000 + 20 * 3
        assert int(await redis.get(app.settings.backlog_key) or 0) == 1000 + 20 * 3
        ids = {i for r in responses[20:] for i in r.json()["ids"]}
        assert len(ids) == 60


async def test_requests_sharing_an_entry_draw_on_their_keys_bucket_in_turn(
    api: ApiFactory, redis: Redis
) -> None:
    async with api(run_flusher=False) as app:
        # 1 event/s: the bucket holds the largest request, 1000 events, and refills slowly.
        limited = await create_key_with_rate(app.settings, rate=1)
        other = await create_key(app.settings, product="penn-mobile")
        posts = [app.post({"events": make_events(400)}, limited) for _ in range(3)]
        posts += [app.post({"events": make_events(2)}, other) for _ in range(5)]
        responses = await asyncio.gather(*posts)
        # Sent together, they share a script call: whichever 400 came third found 200
        # tokens left.
        assert sorted(r.status_code for r in responses[:3]) == [202, 202, 429]
        assert [r.status_code for r in responses[3:]] == [202] * 5
        assert await stream_events(redis, app.settings) == 2 * 400 + 5 * 2
        assert int(await redis.get(app.settings.backlog_key) or 0) == 2 * 400 + 5 * 2
        entries: Any = await redis.xrange(app.settings.stream_key)
        stored = [record for _, fields in entries for record in decode_entry(fields)]
        accepted = [i for r in responses if r.status_code == 202 for i in r.json()["ids"]]
        assert sorted(str(record.event_id) for record in stored) == sorted(accepted)
        products = {record.product for record in stored}
        assert products == {"penn-mobile", "clubs"}
        # The bucket was written once the entry was in: 1,000 - 800 tokens, and a
        # few seconds' refill at most.
        bucket = app.settings.rate_limit_key(limited.split("_")[1])
        tokens = float(await redis.hget(bucket, "tokens") or "nan")
        assert 200 <= tokens < 210
