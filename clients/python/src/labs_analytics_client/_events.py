"""Turning a ``track()`` call into JSON once, checked against the wire contract.

The limits and patterns come from ``labs_analytics_client.contract``, the
module the server imports too; ``tests/unit/test_client_contract.py`` checks
that the SDK and the server reach the same verdicts from them. Every rule the
server would enforce with a 4xx is checked here, at ``track()`` time: one bad
event must never turn a whole batch into a 422.

An event is serialized exactly once, when it is tracked. A retry sends the same
bytes, with the same ``event_id`` and ``timestamp``, which is what lets the
server store it once (its primary key is ``(timestamp, product, event_id)``).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from labs_analytics_client._convert import jsonable, to_json
from labs_analytics_client.contract import (
    EARLIEST_TIMESTAMP,
    EVENT_NAME_PATTERN,
    MAX_FUTURE_SKEW_SECONDS,
    MAX_JSON_DEPTH,
    MAX_JSON_INT,
    MAX_PROPERTIES_BYTES,
    MAX_USER_LENGTH,
    MIN_JSON_INT,
    RFC3339_PATTERN,
    UNIX_SECONDS_PATTERN,
)

# fullmatch, not match: with ``match`` the ``$`` would accept a trailing newline,
# which the server's (Rust) regex refuses.
_NAME = re.compile(EVENT_NAME_PATTERN)
# In JSON text, a run of 19+ digits may be an integer that does not fit in 64 bits.
_LONG_DIGITS = re.compile(r"[0-9]{19}")
_UNIX_SECONDS = re.compile(UNIX_SECONDS_PATTERN, re.ASCII)
_RFC3339 = re.compile(RFC3339_PATTERN, re.ASCII)


class DropReason(enum.StrEnum):
    """Why ``track()`` refused an event (the keys of ``stats().dropped_by_reason``)."""

    INVALID_NAME = "invalid_name"
    INVALID_USER = "invalid_user"
    INVALID_TIMESTAMP = "invalid_timestamp"
    INVALID_EVENT_ID = "invalid_event_id"
    INVALID_PROPERTIES = "invalid_properties"
    INVALID_CONTEXT = "invalid_context"
    NOT_SERIALIZABLE = "not_serializable"
    TOO_LARGE = "too_large"
    QUEUE_FULL = "queue_full"
    CLOSED = "closed"


class EventRejected(Exception):
    """Internal: why an event cannot be encoded (becomes a drop, or InvalidEvent)."""

    def __init__(self, reason: DropReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class EncodedEvent(NamedTuple):
    event_id: str
    data: bytes  # the event's JSON, UTF-8
    # Lenient mode: (path, type name) of each value sent as its repr().
    converted: tuple[tuple[str, str], ...] = ()


# --- UUIDv7 ------------------------------------------------------------------------------


# Random bits are drawn from the OS this many bytes at a time: one getrandom()
# call per ~500 ids rather than one per id.
RANDOM_POOL_BYTES = 4096


class UUIDv7Generator:
    """RFC 9562 UUIDv7: 48-bit unix milliseconds, version 7, variant 0b10, random bits.

    The 12 ``rand_a`` bits are a counter, seeded randomly in each new
    millisecond (below 2048, leaving room to count up), so ids made by one
    process are strictly increasing even within a millisecond. If the counter
    overflows, or the clock steps back, the millisecond is advanced past the
    last one used (RFC 9562 §6.2, method 1). The 62 ``rand_b`` bits, and the
    counter's seeds, come from ``os.urandom`` (the kernel's CSPRNG), read in
    pools of ``RANDOM_POOL_BYTES``: ids seen from outside reveal nothing about
    the next ones (``random.Random`` can be predicted from 624 outputs), and
    ``random.seed()`` in the application cannot touch them. A forked child
    drops the pool it inherited (``reseed()``, registered with
    ``os.register_at_fork``), so parent and child never make the same id.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: Sequence[int] = ()
        self._pos = 0
        self._last_ms = -1
        self._counter = 0
        self._prefix: tuple[int, str] = (-1, "")
        # Weakly: a generator that is gone needs no reseeding.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reseed(ref))

    def reseed(self) -> None:
        self._lock = threading.Lock()
        self._pool, self._pos = (), 0

    def new_int(self, unix_ms: int) -> int:
        with self._lock:
            pool, i = self._pool, self._pos
            if i + 2 > len(pool):  # an id takes at most two 64-bit words
                pool = self._pool = memoryview(os.urandom(RANDOM_POOL_BYTES)).cast("Q")
                i = 0
            if unix_ms > self._last_ms:
                self._last_ms = unix_ms
                self._counter = pool[i] >> 53  # 11 bits
                i += 1
            else:
                self._counter += 1
                if self._counter > 0xFFF:
                    self._last_ms += 1
                    self._counter = pool[i] >> 53
                    i += 1
            rand_b = pool[i] >> 2  # 62 bits
            self._pos = i + 1
            ms, counter = self._last_ms, self._counter
        return (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b

    def new(self, unix_ms: int | None = None) -> str:
        """The canonical string form, made without building a ``uuid.UUID`` (it is hot)."""
        if unix_ms is None:
            unix_ms = time.time_ns() // 1_000_000
        value = self.new_int(unix_ms)
        ms = value >> 80
        cached_ms, prefix = self._prefix
        if cached_ms != ms:  # "tttttttt-tttt-7": the same for every id of a millisecond
            prefix = f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7"
            self._prefix = (ms, prefix)
        low = value & 0xFFFF_FFFF_FFFF_FFFF
        return f"{prefix}{value >> 64 & 0xFFF:03x}-{low >> 48:04x}-{low & 0xFFFF_FFFF_FFFF:012x}"


def _reseed(ref: weakref.ref[UUIDv7Generator]) -> None:
    generator = ref()
    if generator is not None:
        generator.reseed()


_GENERATOR = UUIDv7Generator()


def uuid7() -> uuid.UUID:
    """A new UUIDv7 (time-ordered, unique across processes)."""
    return uuid.UUID(int=_GENERATOR.new_int(time.time_ns() // 1_000_000))


def reseed_after_fork() -> None:
    _GENERATOR.reseed()


# --- timestamps --------------------------------------------------------------------------

_second_prefix: tuple[int, str] = (-1, "")


def format_unix_ns(unix_ns: int) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-11-27T16:20:00.123456Z``."""
    global _second_prefix
    seconds, rest = divmod(unix_ns, 1_000_000_000)
    cached_second, prefix = _second_prefix
    if cached_second != seconds:  # one strftime per second, not per event
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_prefix = (seconds, prefix)
    return f"{prefix}.{rest // 1000:06d}Z"


def _format_datetime(value: dt.datetime) -> str:
    """An aware datetime as RFC 3339 UTC with microseconds."""
    try:
        value = value.astimezone(dt.UTC)
    except OverflowError as exc:
        raise EventRejected(DropReason.INVALID_TIMESTAMP, "timestamp is out of range") from exc
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:"
        f"{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}Z"
    )


def _timestamp(value: object, now_ns: int) -> str:
    """The event's timestamp as RFC 3339 UTC; refused if the server would refuse it."""
    invalid = DropReason.INVALID_TIMESTAMP
    if isinstance(value, str):
        if _UNIX_SECONDS.fullmatch(value):
            value = float(value)  # unix seconds, never milliseconds
        elif _RFC3339.fullmatch(value):
            try:
                value = dt.datetime.fromisoformat(value)
            except ValueError as exc:
                raise EventRejected(invalid, f"timestamp is not a valid date-time: {exc}") from exc
            if value.tzinfo is None:  # a string without offset: UTC, the server's rule
                value = value.replace(tzinfo=dt.UTC)
        else:
            raise EventRejected(
                invalid,
                f"not a timestamp: {value[:64]!r}; send unix seconds or an RFC 3339 "
                "date-time such as 2026-11-27T16:20:00Z",
            )
    if isinstance(value, dt.datetime):
        # A naive datetime object is local time, as datetime.now() gives it (and
        # as PostHog's and Segment's SDKs read it); astimezone() does exactly that.
        try:
            moment = value.astimezone(dt.UTC)
        except (OverflowError, OSError, ValueError) as exc:  # year 1 or 9999 at an offset
            raise EventRejected(invalid, "timestamp is out of range") from exc
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise EventRejected(invalid, "timestamp must be finite")
        if value < 0:
            raise EventRejected(invalid, "timestamp is before 1970-01-01T00:00:00Z")
        try:
            moment = dt.datetime.fromtimestamp(value, tz=dt.UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise EventRejected(invalid, "timestamp is out of range") from exc
    else:
        raise EventRejected(
            invalid,
            f"timestamp must be a datetime, an RFC 3339 string or unix seconds, "
            f"not {type(value).__name__}",
        )
    if moment < EARLIEST_TIMESTAMP:
        raise EventRejected(invalid, "timestamp is before 1970-01-01T00:00:00Z")
    ahead = (moment - dt.datetime.fromtimestamp(now_ns / 1e9, tz=dt.UTC)).total_seconds()
    if ahead > MAX_FUTURE_SKEW_SECONDS:
        raise EventRejected(invalid, "timestamp is more than 24 h in the future")
    return _format_datetime(moment)


# --- JSON ----------------------------------------------------------------------------------


# One encoder, built once: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=to_json
)
# And the C encoder under it, called directly (JSONEncoder.encode builds one per
# call). No circular-reference markers: they are per call state, unsafe to share
# between threads; a circular object ends in RecursionError instead, and is refused.
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODE: Callable[[object, int], list[str]] | None = (
    _c_make_encoder(
        None, to_json, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    if _c_make_encoder is not None
    else None
)


_quote: Callable[[str], str] = json.encoder.encode_basestring  # a JSON string literal


def _dumps(value: object) -> str:
    if _C_ENCODE is not None:
        return "".join(_C_ENCODE(value, 0))
    return _ENCODER.encode(value)


def _check_value(value: object, depth: int) -> None:
    """The exact rules (the server's ``_check_json_value``, plus integer range)."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("strings must not contain the NUL character (\\u0000)")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                raise ValueError("keys must not contain the NUL character (\\u0000)")
            _check_value(item, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _check_value(item, depth + 1)
    elif isinstance(value, int) and not isinstance(value, bool):
        if not MIN_JSON_INT <= value <= MAX_JSON_INT:
            raise ValueError("integers must fit in 64 bits; send larger ones as strings")


def encode_object(value: object, field: str, converted: list[tuple[str, str]] | None = None) -> str:
    """A properties/context object as compact JSON text, checked against the limits.

    Strict (``converted`` is None): a value the encoder cannot write refuses
    the object. Lenient: the object is rebuilt with ``jsonable`` (only then,
    so plain JSON pays nothing) and each ``repr()`` fallback is appended to
    ``converted``; the limits below apply to the result all the same.
    """
    invalid = DropReason.INVALID_PROPERTIES if field == "properties" else DropReason.INVALID_CONTEXT
    if type(value) is not dict:
        if not isinstance(value, Mapping):
            raise EventRejected(invalid, f"{field} must be a mapping, not {type(value).__name__}")
        value = dict(value)
    try:
        text = _dumps(value)
    except ValueError as exc:  # NaN/infinity, or a circular reference
        raise EventRejected(invalid, f"{field}: {exc}") from exc
    except RecursionError as exc:
        raise EventRejected(DropReason.NOT_SERIALIZABLE, f"{field}: {exc}") from exc
    except TypeError as exc:
        if converted is None:
            raise EventRejected(DropReason.NOT_SERIALIZABLE, f"{field}: {exc}") from exc
        try:
            value = jsonable(value, field, max_depth=MAX_JSON_DEPTH, converted=converted)
            text = _dumps(value)
        except ValueError as exc2:  # too deep (or a cycle), NaN/infinity
            raise EventRejected(invalid, f"{field}: {exc2}") from exc2
        except RecursionError as exc2:
            raise EventRejected(invalid, f"{field}: nested too deep") from exc2
    # Fast path: the walk below is needed only when the text could hide a
    # problem (a NUL escape, more brackets than the depth limit, a 19-digit run).
    if (
        "\\u0000" in text
        or text.count("{") + text.count("[") > MAX_JSON_DEPTH
        or _LONG_DIGITS.search(text)
    ):
        try:
            _check_value(value, 0)
        except ValueError as exc:
            raise EventRejected(invalid, f"{field}: {exc}") from exc
        except RecursionError as exc:
            raise EventRejected(invalid, f"{field}: nested too deep") from exc
    size = len(text) if text.isascii() else _utf8_length(text, field)
    if size > MAX_PROPERTIES_BYTES:
        raise EventRejected(
            DropReason.TOO_LARGE,
            f"{field} is {size} bytes serialized; the limit is {MAX_PROPERTIES_BYTES}",
        )
    return text


def _utf8_length(text: str, field: str) -> int:
    try:
        return len(text.encode())
    except UnicodeEncodeError as exc:  # a lone surrogate: not valid UTF-8
        raise EventRejected(DropReason.NOT_SERIALIZABLE, f"{field}: {exc}") from exc


def _user(value: object) -> str:
    if type(value) is str and 0 < len(value) <= MAX_USER_LENGTH and "\x00" not in value:
        return _quote(value)  # the common case, first
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise EventRejected(
            DropReason.INVALID_USER, f"user must be a string, not {type(value).__name__}"
        )
    if not 1 <= len(value) <= MAX_USER_LENGTH or "\x00" in value:
        raise EventRejected(
            DropReason.INVALID_USER,
            f"user must be 1 to {MAX_USER_LENGTH} characters, without NUL",
        )
    return _quote(value)


def _event_id(value: object) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise EventRejected(DropReason.INVALID_EVENT_ID, f"event_id must be a UUID, not {value!r}")


def encode_event(
    name: object,
    *,
    user: object = None,
    properties: object = None,
    timestamp: object = None,
    event_id: object = None,
    context: object = None,
    default_context: Mapping[str, Any] | None = None,
    lenient: bool = False,
) -> EncodedEvent:
    """One event as the JSON the server takes; raises ``EventRejected``.

    ``lenient``: a property or context value JSON cannot carry is converted
    (see ``_convert``) instead of refusing the event.
    """
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise EventRejected(
            DropReason.INVALID_NAME,
            f"name must be 1 to 128 of letters, digits and _ . : / -, not {name!r}",
        )
    now_ns = time.time_ns()
    eid = _GENERATOR.new(now_ns // 1_000_000) if event_id is None else _event_id(event_id)
    ts = format_unix_ns(now_ns) if timestamp is None else _timestamp(timestamp, now_ns)
    # The name matched the pattern and the id and time are ours: no escaping needed.
    text = f'{{"event_id":"{eid}","name":"{name}","timestamp":"{ts}"'
    converted: list[tuple[str, str]] | None = [] if lenient else None
    if user is not None:
        text += ',"user":' + _user(user)
    if properties is not None:
        encoded = encode_object(properties, "properties", converted)
        if encoded != "{}":
            text += ',"properties":' + encoded
    if default_context:
        if context is None:
            context = default_context
        elif isinstance(context, Mapping):
            context = {**default_context, **context}
    if context is not None:
        text += ',"context":' + encode_object(context, "context", converted)
    try:
        data = (text + "}").encode()
    except UnicodeEncodeError as exc:
        raise EventRejected(DropReason.NOT_SERIALIZABLE, str(exc)) from exc
    return EncodedEvent(eid, data, tuple(converted) if converted else ())
