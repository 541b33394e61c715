"""Undelivered events reach on_error with their payloads, and replay stores each once."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from labs_analytics.embedded import free_port
from labs_analytics.settings import Settings
from labs_analytics_client import AnalyticsClient, DeliveryError, RetriesExhausted, ShutdownTimeout
from tests.helpers import (
    count_events,
    create_key,
    duplicated_ids,
    event_rows,
    in_a_thread,
    new_product,
    serve_process,
    wait_for_events,
)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


async def test_events_given_up_while_the_server_is_down_are_replayed_once_it_is_up(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    product = new_product()
    key = await create_key(settings, product=product)
    port = free_port()  # nothing listens here yet
    base_url = f"http://127.0.0.1:{port}"
    errors: list[DeliveryError] = []
    with AnalyticsClient(
        key,
        base_url=base_url,
        on_error=errors.append,
        flush_interval=0.05,
        max_retry_time=0.5,
        retry_backoff_initial=0.05,
        retry_backoff_max=0.1,
        context={"app": "clubs"},
    ) as down:
        ids = [
            down.track("page.view", user="u_1", properties={"i": 0, "path": "/clubs"}),
            down.track("page.view", properties={"i": 1}, timestamp="2026-01-02T03:04:05.5Z"),
            down.track("job.done", context={"job": "nightly"}),
        ]
        assert down.flush(timeout=10) == 0
        stats = down.stats()
    assert stats.failed == 3
    assert all(isinstance(error, RetriesExhausted) for error in errors)

    # What an application would save (a file, a table) and read back later.
    saved = json.dumps([event for error in errors for event in error.events])
    undelivered = json.loads(saved)
    assert [event["event_id"] for event in undelivered] == ids
    assert [error_id for error in errors for error_id in error.event_ids] == ids
    assert undelivered[0]["properties"] == {"i": 0, "path": "/clubs"}
    assert undelivered[0]["user"] == "u_1"
    assert undelivered[1]["timestamp"] == "2026-01-02T03:04:05.500000Z"
    assert undelivered[2]["context"] == {"app": "clubs", "job": "nightly"}

    async with in_a_thread(serve_process(settings, tmp_path, port=port)):
        with AnalyticsClient(key, base_url=base_url, flush_interval=0.05) as up:
            assert up.replay(undelivered) == ids
            assert up.flush(timeout=15) == 0
            await wait_for_events(db, 3, product=product)
            # Replayed again (a crash before the application noted the replay): no new row.
            assert up.replay(undelivered) == ids
            marker = up.track("replay.done")
            assert up.flush(timeout=15) == 0
            await wait_for_events(db, 4, product=product)
            assert up.stats().failed == 0

    assert await count_events(db, product) == 4
    assert await duplicated_ids(db) == []
    stored = {str(row["event_id"]): row for row in await event_rows(db, product)}
    assert set(stored) == {*ids, marker}
    for event in undelivered:
        row = stored[event["event_id"]]
        assert row["timestamp"] == _instant(event["timestamp"])
        assert row["name"] == event["name"]
        assert row["properties"] == event.get("properties", {})
        assert row["context"] == event["context"]
    assert stored[ids[1]]["timestamp"] == datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)


def test_a_replayed_event_without_its_id_or_timestamp_is_dropped() -> None:
    client = AnalyticsClient("lak_0_x", base_url="http://127.0.0.1:9", flush_interval=60)
    try:
        assert client.replay(
            [{"name": "a.b", "timestamp": "2026-01-02T00:00:00Z"}, {"name": "a.b", "event_id": "x"}]
        ) == [None, None]
        assert client.stats().dropped_by_reason == {"invalid_event_id": 1, "invalid_timestamp": 1}
    finally:
        client.close(timeout=0)


def test_a_close_that_runs_out_of_time_gives_the_payloads_to_on_error() -> None:
    errors: list[DeliveryError] = []
    client = AnalyticsClient(
        "lak_0_x", base_url="http://127.0.0.1:9", on_error=errors.append, flush_interval=60
    )
    ids = [client.track("a.b", properties={"i": i}) for i in range(3)]
    client.close(timeout=0)
    assert all(isinstance(error, ShutdownTimeout) for error in errors)
    events = [event for error in errors for event in error.events]
    assert sorted(event["event_id"] for event in events) == sorted(ids)
    assert sorted(event["properties"]["i"] for event in events) == [0, 1, 2]
