"""The whole path, end to end: POST → stream → flusher → a row in PostgreSQL."""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

from tests.helpers import ApiFactory, create_key, make_event, wait_for_events


async def test_posted_event_becomes_a_row(
    api: ApiFactory, db: asyncpg.Connection, redis: Redis
) -> None:
    async with api() as app:
        key = await create_key(app.settings, product="clubs")
        event = make_event(user="pennkey1", properties={"club": "chess", "n": 3})
        response = await app.post(event, key)
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": 1, "ids": [event["event_id"]]}
        await wait_for_events(db, 1)

    row = await db.fetchrow("SELECT * FROM events")
    assert row is not None
    assert str(row["event_id"]) == event["event_id"]
    assert row["product"] == "clubs"
    assert row["user_id"] == "pennkey1"
    assert row["name"] == "post.click"
    assert row["timestamp"].isoformat() == "2026-11-27T12:00:00+00:00"
