"""identify, alias, group, page and screen: the rows they make are the rows the
Segment-compatible routes make for the same messages."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx

from labs_analytics.settings import Settings
from labs_analytics_client import AnalyticsClient
from tests.helpers import ServeProcess, create_key, event_rows, new_product, wait_for_events

TIMESTAMP = "2026-11-30T15:04:05Z"


def _comparable(row: dict[str, Any]) -> tuple[Any, ...]:
    about = {k: v for k, v in row["context"]["$segment"].items() if k != "messageId"}
    return (row["name"], row["user_id"], row["properties"], about, row["timestamp"])


async def test_the_sdks_messages_are_stored_as_the_segment_routes_store_them(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    via_sdk, via_segment = new_product(), new_product()
    sdk_key = await create_key(sdk_settings, product=via_sdk)
    segment_key = await create_key(sdk_settings, product=via_segment)

    def send() -> None:
        with AnalyticsClient(sdk_key, base_url=shared_server.base_url) as client:
            client.identify("u_1", {"school": "SEAS"}, timestamp=TIMESTAMP)
            client.alias("anon-7", "u_1", timestamp=TIMESTAMP)
            client.group("u_1", "penn-labs", {"members": 40}, timestamp=TIMESTAMP)
            client.page("u_1", "Home", {"path": "/"}, category="Docs", timestamp=TIMESTAMP)
            client.screen("u_1", "Feed", timestamp=TIMESTAMP)
            assert client.flush(timeout=30) == 0
        messages = [
            {"type": "identify", "userId": "u_1", "traits": {"school": "SEAS"}},
            {"type": "alias", "userId": "u_1", "previousId": "anon-7"},
            {"type": "group", "userId": "u_1", "groupId": "penn-labs", "traits": {"members": 40}},
            {
                "type": "page",
                "userId": "u_1",
                "name": "Home",
                "category": "Docs",
                "properties": {"path": "/"},
            },
            {"type": "screen", "userId": "u_1", "name": "Feed"},
        ]
        response = httpx.post(
            f"{shared_server.base_url}/v1/batch",
            json={"batch": [{**m, "timestamp": TIMESTAMP} for m in messages]},
            auth=(segment_key, ""),
        )
        assert response.status_code == 200, response.text

    await asyncio.to_thread(send)
    await wait_for_events(db, 5, product=via_sdk)
    await wait_for_events(db, 5, product=via_segment)
    sdk_rows = sorted(_comparable(row) for row in await event_rows(db, via_sdk))
    segment_rows = sorted(_comparable(row) for row in await event_rows(db, via_segment))
    assert sdk_rows == segment_rows
    assert [row[0] for row in sdk_rows] == [
        "alias",
        "group",
        "identify",
        "page.view",
        "screen.view",
    ]
