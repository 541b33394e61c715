"""How events are laid out in a stream entry, and read back.

An entry is ``{"v": "1", "n": <count>, "events": <JSON array>}``: the events
of one request (a spooled or replayed one), or of every ingest request that
shared a script call (``labs_analytics.queue.producer``: the append script
joins their arrays' items). Each event carries its product and receive time,
so an entry needs nothing else. The version field lets a later format coexist
with entries still in the stream.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from labs_analytics.events import EventRecord, parse_uuid

ENTRY_FORMAT_VERSION = b"1"
# The most digits an entry's ``n`` may have; 9 stay exact in Lua's numbers too.
_MAX_COUNT_DIGITS = 9


class UndecodableEntry(ValueError):
    """A stream entry that is not in a format this version can read."""


def encode_entry(records: Sequence[EventRecord]) -> dict[bytes, bytes]:
    return entry_fields(encode_events(records), len(records))


def encode_events(records: Sequence[EventRecord]) -> bytes:
    """The records as an entry's ``events``: a JSON array."""
    return orjson.dumps([_record_as_json(record) for record in records], default=_uuid_as_json)


def _uuid_as_json(value: object) -> str:
    # orjson writes uuid.UUID itself, but not its subclasses: the ids
    # ``parse_uuid`` makes (a decoded entry's, a Segment messageId).
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def entry_fields(events: bytes, count: int) -> dict[bytes, bytes]:
    """An entry of its own for ``count`` events (``events``: their JSON array)."""
    return {b"v": ENTRY_FORMAT_VERSION, b"n": str(count).encode(), b"events": events}


def array_items(array: bytes) -> bytes:
    """A JSON array's items without its brackets: what a shared entry joins."""
    return array[1:-1]


def entry_events(fields: Mapping[bytes, bytes]) -> int:
    """The events an entry holds, from its ``n``: one to nine ASCII digits, else 1.

    The backlog counter counts entries out by this number and the recount
    (``labs_analytics.queue.lua``, ``entry_events``) counts them by the same
    rule, so an entry written by something else (``n`` missing, ``-2``,
    ``3.0``) weighs the same in both.
    """
    n = fields.get(b"n")
    if n is not None and 0 < len(n) <= _MAX_COUNT_DIGITS and n.isdigit():
        return int(n)
    return 1


def decode_entry(fields: Mapping[bytes, bytes]) -> list[EventRecord]:
    if fields.get(b"v") != ENTRY_FORMAT_VERSION:
        raise UndecodableEntry(f"unknown entry format version {fields.get(b'v')!r}")
    try:
        items: Any = orjson.loads(fields[b"events"])
        return [_record_from_json(item) for item in items]
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
        raise UndecodableEntry(f"{type(exc).__name__}: {exc}") from exc


def _record_as_json(record: EventRecord) -> dict[str, Any]:
    item = {
        "event_id": record.event_id,
        "product": record.product,
        "name": record.name,
        "user": record.user,
        "timestamp": record.timestamp,
        "properties": record.properties,
        "context": record.context,
        "received_at": record.received_at,
    }
    # Only when the request said when it was sent: most entries stay as they were.
    if record.clock_skew_ms is not None:
        item["clock_skew_ms"] = record.clock_skew_ms
        item["corrected_timestamp"] = record.corrected_timestamp
    return item


def _record_from_json(item: dict[str, Any]) -> EventRecord:
    # The required fields first: anything but an object fails on them (TypeError).
    record = EventRecord(
        event_id=parse_uuid(item["event_id"]),
        product=str(item["product"]),
        name=str(item["name"]),
        user=item["user"],
        timestamp=datetime.fromisoformat(item["timestamp"]),
        properties=item["properties"],
        context=item["context"],
        received_at=datetime.fromisoformat(item["received_at"]),
    )
    skew = item.get("clock_skew_ms")
    if skew is not None:
        corrected = item.get("corrected_timestamp")
        record.clock_skew_ms = int(skew)
        record.corrected_timestamp = (
            None if corrected is None else datetime.fromisoformat(corrected)
        )
    return record
