"""What the SDK makes of the values it is given, checked in the rows the real service stored."""

from __future__ import annotations

import asyncio
import dataclasses
import decimal
import json
import math
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from labs_analytics.settings import Settings
from labs_analytics_client import AnalyticsClient, DroppedEvent
from tests.helpers import (
    ServeProcess,
    create_key,
    event_rows,
    new_product,
    run_script,
    wait_for_events,
)


async def test_a_naive_datetime_is_stored_as_the_local_instant_it_names(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    """Under TZ=Asia/Tokyo (UTC+9), ``datetime.now()`` is now, not 9 h ahead; a naive
    datetime is local time, and an RFC 3339 string without offset stays UTC."""
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    run = await asyncio.to_thread(
        run_script,
        f"""
        import json, time
        from datetime import datetime
        from labs_analytics_client import AnalyticsClient
        with AnalyticsClient({key!r}, base_url={shared_server.base_url!r}) as client:
            before = time.time()
            ids = {{
                "now": client.track("clock.now", timestamp=datetime.now()),
                "noon": client.track("clock.noon", timestamp=datetime(2026, 1, 2, 12, 0, 0)),
                "text": client.track("clock.text", timestamp="2026-01-02T12:00:00"),
            }}
            after = time.time()
            assert client.flush(timeout=30) == 0, client.stats()
        print(json.dumps({{"ids": ids, "before": before, "after": after}}))
        """,
        TZ="Asia/Tokyo",
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    await wait_for_events(db, 3, product=product)
    stored = {str(row["event_id"]): row["timestamp"] for row in await event_rows(db, product)}
    now = stored[report["ids"]["now"]]
    # datetime.now() is truncated to microseconds and read between before and after.
    assert report["before"] - 1e-6 <= now.timestamp() <= report["after"] + 1e-6
    assert stored[report["ids"]["noon"]] == datetime(2026, 1, 2, 3, 0, 0, tzinfo=UTC)
    assert stored[report["ids"]["text"]] == datetime(2026, 1, 2, 12, 0, 0, tzinfo=UTC)


async def test_every_not_a_number_is_dropped_for_one_reason_and_the_rest_is_stored(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    drops: list[DroppedEvent] = []
    with AnalyticsClient(key, base_url=shared_server.base_url, on_drop=drops.append) as client:
        kept = client.track("price.set", properties={"price": decimal.Decimal("12.50")})
        for value in (math.nan, decimal.Decimal("NaN"), decimal.Decimal("sNaN"), math.inf):
            assert client.track("price.set", properties={"price": value}) is None
        assert client.flush(timeout=30) == 0
        stats = client.stats()
    assert [drop.reason for drop in drops] == ["invalid_properties"] * 4
    # stats() as the README names it: attributes, or keys of a mapping.
    assert stats["dropped_by_reason"] == stats.dropped_by_reason == {"invalid_properties": 4}
    assert dict(stats)["sent"] == stats["sent"] == 1
    assert stats["failed_by_reason"] == {}
    await wait_for_events(db, 1, product=product)
    (row,) = await event_rows(db, product)
    assert str(row["event_id"]) == kept
    assert row["properties"] == {"price": 12.5}


@pytest.mark.parametrize("offset_hours", [9, -5])
def test_the_timestamp_of_a_naive_datetime_follows_the_zone(offset_hours: int) -> None:
    """The same naive wall-clock time names a different instant in each zone."""
    zone = f"Etc/GMT{-offset_hours:+d}"  # POSIX sign: Etc/GMT-9 is UTC+9
    run = run_script(
        """
        import json
        from datetime import datetime
        from labs_analytics_client._events import encode_event
        event = encode_event("clock.noon", timestamp=datetime(2026, 1, 2, 12, 0, 0))
        print(json.loads(event.data)["timestamp"])
        """,
        TZ=zone,
    )
    assert run.returncode == 0, run.stderr
    expected = datetime(2026, 1, 2, 12, 0, 0, tzinfo=UTC) - timedelta(hours=offset_hours)
    assert run.stdout.strip() == expected.strftime("%Y-%m-%dT%H:%M:%S.000000Z")


async def test_values_json_cannot_carry_are_converted_and_the_event_is_kept(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    @dataclasses.dataclass
    class Avatar:
        url: str
        raw: bytes

    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque>"

    product = new_product()
    key = await create_key(sdk_settings, product=product)
    drops: list[DroppedEvent] = []
    with AnalyticsClient(key, base_url=shared_server.base_url, on_drop=drops.append) as client:
        kept = client.track(
            "profile.view",
            properties={
                "user": {"avatar": Avatar("https://x/a.png", b"\xff\xfe"), "handle": b"ana"},
                "size": (64, 64),
                "widget": Opaque(),
            },
        )
        # A data error stays an error after conversion: 64-bit integers, here.
        assert client.track("profile.view", properties={"n": (2**64,), "w": Opaque()}) is None
        assert client.flush(timeout=30) == 0
    assert kept is not None
    assert [drop.reason for drop in drops] == ["invalid_properties"]
    await wait_for_events(db, 1, product=product)
    (row,) = await event_rows(db, product)
    assert str(row["event_id"]) == kept
    assert row["properties"] == {
        "user": {"avatar": {"url": "https://x/a.png", "raw": {"$base64": "//4="}}, "handle": "ana"},
        "size": [64, 64],
        "widget": "<Opaque>",
    }
