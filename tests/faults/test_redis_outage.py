"""Redis down: the spool keeps the promise of a 202; without room, we refuse honestly."""

from __future__ import annotations

import asyncio

import asyncpg

from labs_analytics.embedded import EmbeddedRedis
from tests.helpers import (
    ApiFactory,
    create_key,
    duplicated_ids,
    make_events,
    wait_for,
    wait_for_events,
)


async def test_redis_outage_spools_events_then_replays_every_one_exactly_once(
    api: ApiFactory, redis_server: EmbeddedRedis, db: asyncpg.Connection
) -> None:
    acknowledged: list[dict[str, object]] = []
    async with api() as app:
        key = await create_key(app.settings)

        async def post(n: int) -> None:
            for _ in range(n):
                events = make_events(10)
                response = await app.post({"events": events}, key)
                assert response.status_code == 202, response.text
                acknowledged.extend(events)

        await post(3)
        await asyncio.to_thread(redis_server.stop)
        # Concurrent requests during the outage: they share the spool's fsyncs.
        await asyncio.gather(*(post(5) for _ in range(4)))
        spool = app.app.state.labs.queue.spool
        assert spool.total_bytes() > 0
        ready = await app.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["redis"] == "down"
        assert ready.json()["spool"]["writable"] is True

        await asyncio.to_thread(redis_server.start)
        await post(3)
        await wait_for_events(db, len(acknowledged), timeout=30)

        async def spool_empty() -> bool:
            return not spool.segments()

        await wait_for(spool_empty, what="the spool to be replayed and removed")

    stored = {str(r["event_id"]) for r in await db.fetch("SELECT event_id FROM events")}
    assert stored == {str(e["event_id"]) for e in acknowledged}
    assert await duplicated_ids(db) == []


async def test_without_a_spool_redis_outage_is_503_and_ingest_recovers_after(
    api: ApiFactory, redis_server: EmbeddedRedis, db: asyncpg.Connection
) -> None:
    async with api(run_flusher=False, spool_dir="") as app:
        key = await create_key(app.settings)
        acknowledged = make_events(10)
        assert (await app.post({"events": acknowledged}, key)).status_code == 202

        await asyncio.to_thread(redis_server.stop)
        refused = await app.post({"events": make_events(10)}, key)
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"] == "queue_unavailable"
        assert (await app.client.get("/readyz")).status_code == 503

        await asyncio.to_thread(redis_server.start)

        async def accepted_again() -> bool:
            response = await app.post({"events": after}, key)
            return response.status_code == 202

        after = make_events(10)
        await wait_for(accepted_again, timeout=10, what="ingest to recover")

    # Everything acknowledged, before the restart (AOF) and after, lands exactly once.
    async with api():
        await wait_for_events(db, 20)
        stored = {str(r["event_id"]) for r in await db.fetch("SELECT event_id FROM events")}
        assert stored == {e["event_id"] for e in acknowledged + after}
        assert await duplicated_ids(db) == []


async def test_a_full_spool_answers_503_and_acknowledges_nothing_it_cannot_keep(
    api: ApiFactory, redis_server: EmbeddedRedis, db: asyncpg.Connection
) -> None:
    async with api(spool_max_bytes=20_000) as app:
        key = await create_key(app.settings)
        await asyncio.to_thread(redis_server.stop)
        acknowledged: list[dict[str, object]] = []
        statuses = []
        for _ in range(20):
            events = make_events(10)
            response = await app.post({"events": events}, key)
            statuses.append(response.status_code)
            if response.status_code == 202:
                acknowledged.extend(events)
            else:
                assert response.status_code == 503
                assert response.headers["Retry-After"]
        assert 202 in statuses
        assert 503 in statuses
        await asyncio.to_thread(redis_server.start)
        await wait_for_events(db, len(acknowledged), timeout=30)
    stored = {str(r["event_id"]) for r in await db.fetch("SELECT event_id FROM events")}
    assert stored == {str(e["event_id"]) for e in acknowledged}
