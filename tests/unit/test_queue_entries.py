"""The stream entry format: what goes in comes out, and what cannot be read is refused."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from labs_analytics.events import EventRecord, parse_uuid
from labs_analytics.queue.entries import (
    ENTRY_FORMAT_VERSION,
    UndecodableEntry,
    decode_entry,
    encode_entry,
)


def record(**overrides: Any) -> EventRecord:
    fields: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "product": "clubs",
        "name": "post.click",
        "user": "u_1",
        "timestamp": datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC),
        "properties": {"post": 7},
        "context": {"app": "1.2"},
        "received_at": datetime(2024, 5, 1, 12, 30, 16, 654321, tzinfo=UTC),
    }
    return EventRecord(**{**fields, **overrides})


def entry_with_items(items: Any) -> dict[bytes, bytes]:
    return {b"v": ENTRY_FORMAT_VERSION, b"n": b"1", b"events": orjson.dumps(items)}


def encoded_items(*records: EventRecord) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = orjson.loads(encode_entry(records)[b"events"])
    return items


def test_round_trip_preserves_every_field() -> None:
    records = [
        record(
            properties={
                "nested": {"list": [1, 2.5, True, None, "é✓"], "deeper": {"k": [{"x": -1}]}},
                "empty": {},
            },
        ),
        record(user=None, context=None, properties={}),
    ]
    assert decode_entry(encode_entry(records)) == records


def test_round_trip_keeps_datetimes_timezone_aware_and_to_the_microsecond() -> None:
    plus_two = timezone(timedelta(hours=2))
    original = record(
        timestamp=datetime(2024, 1, 1, 1, 0, 0, 1, tzinfo=plus_two),
        received_at=datetime(2024, 1, 1, 0, 0, 0, 999999, tzinfo=UTC),
    )
    (decoded,) = decode_entry(encode_entry([original]))
    assert decoded.timestamp == original.timestamp
    assert decoded.timestamp.utcoffset() == timedelta(hours=2)
    assert decoded.received_at == original.received_at
    assert decoded.received_at.tzinfo is not None


def test_round_trip_returns_uuids_not_strings() -> None:
    original = record()
    (decoded,) = decode_entry(encode_entry([original]))
    assert isinstance(decoded.event_id, uuid.UUID)
    assert decoded.event_id == original.event_id
    assert hash(decoded.event_id) == hash(original.event_id)
    assert str(decoded.event_id) == str(original.event_id)
    assert {decoded.event_id: 1}[original.event_id] == 1


def test_a_decoded_record_encodes_as_it_was_read() -> None:
    """A dead-lettered event is re-encoded from its decoded record (asyncpg's UUID type)."""
    encoded = encode_entry([record(), record(user=None)])
    assert encode_entry(decode_entry(encoded)) == encoded


def test_round_trip_keeps_none_user_and_context() -> None:
    (decoded,) = decode_entry(encode_entry([record(user=None, context=None)]))
    assert decoded.user is None
    assert decoded.context is None


def test_round_trip_keeps_record_order() -> None:
    records = [record(name=f"e{i}") for i in range(10)]
    assert [r.name for r in decode_entry(encode_entry(records))] == [f"e{i}" for i in range(10)]


def test_entry_has_version_count_and_events_as_bytes() -> None:
    entry = encode_entry([record(), record()])
    assert set(entry) == {b"v", b"n", b"events"}
    assert entry[b"v"] == b"1"
    assert entry[b"n"] == b"2"
    assert all(isinstance(value, bytes) for value in entry.values())


def test_empty_entry_round_trips_to_no_records() -> None:
    entry = encode_entry([])
    assert entry[b"n"] == b"0"
    assert decode_entry(entry) == []


@pytest.mark.parametrize("version", [b"2", b"0", b"", b"v1"])
def test_unknown_version_is_undecodable(version: bytes) -> None:
    entry = {**encode_entry([record()]), b"v": version}
    with pytest.raises(UndecodableEntry, match="unknown entry format version"):
        decode_entry(entry)


def test_entry_without_a_version_is_undecodable() -> None:
    entry = encode_entry([record()])
    del entry[b"v"]
    with pytest.raises(UndecodableEntry, match="unknown entry format version"):
        decode_entry(entry)


def test_entry_without_events_is_undecodable() -> None:
    with pytest.raises(UndecodableEntry):
        decode_entry({b"v": ENTRY_FORMAT_VERSION, b"n": b"0"})


@pytest.mark.parametrize("payload", [b"{not json", b"", b"\xff\xfe", b"[1,"])
def test_garbage_json_is_undecodable(payload: bytes) -> None:
    with pytest.raises(UndecodableEntry):
        decode_entry({b"v": ENTRY_FORMAT_VERSION, b"n": b"1", b"events": payload})


@pytest.mark.parametrize("items", [{"a": 1}, 5, None, "text", [1], [None]])
def test_events_that_are_not_a_list_of_objects_are_undecodable(items: Any) -> None:
    with pytest.raises(UndecodableEntry):
        decode_entry(entry_with_items(items))


@pytest.mark.parametrize(
    "field",
    ["event_id", "product", "name", "user", "timestamp", "properties", "context", "received_at"],
)
def test_item_missing_a_field_is_undecodable(field: str) -> None:
    (item,) = encoded_items(record())
    del item[field]
    with pytest.raises(UndecodableEntry, match="KeyError"):
        decode_entry(entry_with_items([item]))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", "not-a-uuid"),
        ("event_id", None),
        ("timestamp", "yesterday"),
        ("timestamp", None),
        ("received_at", 1_700_000_000),
    ],
)
def test_item_with_an_unreadable_value_is_undecodable(field: str, value: Any) -> None:
    (item,) = encoded_items(record())
    item[field] = value
    with pytest.raises(UndecodableEntry):
        decode_entry(entry_with_items([item]))


def test_undecodable_entry_is_a_value_error() -> None:
    assert issubclass(UndecodableEntry, ValueError)


@pytest.mark.parametrize(
    "text",
    [
        "0192f0c4-8c3a-7cc2-9a1e-3f6d2b1c4e5a",  # canonical: the fast path
        "0192F0C4-8C3A-7CC2-9A1E-3F6D2B1C4E5A",  # the rest: uuid.UUID's own parser
        "{0192f0c4-8c3a-7cc2-9a1e-3f6d2b1c4e5a}",
        "0192f0c48c3a7cc29a1e3f6d2b1c4e5a",
    ],
)
def test_parse_uuid_equals_the_standard_parser(text: str) -> None:
    parsed, standard = parse_uuid(text), uuid.UUID(text)
    assert parsed == standard
    assert hash(parsed) == hash(standard)
    assert (str(parsed), parsed.version) == (str(standard), standard.version)


@pytest.mark.parametrize(
    "text", ["", "not-a-uuid", "0192f0c4-8c3a-7cc2-9a1e-3f6d2b1c4e5", "0x" * 16]
)
def test_parse_uuid_refuses_what_the_standard_parser_refuses(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the standard parser's messages vary)
        parse_uuid(text)
