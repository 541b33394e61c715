"""The module-level client, scopes, super_properties, before_send and debug, against the service."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from labs_analytics.settings import Settings
from labs_analytics_client import AnalyticsClient, AsyncAnalyticsClient
from tests.helpers import (
    ServeProcess,
    create_key,
    event_rows,
    new_product,
    run_script,
    wait_for_events,
)


async def test_a_script_tracks_through_the_module_and_the_exit_hook_delivers(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    run = await asyncio.to_thread(
        run_script,
        """
        import labs_analytics_client as analytics

        with analytics.scope(user="u_1", properties={"job": "nightly"}):
            print(analytics.track("job.done", properties={"rows": 3}))
        """,
        LABS_ANALYTICS_API_KEY=key,
        LABS_ANALYTICS_URL=shared_server.base_url,
    )
    assert run.returncode == 0, run.stderr
    await wait_for_events(db, 1, product=product)
    (row,) = await event_rows(db, product)
    assert str(row["event_id"]) == run.stdout.strip()
    assert row["user_id"] == "u_1"
    assert row["properties"] == {"job": "nightly", "rows": 3}


async def test_what_before_send_returns_is_stored_and_what_it_drops_is_not(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)

    def scrub(event: dict[str, object]) -> dict[str, object] | None:
        if event["name"] == "health.check":
            return None
        properties = event["properties"]
        assert isinstance(properties, dict)
        properties.pop("email", None)
        return event

    with AnalyticsClient(
        key,
        base_url=shared_server.base_url,
        super_properties={"app": "web", "plan": "free"},
        context={"host": "h1"},
        before_send=scrub,
    ) as client:
        with client.scope(user="u_9", properties={"plan": "pro"}):
            kept = client.track("signup", properties={"email": "a@b.c"}, context={"ip": "x"})
            assert client.track("health.check") is None
        assert client.flush(timeout=30) == 0
        stats = client.stats()
    assert stats.sent == 1
    assert stats.dropped_by_reason == {"before_send": 1}
    await wait_for_events(db, 1, product=product)
    (row,) = await event_rows(db, product)
    assert str(row["event_id"]) == kept
    assert row["user_id"] == "u_9"
    assert row["properties"] == {"app": "web", "plan": "pro"}
    assert row["context"] == {"host": "h1", "ip": "x"}


async def test_the_async_client_stores_each_tasks_scope(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    async with AsyncAnalyticsClient(key, base_url=shared_server.base_url) as client:

        async def handle(user: str) -> None:
            async with client.scope(user=user):
                await asyncio.sleep(0)
                client.track("request")

        await asyncio.gather(*(handle(f"u{i}") for i in range(4)))
        assert await client.flush(timeout=30) == 0
    await wait_for_events(db, 4, product=product)
    assert sorted(row["user_id"] for row in await event_rows(db, product)) == [
        "u0",
        "u1",
        "u2",
        "u3",
    ]


async def test_debug_logs_each_request_and_answer_without_the_key(
    shared_server: ServeProcess,
    sdk_settings: Settings,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    with caplog.at_level(logging.DEBUG, logger="labs_analytics_client"):
        with AnalyticsClient(key, base_url=shared_server.base_url, debug=True) as client:
            client.track("a")
            client.track("b")
            assert client.flush(timeout=30) == 0
    requests = [r.getMessage() for r in caplog.records if "analytics.request" in r.getMessage()]
    assert len(requests) == 1, requests
    assert "method=POST" in requests[0]
    assert f"url={shared_server.base_url}/v1/events" in requests[0]
    assert "events=2" in requests[0]
    assert "status=202" in requests[0]
    assert " ms=" in requests[0]
    assert all(key not in r.getMessage() for r in caplog.records)
    await wait_for_events(db, 2, product=product)


def test_debug_logs_a_refused_request_and_its_answer_without_the_key(
    shared_server: ServeProcess, caplog: pytest.LogCaptureFixture
) -> None:
    key = "lak_000000000000_not_a_key_we_know"
    with caplog.at_level(logging.DEBUG, logger="labs_analytics_client"):
        with AnalyticsClient(key, base_url=shared_server.base_url, debug=True) as client:
            client.track("a")
            client.flush(timeout=30)
    (request,) = [r.getMessage() for r in caplog.records if "analytics.request" in r.getMessage()]
    assert "status=401" in request
    assert "answer=b'{" in request
    assert all(key not in r.getMessage() for r in caplog.records)
