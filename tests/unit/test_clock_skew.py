"""Clock-skew correction: the arithmetic, its bound, and the stream entry carrying it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from labs_analytics.events import EventRecord, correct_clock_skew, parse_sent_at
from labs_analytics.queue.entries import decode_entry, encode_entry

RECEIVED = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DAY = timedelta(hours=24)


def record(timestamp: datetime | None = None) -> EventRecord:
    return EventRecord(
        event_id=uuid.uuid4(),
        product="clubs",
        name="post.click",
        user="u_1",
        # No time of its own: the very receive-time object, as to_record assigns it.
        timestamp=RECEIVED if timestamp is None else timestamp,
        properties={},
        context=None,
        received_at=RECEIVED,
    )


def test_a_sender_an_hour_fast_has_its_times_moved_an_hour_back() -> None:
    stamped = record(RECEIVED - timedelta(minutes=50))  # by its own clock
    correct_clock_skew([stamped], RECEIVED + timedelta(hours=1), DAY)
    assert stamped.clock_skew_ms == 3_600_000
    assert stamped.corrected_timestamp == RECEIVED - timedelta(hours=1, minutes=50)
    assert stamped.timestamp == RECEIVED - timedelta(minutes=50)  # the identity is untouched


def test_a_slow_sender_is_moved_forward() -> None:
    stamped = record(RECEIVED - timedelta(hours=3))
    correct_clock_skew([stamped], RECEIVED - timedelta(minutes=2, milliseconds=500), DAY)
    assert stamped.clock_skew_ms == -120_500
    assert stamped.corrected_timestamp == RECEIVED - timedelta(hours=3) + timedelta(
        minutes=2, milliseconds=500
    )


def test_a_skew_beyond_the_bound_is_recorded_and_not_applied() -> None:
    stamped = record(RECEIVED - timedelta(days=3))
    correct_clock_skew([stamped], RECEIVED + timedelta(days=2), DAY)
    assert stamped.clock_skew_ms == 2 * 86_400_000
    assert stamped.corrected_timestamp is None


def test_an_event_that_took_the_receive_time_is_already_on_our_clock() -> None:
    unstamped = record()
    equal_by_chance = record(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))  # equal, not the same
    correct_clock_skew([unstamped, equal_by_chance], RECEIVED + timedelta(hours=1), DAY)
    assert unstamped.corrected_timestamp == RECEIVED
    assert equal_by_chance.corrected_timestamp == RECEIVED - timedelta(hours=1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-30T13:00:00Z", datetime(2026, 11, 30, 13, tzinfo=UTC)),
        ("2026-11-30T14:00:00+01:00", datetime(2026, 11, 30, 13, tzinfo=UTC)),
        ("2026-11-30T13:00:00", datetime(2026, 11, 30, 13, tzinfo=UTC)),
        (1_764_507_600, datetime(2025, 11, 30, 13, tzinfo=UTC)),
        ("3026-01-01T00:00:00Z", datetime(3026, 1, 1, tzinfo=UTC)),  # no range check
        ("yesterday", None),
        (True, None),
        ({"at": 1}, None),
        (float("nan"), None),
        (None, None),
    ],
)
def test_sent_at_reads_any_timestamp_form_or_nothing(value: object, expected: object) -> None:
    assert parse_sent_at(value) == expected


def test_the_stream_entry_carries_the_correction_and_old_entries_still_read() -> None:
    corrected, beyond, plain = (record(RECEIVED - timedelta(minutes=1)) for _ in range(3))
    correct_clock_skew([corrected], RECEIVED + timedelta(seconds=30), DAY)
    correct_clock_skew([beyond], RECEIVED + timedelta(days=2), DAY)
    assert beyond.corrected_timestamp is None
    records = [corrected, beyond, plain]
    assert decode_entry(encode_entry(records)) == records
    assert b"clock_skew_ms" not in encode_entry([plain])[b"events"]
