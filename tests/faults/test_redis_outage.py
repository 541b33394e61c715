"""Redis is where a 202 lives: without it we refuse honestly, and what we acknowledged survives."""

from __future__ import annotations

import asyncpg

from labs_analytics.embedded import EmbeddedRedis
from tests.helpers import ApiFactory, create_key, duplicated_ids, make_events, wait_for_events


async def test_ingest_answers_503_while_redis_is_down_and_recovers_after(
    api: ApiFactory, redis_server: EmbeddedRedis, db: asyncpg.Connection
) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        acknowledged = make_events(10)
        assert (await app.post({"events": acknowledged}, key)).status_code == 202

        redis_server.stop()
        refused = await app.post({"events": make_events(10)}, key)
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"] == "queue_unavailable"

        redis_server.start()
        after = make_events(10)
        assert (await app.post({"events": after}, key)).status_code == 202

    # Everything acknowledged, before the restart (AOF) and after, lands exactly once.
    async with api() as app:
        await wait_for_events(db, 20)
        stored = {str(r["event_id"]) for r in await db.fetch("SELECT event_id FROM events")}
        assert stored == {e["event_id"] for e in acknowledged + after}
        assert await duplicated_ids(db) == []
