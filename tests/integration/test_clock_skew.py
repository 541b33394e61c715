"""Clock-skew correction end to end: a request saying when it was sent, through the
real API, stream and flusher, into the row and back out of GET /v1/events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from labs_analytics.auth.keys import Scope
from tests.helpers import ApiFactory, create_key, make_event, wait_for_events


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def stored(db: asyncpg.Connection) -> dict[uuid.UUID, asyncpg.Record]:
    rows = await db.fetch(
        'SELECT event_id, "timestamp", received_at, corrected_timestamp, clock_skew_ms FROM events'
    )
    return {row["event_id"]: row for row in rows}


async def test_a_fast_senders_events_are_corrected_and_keep_their_own_timestamp(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    now = datetime.now(UTC)
    client_now = now + timedelta(hours=1)  # the sender's clock runs an hour fast
    stamped = make_event(timestamp=rfc3339(client_now - timedelta(minutes=10)))
    unstamped = make_event(timestamp=None)
    async with api() as app:
        key = await create_key(app.settings)
        body = {"sent_at": rfc3339(client_now), "events": [stamped, unstamped]}
        assert (await app.post(body, key)).status_code == 202
        await wait_for_events(db, 2)
    rows = await stored(db)

    row = rows[uuid.UUID(stamped["event_id"])]
    skew = client_now - row["received_at"]
    assert row["clock_skew_ms"] == round(skew / timedelta(milliseconds=1))
    assert abs(row["clock_skew_ms"] - 3_600_000) < 60_000
    assert row["timestamp"] == client_now - timedelta(minutes=10)  # the client's, untouched
    assert row["corrected_timestamp"] == row["timestamp"] - skew
    assert abs(row["corrected_timestamp"] - (now - timedelta(minutes=10))) < timedelta(minutes=1)

    row = rows[uuid.UUID(unstamped["event_id"])]
    assert row["corrected_timestamp"] == row["received_at"] == row["timestamp"]


async def test_a_skew_beyond_the_bound_is_flagged_and_a_resend_keeps_the_first_copy(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    event = make_event(timestamp=rfc3339(datetime.now(UTC) - timedelta(hours=1)))
    async with api(clock_skew_max_seconds=600) as app:
        key = await create_key(app.settings)
        far = {"sent_at": rfc3339(datetime.now(UTC) + timedelta(hours=2)), "events": [event]}
        assert (await app.post(far, key)).status_code == 202
        await wait_for_events(db, 1)
        # The same event again, with an honest clock: still the first copy.
        honest = {"sent_at": rfc3339(datetime.now(UTC)), "events": [event]}
        assert (await app.post(honest, key)).status_code == 202
        single = make_event()  # no sent_at: nothing known about the clock
        assert (await app.post(single, key)).status_code == 202
        await wait_for_events(db, 2)
    rows = await stored(db)
    assert len(rows) == 2
    row = rows[uuid.UUID(event["event_id"])]
    assert row["corrected_timestamp"] is None
    assert abs(row["clock_skew_ms"] - 7_200_000) < 60_000
    row = rows[uuid.UUID(single["event_id"])]
    assert (row["corrected_timestamp"], row["clock_skew_ms"]) == (None, None)


async def test_segment_sent_at_corrects_and_the_read_api_shows_it(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    now = datetime.now(UTC)
    message_id = str(uuid.uuid4())
    message = {
        "type": "track",
        "event": "Order Completed",
        "userId": "u_1",
        "messageId": message_id,
        "timestamp": rfc3339(now - timedelta(minutes=30, seconds=5)),  # 5 s slow
    }
    async with api() as app:
        key = await create_key(app.settings)
        reader = await create_key(app.settings, scopes=[Scope.READ])
        body = {"batch": [message], "sentAt": rfc3339(now - timedelta(seconds=5))}
        response = await app.client.post("/v1/batch", json=body, auth=(key, ""))
        assert response.status_code == 200, response.text
        await wait_for_events(db, 1)
        listed = await app.client.get(
            "/v1/events",
            params={"date_range": "7d"},
            headers={"Authorization": f"Bearer {reader}"},
        )
    assert listed.status_code == 200, listed.text
    [shown] = listed.json()["events"]
    row = (await stored(db))[uuid.UUID(message_id)]
    assert -7_000 < row["clock_skew_ms"] < -4_000
    # clock_skew_ms is rounded to the millisecond; the correction is exact.
    expected = row["timestamp"] - timedelta(milliseconds=row["clock_skew_ms"])
    assert abs(row["corrected_timestamp"] - expected) <= timedelta(milliseconds=1)
    assert shown["clock_skew_ms"] == row["clock_skew_ms"]
    assert datetime.fromisoformat(shown["corrected_timestamp"]) == row["corrected_timestamp"]
