"""Stream entries' events as rows of COPY's text format: the flusher's common path.

Decoding every event into Python objects for a binary COPY (``decode_entry``,
then asyncpg encoding ten values an event) was most of a flusher's CPU.
Here each event of an entry becomes one line of text instead: its id and
times go as they were written, for PostgreSQL to parse with its own input
functions, and its JSON objects are serialized once, as before. One flusher
draining alone: BENCHMARKS.md ("What moved the numbers").

Only entries in the form this service writes (``queue.entries``: times in UTC
as ``YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00``, strings where strings belong) are
read this way; for them both readings store the same row
(``tests/integration/test_copy_text.py``). Anything else (a hand-edited
replay, an entry of another version) raises ``NotCanonical`` and its batch is
read the exact way. So is a batch whose text PostgreSQL refuses (an invalid
id, February 30): the exact way then names the entry or event at fault.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from labs_analytics.queue.entries import ENTRY_FORMAT_VERSION

# What ``queue.entries`` writes for an aware UTC datetime (orjson's format).
# PostgreSQL and ``datetime.fromisoformat`` read such a text as the same instant.
_UTC_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{6})?\+00:00")
_NULL = "\\N"
# The characters COPY's text format escapes; every other one goes as it is.
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


class NotCanonical(ValueError):
    """An entry not in the form this service writes: read its batch the exact way."""


@dataclass(frozen=True, slots=True)
class CopyText:
    """Rows for the staging table (``bulk_writer.STAGING_COLUMNS``) in COPY's text format."""

    data: bytes
    rows: int

    def __len__(self) -> int:
        """Its rows: counted as a sequence of records is."""
        return self.rows


def copy_text(entries: Iterable[Mapping[bytes, bytes]]) -> CopyText:
    """The events of these entries' fields as one COPY text, or ``NotCanonical``."""
    lines: list[str] = []
    for fields in entries:
        lines += _entry_lines(fields)
    return CopyText("".join(lines).encode(), len(lines))


def _entry_lines(fields: Mapping[bytes, bytes]) -> list[str]:
    if fields.get(b"v") != ENTRY_FORMAT_VERSION:
        raise NotCanonical(f"entry format version {fields.get(b'v')!r}")
    try:
        items: Any = orjson.loads(fields[b"events"])
    except (KeyError, orjson.JSONDecodeError) as exc:
        raise NotCanonical(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(items, list):
        raise NotCanonical("the entry's events are not a JSON array")
    try:
        return [_line(item) for item in items]
    except (KeyError, TypeError) as exc:
        raise NotCanonical(f"{type(exc).__name__}: {exc}") from exc


def _line(item: dict[str, Any]) -> str:
    # Field by field as ``entries._record_from_json`` reads them, in
    # STAGING_COLUMNS order; a wrong type raises TypeError (NotCanonical).
    user = item["user"]
    context = item["context"]
    skew = item.get("clock_skew_ms")
    if skew is None:
        corrected = skew_text = _NULL
    else:
        if type(skew) is not int:
            raise TypeError("clock_skew_ms is not an integer")
        corrected_at = item.get("corrected_timestamp")
        corrected = _NULL if corrected_at is None else _time(corrected_at)
        skew_text = str(skew)
    return "\t".join(
        (
            _time(item["timestamp"]),
            _string(item["event_id"]),
            _text(_string(item["product"])),
            _text(_string(item["name"])),
            _NULL if user is None else _text(_string(user)),
            _text(orjson.dumps(item["properties"]).decode()),
            _NULL if context is None else _text(orjson.dumps(context).decode()),
            _time(item["received_at"]),
            corrected,
            skew_text + "\n",
        )
    )


def _string(value: object) -> str:
    if type(value) is not str:
        raise TypeError(f"{type(value).__name__} where a string belongs")
    return value


def _time(value: object) -> str:
    if type(value) is not str or not _UTC_TIME.fullmatch(value):
        raise TypeError(f"{value!r} is not a UTC time as this service writes them")
    return value


def _text(value: str) -> str:
    # Most values hold none of the characters to escape: look before translating.
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_ESCAPES)
    return value
