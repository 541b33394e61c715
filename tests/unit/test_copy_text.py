"""Entries as COPY text: the form this service writes is read, the rest left to the exact path."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from labs_analytics.events import EventRecord
from labs_analytics.queue.entries import ENTRY_FORMAT_VERSION, encode_entry
from labs_analytics.storage.copy_text import NotCanonical, copy_text

AT = datetime(2026, 12, 2, 16, 30, 15, 123456, tzinfo=UTC)


def record(**overrides: Any) -> EventRecord:
    fields: dict[str, Any] = {
        "event_id": uuid.UUID("0b8e2a4e-3f5c-4d6a-9e1f-2a3b4c5d6e7f"),
        "product": "clubs",
        "name": "post.click",
        "user": "u_1",
        "timestamp": AT,
        "properties": {"post": 7},
        "context": None,
        "received_at": AT + timedelta(seconds=1),
    }
    return EventRecord(**{**fields, **overrides})


def columns(text: bytes) -> list[list[str]]:
    return [line.split("\t") for line in text.decode().splitlines()]


def test_an_event_is_one_line_of_the_staging_columns() -> None:
    text = copy_text([encode_entry([record()])])
    assert text.rows == 1
    assert columns(text.data) == [
        [
            "2026-12-02T16:30:15.123456+00:00",
            "0b8e2a4e-3f5c-4d6a-9e1f-2a3b4c5d6e7f",
            "clubs",
            "post.click",
            "u_1",
            '{"post":7}',
            "\\N",  # no context
            "2026-12-02T16:30:16.123456+00:00",
            "\\N",  # not corrected for clock skew
            "\\N",
        ]
    ]


def test_the_events_of_every_entry_in_order() -> None:
    entries = [encode_entry([record(name=f"e{i}"), record(name=f"f{i}")]) for i in range(3)]
    text = copy_text(entries)
    assert text.rows == 6
    assert [row[3] for row in columns(text.data)] == ["e0", "f0", "e1", "f1", "e2", "f2"]


def test_characters_copy_treats_specially_are_escaped() -> None:
    awkward = "tab\there, new\nline, return\r, back\\slash, \\N, \\."
    text = copy_text(
        [encode_entry([record(name=awkward, user=awkward, properties={"k": awkward})])]
    )
    (row,) = columns(text.data)
    assert len(row) == 10  # no tab or newline left unescaped
    assert row[3] == row[4] == ("tab\\there, new\\nline, return\\r, back\\\\slash, \\\\N, \\\\.")
    # The JSON text's own escapes (\t, \n, \\) are escaped again for COPY.
    assert row[5] == orjson.dumps({"k": awkward}).decode().replace("\\", "\\\\")


def test_a_corrected_event_carries_both_times() -> None:
    corrected = record(clock_skew_ms=-1500, corrected_timestamp=AT - timedelta(seconds=90))
    (row,) = columns(copy_text([encode_entry([corrected])]).data)
    assert row[8:] == ["2026-12-02T16:28:45.123456+00:00", "-1500"]


def test_a_whole_second_is_written_without_a_fraction_and_still_read() -> None:
    (row,) = columns(copy_text([encode_entry([record(timestamp=AT.replace(microsecond=0))])]).data)
    assert row[0] == "2026-12-02T16:30:15+00:00"


def test_nothing_to_copy() -> None:
    assert copy_text([]).rows == 0
    assert copy_text([encode_entry([])]).data == b""


def item(**overrides: Any) -> dict[bytes, bytes]:
    (fields,) = orjson.loads(encode_entry([record()])[b"events"])
    fields.update(overrides)
    return {b"v": ENTRY_FORMAT_VERSION, b"n": b"1", b"events": orjson.dumps([fields])}


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param({b"v": b"2", b"n": b"1", b"events": b"[]"}, id="another format version"),
        pytest.param({b"v": ENTRY_FORMAT_VERSION, b"n": b"1"}, id="no events"),
        pytest.param({b"v": ENTRY_FORMAT_VERSION, b"events": b"[{garbage"}, id="not JSON"),
        pytest.param({b"v": ENTRY_FORMAT_VERSION, b"events": b'{"a": 1}'}, id="not an array"),
        pytest.param({b"v": ENTRY_FORMAT_VERSION, b"events": b"[1]"}, id="not an object"),
        pytest.param(item(name=5), id="a number for a name"),
        pytest.param(item(user=["u"]), id="a list for a user"),
        pytest.param(item(event_id=None), id="no id"),
        pytest.param(item(timestamp="2026-12-02T17:30:15+01:00"), id="another offset"),
        pytest.param(item(timestamp="2026-12-02T16:30:15"), id="no offset"),
        pytest.param(item(timestamp="now"), id="a word PostgreSQL reads as a time"),
        pytest.param(item(timestamp=1764693015), id="unix seconds"),
        pytest.param(item(received_at="2026-12-02 16:30:15+00:00"), id="a space for T"),
        pytest.param(item(clock_skew_ms=1.5), id="a fractional skew"),
        pytest.param(item(clock_skew_ms=True), id="a boolean skew"),
        pytest.param(item(clock_skew_ms=5, corrected_timestamp="yesterday"), id="a corrected word"),
    ],
)
def test_what_this_service_does_not_write_is_left_to_the_exact_path(
    entry: dict[bytes, bytes],
) -> None:
    with pytest.raises(NotCanonical):
        copy_text([encode_entry([record()]), entry])
