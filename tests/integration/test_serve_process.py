"""`labs-analytics serve` as a real process: the shape a deployment runs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import httpx
from redis.asyncio import Redis

from labs_analytics.settings import Settings
from tests.helpers import create_key, duplicated_ids, make_events, serve_process, wait_for_events


async def test_ten_thousand_events_in_batches_land_exactly_once_within_ten_seconds(
    settings: Settings, db: asyncpg.Connection, redis: Redis, tmp_path: Path
) -> None:
    key = await create_key(settings, product="clubs")
    # Production timings (500 ms flush interval), not the fast test ones.
    production_like = settings.model_copy(update={"flush_interval_ms": 500})
    with serve_process(production_like, tmp_path) as server:
        batches = [make_events(100) for _ in range(100)]
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as client:
            responses = await asyncio.gather(
                *(client.post("/v1/events", json={"events": batch}) for batch in batches)
            )
        last_ack = time.monotonic()
        assert [r.status_code for r in responses] == [202] * 100
        await wait_for_events(db, 10_000, timeout=10)
        elapsed = time.monotonic() - last_ack

    assert elapsed < 10
    assert await db.fetchval("SELECT count(*) FROM events") == 10_000
    assert await duplicated_ids(db) == []
    sent = {e["event_id"] for batch in batches for e in batch}
    stored = {str(r["event_id"]) for r in await db.fetch("SELECT event_id FROM events")}
    assert stored == sent
