"""What is stored is what was sent, or the request is refused saying why.

Integers past 64 bits were parsed as floats and stored rounded
(18446744073709551616 became 18446744073709552000); `0001-01-01T00:00:00Z`
was stored as `-infinity`; `"+1764547200000"` was read as milliseconds. Now
one rule, the same in the SDK, decides: integers in [-2^63, 2^64-1];
timestamps as unix seconds or RFC 3339, from 1970-01-01T00:00:00Z to 24 h
ahead. Everything else is a 422 naming the field.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from tests.helpers import ApiFactory, create_key, make_event, wait_for_events


async def stored_row(db: asyncpg.Connection, event_id: str) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT timestamp, properties::text AS properties FROM events WHERE event_id = $1",
        uuid.UUID(event_id),
    )
    assert row is not None
    return row


async def test_integers_at_the_64_bit_limits_are_stored_exactly(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    values = [2**63 - 1, 2**63, 2**64 - 1, -(2**63)]
    event = make_event(properties={"n": values})
    async with api() as app:
        key = await create_key(app.settings)
        response = await app.post(orjson.dumps(event), key)
        assert response.status_code == 202, response.text
        await wait_for_events(db, 1)
    row = await stored_row(db, event["event_id"])
    assert orjson.loads(row["properties"]) == {"n": values}
    assert str(2**64 - 1) in row["properties"]  # not 1.8446744073709552e19


@pytest.mark.parametrize("literal", [str(2**64), str(-(2**63) - 1), "1" + "0" * 30])
async def test_integers_past_64_bits_are_refused_naming_the_literal(
    api: ApiFactory, literal: str
) -> None:
    body = b'{"events": [%s, {"name": "n", "properties": {"big": %s}}]}' % (
        orjson.dumps(make_event()),
        literal.encode(),
    )
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        response = await app.post(body, key)
    assert response.status_code == 422
    [detail] = response.json()["details"]
    assert (detail["index"], detail["field"], detail["type"]) == (
        1,
        "properties.big",
        "int_out_of_range",
    )
    assert literal in detail["message"]
    assert "[-9223372036854775808, 18446744073709551615]" in detail["message"]
    assert "as strings" in detail["message"]


@pytest.mark.parametrize(
    "timestamp",
    [
        "0001-01-01T00:00:00Z",  # was stored as -infinity
        "1969-12-31T23:59:59Z",
        -1,
        "+1764547200000",  # was read as milliseconds: 2025-12-01
        "1.0e9",  # was accepted, while "1e9" was refused
        "1e9",
        "1764547200000",
        "2026-W01-1",
    ],
)
async def test_timestamps_outside_the_rule_are_refused_naming_the_field(
    api: ApiFactory, timestamp: Any
) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        response = await app.post({"events": [make_event(), make_event(timestamp=timestamp)]}, key)
    assert response.status_code == 422, response.text
    assert [(d["index"], d["field"]) for d in response.json()["details"]] == [(1, "timestamp")]


async def test_sent_at_before_1970_is_refused(api: ApiFactory) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        body = {"events": [make_event()], "sent_at": "0001-01-01T00:00:00Z"}
        response = await app.post(body, key)
    assert response.status_code == 422
    assert [(d["index"], d["field"]) for d in response.json()["details"]] == [(None, "sent_at")]


@pytest.mark.parametrize(
    ("timestamp", "stored"),
    [
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        ("1764547200", datetime(2025, 12, 1, tzinfo=UTC)),
        ("2025-12-01 01:00:00+01:00", datetime(2025, 12, 1, tzinfo=UTC)),
        ("2025-12-01T00:00:00", datetime(2025, 12, 1, tzinfo=UTC)),  # no offset: UTC
    ],
)
async def test_timestamps_within_the_rule_are_stored_as_that_instant(
    api: ApiFactory, db: asyncpg.Connection, timestamp: Any, stored: datetime
) -> None:
    event = make_event(timestamp=timestamp)
    async with api() as app:
        key = await create_key(app.settings)
        assert (await app.post(event, key)).status_code == 202
        await wait_for_events(db, 1)
    assert (await stored_row(db, event["event_id"]))["timestamp"] == stored
