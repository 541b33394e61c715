"""The keyset cursor of ``GET /v1/events``: where a page ended, and which request it belongs to.

A cursor is base64url text of (version, the last row's timestamp and event
id, the range resolved on the first page) and a 12-byte BLAKE2b check over it
and the request's other parameters (its "fingerprint"). A changed character,
a cut-short cursor, or one sent with other filters, range, zone or product is
refused (``ValueError``, a 422). It is an integrity check, not a secret: the
product always comes from the key, so a forged cursor could only name another
position in the caller's own events.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
import struct
import uuid
from dataclasses import dataclass

from labs_analytics.read.dates import EPOCH, Interval

_CURSOR = struct.Struct(">Bq16sqq")  # version, timestamp, event id, range start, range end
_CURSOR_VERSION = 1
_CHECK_BYTES = 12
_CHECK_KEY = b"labs-analytics/events-cursor"
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_MICROSECOND = dt.timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page ended: the sort key of its last row."""

    timestamp: dt.datetime
    event_id: uuid.UUID


def _micros(moment: dt.datetime) -> int:
    return (moment - EPOCH) // _MICROSECOND


def _moment(micros: int) -> dt.datetime:
    return EPOCH + micros * _MICROSECOND


def _check(payload: bytes, fingerprint: bytes) -> bytes:
    return hashlib.blake2b(fingerprint + payload, digest_size=_CHECK_BYTES, key=_CHECK_KEY).digest()


def encode_cursor(position: Position, interval: Interval, fingerprint: bytes) -> str:
    payload = _CURSOR.pack(
        _CURSOR_VERSION,
        _micros(position.timestamp),
        position.event_id.bytes,
        _micros(interval.start),
        _micros(interval.end),
    )
    return base64.urlsafe_b64encode(payload + _check(payload, fingerprint)).rstrip(b"=").decode()


def decode_cursor(text: str, fingerprint: bytes) -> tuple[Position, Interval]:
    """The position and range a cursor names; ``ValueError`` unless this request gave it."""
    if not _BASE64URL.fullmatch(text):
        raise ValueError("a cursor is the base64url text of a page's next_cursor")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("a cursor is the base64url text of a page's next_cursor") from None
    # Canonical text only: a changed character must never decode to the same bytes.
    canonical = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    if len(raw) != _CURSOR.size + _CHECK_BYTES or canonical != text:
        raise ValueError("this cursor was cut short or changed: send next_cursor as given")
    payload, check = raw[: _CURSOR.size], raw[_CURSOR.size :]
    if not hmac.compare_digest(check, _check(payload, fingerprint)):
        raise ValueError(
            "this cursor was changed, or belongs to a request with other parameters: send "
            "next_cursor as given, with the same filters, range, time zone and product"
        )
    version, timestamp, event_id, start, end = _CURSOR.unpack(payload)
    if version != _CURSOR_VERSION:
        raise ValueError("this cursor is from another version: start from the first page")
    try:
        position = Position(_moment(timestamp), uuid.UUID(bytes=event_id))
        interval = Interval(_moment(start), _moment(end))
    except OverflowError:  # only a cursor we made passes the check; still, never a 500
        raise ValueError("this cursor names no time we keep") from None
    return position, interval
