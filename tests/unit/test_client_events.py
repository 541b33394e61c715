"""Turning a track() call into an event: ids, timestamps, checks, options."""

from __future__ import annotations

import decimal
import enum
import json
import os
import random
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from labs_analytics.events import timestamp_from_uuid7
from labs_analytics_client import (
    AnalyticsClient,
    AsyncAnalyticsClient,
    DroppedEvent,
    InvalidEvent,
    uuid7,
)
from labs_analytics_client._events import (
    RANDOM_POOL_BYTES,
    DropReason,
    EventRejected,
    UUIDv7Generator,
    encode_event,
    format_unix_ns,
)

UNREACHABLE = "http://127.0.0.1:9"


def event(**kwargs: Any) -> dict[str, Any]:
    name = kwargs.pop("name", "check")
    decoded: dict[str, Any] = json.loads(encode_event(name, **kwargs).data)
    return decoded


def reason(**kwargs: Any) -> DropReason:
    with pytest.raises(EventRejected) as caught:
        encode_event(kwargs.pop("name", "check"), **kwargs)
    return caught.value.reason


def test_uuid7_has_the_version_the_variant_and_the_time() -> None:
    before = datetime.now(UTC)
    value = uuid7()
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    stamped = timestamp_from_uuid7(value)  # the server's reading of it
    assert stamped is not None
    assert before - timedelta(milliseconds=1) <= stamped <= datetime.now(UTC)


def test_uuid7_is_strictly_increasing_within_a_millisecond_and_past_the_counter() -> None:
    generator = UUIDv7Generator()
    ids = [generator.new_int(1_700_000_000_000) for _ in range(5000)]  # one frozen ms
    assert ids == sorted(set(ids))  # unique and increasing
    assert ids[0] >> 80 == 1_700_000_000_000
    assert ids[-1] >> 80 > 1_700_000_000_000  # the 12-bit counter overflowed: ms advanced
    later = generator.new_int(1_699_999_999_000)  # the clock stepped back
    assert later > ids[-1]


def test_uuid7_random_bits_do_not_come_from_the_random_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whatever the application does to `random` (seeding it, or a generator
    # as predictable as possible), ids stay unpredictable and never repeat.
    class Predictable(random.Random):
        def getrandbits(self, k: int) -> int:
            return 0

        def random(self) -> float:
            return 0.0

    monkeypatch.setattr(random, "Random", Predictable)
    made = []
    for _ in range(3):
        random.seed(1234)
        generator = UUIDv7Generator()
        made += [generator.new_int(1_700_000_000_000) for _ in range(50)]
    assert len(set(made)) == len(made)
    rand_b = [value & (2**62 - 1) for value in made]
    assert len(set(rand_b)) == len(rand_b)
    # The 62 random bits are about half ones, as random bits are (not zero).
    ones = sum(bin(bits).count("1") for bits in rand_b) / (62 * len(rand_b))
    assert 0.4 < ones < 0.6


def test_uuid7_random_bits_come_from_the_os(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[int] = []
    real = os.urandom

    def urandom(n: int) -> bytes:
        drawn.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", urandom)
    generator = UUIDv7Generator()
    values = [generator.new_int(1_700_000_000_000 + i) for i in range(1000)]
    assert drawn  # a pool of the kernel's random bytes, drawn a few times for 1000 ids
    assert sum(drawn) < 1000 * 16 + 2 * RANDOM_POOL_BYTES
    assert all(uuid.UUID(int=v).version == 7 for v in values)


def test_uuid7_ids_of_a_forked_child_never_repeat_its_parents() -> None:
    generator = UUIDv7Generator()
    generator.new_int(1_700_000_000_000)  # a pool is drawn, partly used
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            value = generator.new_int(1_800_000_000_000)
            os.write(write_end, value.to_bytes(16))
        finally:
            os._exit(0)
    os.close(write_end)
    child = int.from_bytes(os.read(read_end, 16))
    os.close(read_end)
    os.waitpid(pid, 0)
    parent = generator.new_int(1_800_000_000_000)
    assert child & (2**62 - 1) != parent & (2**62 - 1)


def test_uuid7_ids_are_monotonic_from_many_threads() -> None:
    generator = UUIDv7Generator()
    out: list[list[str]] = [[] for _ in range(4)]

    def make(slot: list[str]) -> None:
        slot.extend(generator.new() for _ in range(2000))

    threads = [threading.Thread(target=make, args=(slot,)) for slot in out]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ids in out:
        assert ids == sorted(ids)  # each thread sees them increase
        assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    everything = [i for ids in out for i in ids]
    assert len(set(everything)) == len(everything)


def test_event_ids_and_timestamps_are_set_at_track_time() -> None:
    before = datetime.now(UTC)
    decoded = event()
    after = datetime.now(UTC)
    assert uuid.UUID(decoded["event_id"]).version == 7
    stamped = datetime.fromisoformat(decoded["timestamp"])
    # Read between before and after (to the microsecond it is truncated to).
    assert before - timedelta(microseconds=1) <= stamped <= after
    assert decoded["timestamp"].endswith("Z")
    assert format_unix_ns(1_795_796_400_123_456_789) == "2026-11-27T16:20:00.123456Z"


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (
            datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
            "2026-01-02T01:04:05.000000Z",
        ),
        ("2026-01-02T03:04:05Z", "2026-01-02T03:04:05.000000Z"),
        ("2026-01-02T03:04:05+01:00", "2026-01-02T02:04:05.000000Z"),
        (1_767_323_045, "2026-01-02T03:04:05.000000Z"),
        (1_767_323_045.5, "2026-01-02T03:04:05.500000Z"),
        ("1767323045", "2026-01-02T03:04:05.000000Z"),  # the server reads it as seconds too
        ("2026-01-02 03:04:05", "2026-01-02T03:04:05.000000Z"),
        (0, "1970-01-01T00:00:00.000000Z"),
    ],
)
def test_timestamps_are_normalised_to_rfc3339_utc(given: object, stored: str) -> None:
    assert event(timestamp=given)["timestamp"] == stored


def test_a_naive_datetime_is_local_time_and_a_string_without_offset_utc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # UTC+9, no daylight saving time
    time.tzset()
    try:
        assert event(timestamp=datetime(2026, 1, 2, 12, 4, 5, 6))["timestamp"] == (
            "2026-01-02T03:04:05.000006Z"
        )
        assert event(timestamp="2026-01-02T12:04:05")["timestamp"] == (
            "2026-01-02T12:04:05.000000Z"
        )
        stamped = datetime.fromisoformat(event(timestamp=datetime.now())["timestamp"])
        assert abs(stamped - datetime.now(UTC)) < timedelta(minutes=1)
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    "given",
    [
        datetime.now(UTC) + timedelta(hours=25),
        "yesterday",
        True,
        float("nan"),
        [1],
        -1,
        "1969-12-31T23:59:59Z",
        datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),
        "1e9",
        "+1764547200000",
        "2026-01-02",
        "2026-01-02T03:04Z",
        "2026-02-30T00:00:00Z",
    ],
)
def test_timestamps_the_server_would_refuse_are_refused(given: object) -> None:
    assert reason(timestamp=given) is DropReason.INVALID_TIMESTAMP


def test_fields_are_checked_as_the_server_checks_them() -> None:
    assert reason(name="trailing.newline\n") is DropReason.INVALID_NAME
    assert reason(name="x" * 129) is DropReason.INVALID_NAME
    assert reason(name=42) is DropReason.INVALID_NAME
    assert reason(user="") is DropReason.INVALID_USER
    assert reason(user="u" * 257) is DropReason.INVALID_USER
    assert reason(user="a\x00b") is DropReason.INVALID_USER
    assert reason(user=["u"]) is DropReason.INVALID_USER
    assert reason(event_id="not-a-uuid") is DropReason.INVALID_EVENT_ID
    assert reason(properties=[1, 2]) is DropReason.INVALID_PROPERTIES
    assert reason(properties={"k\x00": 1}) is DropReason.INVALID_PROPERTIES
    assert reason(properties={"x": float("inf")}) is DropReason.INVALID_PROPERTIES
    for not_a_number in (float("nan"), decimal.Decimal("NaN"), decimal.Decimal("-Infinity")):
        assert reason(properties={"x": not_a_number}) is DropReason.INVALID_PROPERTIES
    assert reason(properties={"x": 2**64}) is DropReason.INVALID_PROPERTIES
    assert reason(properties={"x": "\ud800"}) is DropReason.NOT_SERIALIZABLE
    assert reason(properties={"x": b"bytes"}) is DropReason.NOT_SERIALIZABLE
    assert reason(context={"x": "y" * 33_000}) is DropReason.TOO_LARGE
    assert reason(context="session") is DropReason.INVALID_CONTEXT
    circular: dict[str, Any] = {}
    circular["self"] = circular
    assert reason(properties=circular) is DropReason.NOT_SERIALIZABLE
    assert event(user=12345)["user"] == "12345"
    assert event(properties={"x": 2**64 - 1, "y": -(2**63)})["properties"]["x"] == 2**64 - 1


def test_a_backslash_u0000_text_is_not_a_nul() -> None:
    # The fast path looks for the escape in the JSON text; the exact walk decides.
    assert event(properties={"path": "C:\\u0000dir"})["properties"] == {"path": "C:\\u0000dir"}


def test_nesting_depth_matches_the_server() -> None:
    def nested(levels: int) -> Any:
        value: Any = 1
        for _ in range(levels):
            value = [value]
        return value

    assert event(properties={"x": nested(31)})  # the scalar sits at depth 32
    assert reason(properties={"x": nested(32)}) is DropReason.INVALID_PROPERTIES


def test_common_python_types_have_a_json_form() -> None:
    class Color(enum.Enum):
        RED = "red"

    value = uuid.uuid4()
    properties = event(
        properties={
            "at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            "on": date(2026, 1, 2),
            "id": value,
            "price": decimal.Decimal("12.50"),
            "color": Color.RED,
            "tags": {"a"},
            "pair": (1, 2),
        }
    )["properties"]
    assert properties == {
        "at": "2026-01-02T03:04:05+00:00",
        "on": "2026-01-02",
        "id": str(value),
        "price": 12.5,
        "color": "red",
        "tags": ["a"],
        "pair": [1, 2],
    }


def test_the_default_context_is_merged_under_the_events_own() -> None:
    default = {"app": "clubs", "version": "1"}
    assert event(default_context=default)["context"] == default
    merged = event(default_context=default, context={"version": "2", "session": "s"})
    assert merged["context"] == {"app": "clubs", "version": "2", "session": "s"}
    assert "context" not in event()
    assert "properties" not in event(properties={})


def test_a_given_event_id_is_kept() -> None:
    given = uuid.uuid4()
    assert event(event_id=given)["event_id"] == str(given)
    assert event(event_id=str(given).upper())["event_id"] == str(given)


def test_track_drops_with_a_reason_and_calls_on_drop() -> None:
    drops: list[DroppedEvent] = []
    client = AnalyticsClient("lak_0_x", base_url=UNREACHABLE, on_drop=drops.append)
    try:
        assert client.track("bad name!") is None
        assert client.track("ok", properties={"x": "\ud800"}) is None  # not UTF-8
        stats = client.stats()
        assert stats.dropped_by_reason == {"invalid_name": 1, "not_serializable": 1}
        # The README's names work both ways: attributes, and keys of a mapping.
        assert stats["dropped_by_reason"] == {"invalid_name": 1, "not_serializable": 1}
        assert stats["dropped"] == stats.dropped == 2
        assert dict(stats)["queued"] == 0
        assert set(stats) == {
            "queued",
            "in_flight",
            "sent",
            "dropped",
            "failed",
            "retried",
            "batches",
            "dropped_by_reason",
            "failed_by_reason",
            "discarded",
        }
        with pytest.raises(KeyError):
            stats["nope"]
        assert [(d.reason, d.name) for d in drops] == [
            ("invalid_name", "bad name!"),
            ("not_serializable", "ok"),
        ]
    finally:
        client.close(timeout=0)


def test_strict_mode_raises_on_invalid_events_only() -> None:
    client = AnalyticsClient(
        "lak_0_x", base_url=UNREACHABLE, strict=True, max_queue_size=1, flush_interval=60
    )
    try:
        with pytest.raises(InvalidEvent, match="invalid_name") as caught:
            client.track("bad name!")
        assert isinstance(caught.value, ValueError)
        assert caught.value.reason == "invalid_name"
        # strict keeps refusing what lenient mode would convert or write as its repr().
        for value in (object(), b"bytes"):
            with pytest.raises(InvalidEvent, match="not_serializable"):
                client.track("ok", properties={"x": value})
        assert client.track("ok") is not None
        assert client.track("ok") is None  # queue full: counted, never raised
        assert client.stats().dropped_by_reason == {
            "invalid_name": 1,
            "not_serializable": 2,
            "queue_full": 1,
        }
    finally:
        client.close(timeout=0)


def test_a_closed_client_drops_what_it_is_given() -> None:
    client = AnalyticsClient("lak_0_x", base_url=UNREACHABLE)
    assert client.close(timeout=0) == 0
    assert client.track("late") is None
    assert client.stats().dropped_by_reason == {"closed": 1}


async def test_a_disabled_client_does_nothing() -> None:
    for client in (
        AnalyticsClient(enabled=False),
        AsyncAnalyticsClient(enabled=False),
    ):
        assert not client.enabled
        assert client.track("page.view") is None
        assert client.stats().dropped == 0
        assert client.stats().queued == 0
    sync_client = AnalyticsClient(enabled=False)
    assert sync_client.flush() == 0
    assert sync_client.close() == 0
    async_client = AsyncAnalyticsClient(enabled=False)
    assert await async_client.flush() == 0
    assert await async_client.aclose() == 0


def test_options_are_checked_when_the_client_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABS_ANALYTICS_API_KEY", raising=False)
    with pytest.raises(ValueError, match="API key"):
        AnalyticsClient()
    with pytest.raises(ValueError, match="batch_size"):
        AnalyticsClient("k", batch_size=1001)
    with pytest.raises(ValueError, match="max_batch_bytes"):
        AnalyticsClient("k", max_batch_bytes=2 * 1024 * 1024)
    with pytest.raises(ValueError, match="timeout"):
        AnalyticsClient("k", timeout=0)
    monkeypatch.setenv("LABS_ANALYTICS_API_KEY", "lak_from_env")
    monkeypatch.setenv("LABS_ANALYTICS_URL", "http://analytics.internal:8000/")
    client = AnalyticsClient()
    assert client.base_url == "http://analytics.internal:8000"
    client.close(timeout=0)
