"""The wire contract: what an event is, its limits, and how it is normalised.

The API validates with these models, the queue carries ``EventRecord``s, the
flusher writes them, and the tests import the same definitions.

Limits that are deployment tunables (properties size, clock skew) come in
through the Pydantic validation context as an ``EventLimits``; without one the
defaults below apply.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from asyncpg.pgproto.pgproto import UUID as _AsyncpgUUID
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

# The limits and patterns the SDK checks too: one dependency-free module for both.
from labs_analytics_client.contract import (
    EARLIEST_TIMESTAMP,
    EVENT_NAME_PATTERN,
    MAX_FUTURE_SKEW_SECONDS,
    MAX_JSON_DEPTH,
    MAX_JSON_INT,
    MAX_PROPERTIES_BYTES,
    MAX_USER_LENGTH,
    MIN_JSON_INT,
    PRODUCT_PATTERN,
    RFC3339_PATTERN,
    UNIX_SECONDS_PATTERN,
)


@dataclass(frozen=True, slots=True)
class EventLimits:
    max_properties_bytes: int = MAX_PROPERTIES_BYTES
    max_future_skew: timedelta = timedelta(seconds=MAX_FUTURE_SKEW_SECONDS)
    # The largest sender clock skew believed (see ``correct_clock_skew``).
    max_clock_skew: timedelta = timedelta(hours=24)


DEFAULT_LIMITS = EventLimits()


# --- timestamps ------------------------------------------------------------------
#
# One rule, here and in the SDK: see the patterns in labs_analytics_client.contract.
_UNIX_SECONDS_TEXT = re.compile(UNIX_SECONDS_PATTERN, re.ASCII)
_RFC3339_TEXT = re.compile(RFC3339_PATTERN, re.ASCII)
_TIMESTAMP_FORMS = (
    "unix seconds (a number, or a string of decimal digits) or an RFC 3339 date-time "
    "such as 2026-11-27T16:20:00Z"
)


def _describe(span: timedelta) -> str:
    hours = span.total_seconds() / 3600
    return f"{hours:g} h"


def _limits(info: ValidationInfo) -> EventLimits:
    context = info.context
    if isinstance(context, dict):
        limits = context.get("limits")
        if isinstance(limits, EventLimits):
            return limits
    return DEFAULT_LIMITS


def _to_datetime(value: Any) -> datetime:
    """A timestamp as a client may send it, as a datetime; ValueError for any other form."""
    if isinstance(value, str):
        if _RFC3339_TEXT.fullmatch(value):
            # fromisoformat, as the SDK does: within this shape both read the
            # same instant, and refuse the same impossible ones (Feb 30, 24:00).
            try:
                return datetime.fromisoformat(value)
            except ValueError as exc:
                raise ValueError(f"timestamp is not a valid date-time: {exc}") from None
        if not _UNIX_SECONDS_TEXT.fullmatch(value):
            raise ValueError(f"timestamp must be {_TIMESTAMP_FORMS}")
        value = float(value)  # "1700000000" is unix seconds too, never milliseconds
    if isinstance(value, datetime):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = "a boolean" if isinstance(value, bool) else type(value).__name__
        raise ValueError(f"timestamp must be {_TIMESTAMP_FORMS}, not {kind}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("timestamp must be a finite number of unix seconds")
    if value < 0:
        raise ValueError("timestamp is before 1970-01-01T00:00:00Z (unix 0)")
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError("timestamp is out of range") from exc


def parse_sent_at(value: Any) -> datetime | None:
    """When a request says it was sent, in UTC: any timestamp form, no range
    check (a clock days ahead is what the skew correction is for); None when
    it is missing or not a time at all."""
    if value is None:
        return None
    try:
        moment = _to_datetime(value)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def timestamp_problem(moment: datetime, max_future_skew: timedelta) -> str | None:
    """Why an aware datetime is outside [1970-01-01T00:00:00Z, now + skew], or None."""
    if moment < EARLIEST_TIMESTAMP:
        return "is before 1970-01-01T00:00:00Z (unix 0)"
    if moment > datetime.now(UTC) + max_future_skew:
        return f"is more than {_describe(max_future_skew)} in the future"
    return None


def _in_utc_and_in_range(value: datetime, info: ValidationInfo) -> datetime:
    # RFC 3339 requires an offset; a timestamp without one is taken as UTC.
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    elif value.tzinfo is not UTC:
        try:
            value = value.astimezone(UTC)
        except OverflowError as exc:  # e.g. year 1 with a positive offset
            raise ValueError("timestamp is before 1970-01-01T00:00:00Z (unix 0)") from exc
    problem = timestamp_problem(value, _limits(info).max_future_skew)
    if problem is not None:
        raise ValueError(f"timestamp {problem}")
    return value


# --- integers --------------------------------------------------------------------
#
# JSON integers must lie in [MIN_JSON_INT, MAX_JSON_INT] (labs_analytics_client.contract
# says why); the SDK refuses the same values.
# Any integer literal outside the range has at least 19 digits; a run of 19
# digits anywhere (in a string too) only sends a body to the exact check.
_LONG_DIGIT_RUN = b"0" * 19
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")


@dataclass(frozen=True, slots=True)
class IntegerOutOfRange:
    """An integer literal outside the 64-bit range, and where it is in the document."""

    path: tuple[str | int, ...]
    literal: str

    def describe(self) -> str:
        text = self.literal
        if len(text) > 40:
            text = f"{text[:20]}…{text[-6:]} ({len(text.lstrip('-'))} digits)"
        return (
            f"integer {text} is outside the 64-bit range [{MIN_JSON_INT}, {MAX_JSON_INT}]; "
            "send larger numbers as strings"
        )


class _LargeInteger(str):
    """An integer literal out of range, kept as its text while the document is searched."""


def may_hold_large_integers(raw: bytes) -> bool:
    """False when no integer in this JSON text can be out of range (the fast, common case)."""
    return raw.translate(_DIGITS_AS_ZERO).find(_LONG_DIGIT_RUN) != -1


def out_of_range_integers(raw: bytes) -> list[IntegerOutOfRange]:
    """The integer literals of a valid JSON document outside [MIN_JSON_INT, MAX_JSON_INT].

    The standard library's parser hands over each integer literal as text,
    which is the exact check orjson cannot make once it has made a float.
    """
    found = False

    def parse_int(text: str) -> object:
        nonlocal found
        if len(text) < 19:
            return 0  # the value itself is never used
        digits = len(text) - text.startswith("-")
        if digits <= 20 and MIN_JSON_INT <= int(text) <= MAX_JSON_INT:
            return 0
        found = True
        return _LargeInteger(text)

    try:
        document = json.loads(raw, parse_int=parse_int, parse_float=len, parse_constant=len)
    except (ValueError, RecursionError):
        # Nesting deeper than the stdlib parser follows: far past MAX_JSON_DEPTH,
        # which validation refuses anyway.
        return []
    out: list[IntegerOutOfRange] = []
    if found:
        _collect_large_integers(document, (), out)
    return out


def _collect_large_integers(
    value: object, path: tuple[str | int, ...], out: list[IntegerOutOfRange]
) -> None:
    if isinstance(value, _LargeInteger):
        out.append(IntegerOutOfRange(path, str.__str__(value)))
    elif isinstance(value, dict):
        for key, item in value.items():
            _collect_large_integers(item, (*path, key), out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _collect_large_integers(item, (*path, index), out)


def _check_json_value(value: Any, depth: int = 0) -> None:
    """Refuse what PostgreSQL's jsonb would refuse later, in the flusher.

    A NUL character is valid JSON but not valid jsonb text, and very deep
    nesting exhausts the server's stack: both would poison a whole batch.
    """
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("strings must not contain the NUL character (\\u0000)")
    elif isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                raise ValueError("keys must not contain the NUL character (\\u0000)")
            _check_json_value(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json_value(item, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")


def check_json_object(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """A JSON object within the limits (size, depth, no NUL, finite numbers); else ValueError."""
    try:
        serialized = orjson.dumps(value)
    except TypeError as exc:  # an integer beyond 64 bits, or nesting orjson refuses
        _check_json_value(value)  # names the depth, if that is the reason
        raise ValueError(f"not serializable as JSON: {exc}") from exc
    limit = _limits(info).max_properties_bytes
    if len(serialized) > limit:
        raise ValueError(
            f"serialized size {len(serialized)} bytes exceeds the limit of {limit} bytes"
        )
    # The exact walk costs more than the rest of validation, so it runs only
    # when the serialized form says it could find something: orjson writes a
    # NUL as \u0000 and NaN or infinity as null, and each level of nesting
    # costs at least one bracket.
    if (
        b"\\u0000" in serialized
        or b"null" in serialized
        or serialized.count(b"{") + serialized.count(b"[") > MAX_JSON_DEPTH
    ):
        _check_json_value(value)
    return value


def no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000)")
    return value


EventName = Annotated[str, StringConstraints(pattern=EVENT_NAME_PATTERN)]
UserId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_USER_LENGTH), AfterValidator(no_nul)
]
ProductName = Annotated[str, StringConstraints(pattern=PRODUCT_PATTERN)]
Timestamp = Annotated[
    datetime,
    # The schema says what clients may send: an RFC 3339 string or unix seconds.
    BeforeValidator(_to_datetime, json_schema_input_type=datetime | float),
    AfterValidator(_in_utc_and_in_range),
]


class EventIn(BaseModel):
    """One event as a client sends it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: uuid.UUID | None = Field(
        default=None,
        description="Deduplication key. Send one (UUIDv7 preferred) so a retry is stored once; "
        "the server assigns a UUIDv4 when it is missing.",
    )
    name: EventName = Field(
        description="What happened, 1..128 of letters, digits and `_ . : / -`, e.g. `post.click`.",
        examples=["post.click"],
    )
    user: UserId | None = Field(
        default=None, description="Who did it: an account id, a pennkey, an anonymous id."
    )
    timestamp: Timestamp | None = Field(
        default=None,
        description="When it happened: unix seconds (a JSON number, or a string of decimal "
        "digits; never milliseconds), or an RFC 3339 date-time `YYYY-MM-DDTHH:MM:SS[.frac]` "
        "with `Z` or `±HH:MM` (`T` may be a space; no offset: UTC). From 1970-01-01T00:00:00Z "
        "to 24 h ahead of now. Missing: taken from a UUIDv7 event_id, else the time we "
        "received it.",
    )
    properties: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form JSON object, at most 32 KiB serialized and 32 levels deep, no "
        "NUL characters; integers in [-2^63, 2^64-1] (send larger ones as strings).",
    )
    context: dict[str, Any] | None = Field(
        default=None,
        description="Optional JSON object (session id, app version, device, …); the same "
        "limits as `properties`.",
    )
    product: ProductName | None = Field(
        default=None,
        description="Optional; if present it must equal the product of the API key (else 403).",
    )

    @model_validator(mode="after")
    def _uuid7_time_is_plausible(self, info: ValidationInfo) -> EventIn:
        # Without a timestamp the event's time comes from a UUIDv7 id; that
        # time must pass the same checks as an explicit one.
        if self.timestamp is None and self.event_id is not None and self.event_id.version == 7:
            derived = timestamp_from_uuid7(self.event_id)
            skew = _limits(info).max_future_skew
            if derived is None or timestamp_problem(derived, skew) is not None:
                raise ValueError(
                    "event_id is a UUIDv7 whose time is invalid or more than "
                    f"{_describe(skew)} in the future; send a timestamp or a valid id"
                )
        return self

    @field_validator("properties", "context")
    @classmethod
    def _json_object_limits(
        cls, value: dict[str, Any] | None, info: ValidationInfo
    ) -> dict[str, Any] | None:
        if value is None:
            return None
        return check_json_object(value, info)


class EventBatchIn(BaseModel):
    """A batch: ``{"events": [...]}``."""

    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(min_length=1)
    sent_at: Timestamp | None = Field(
        default=None,
        description="When the client sent this request (informational); the same forms and "
        "range as an event's `timestamp`.",
    )


class IngestResponse(BaseModel):
    accepted: int = Field(description="Number of events now durable in the queue.")
    ids: list[uuid.UUID] = Field(description="The event ids, in request order.")


EVENT_LIST_ADAPTER: TypeAdapter[list[EventIn]] = TypeAdapter(list[EventIn])


# Not frozen, though nothing changes a record once made: a frozen dataclass
# sets each field through object.__setattr__, which made building records a
# fifth of the flusher's per-row CPU (BENCHMARKS.md).
@dataclass(slots=True)
class EventRecord:
    """A validated event bound to its product: what travels through the queue."""

    event_id: uuid.UUID
    product: str
    name: str
    user: str | None
    timestamp: datetime
    properties: dict[str, Any]
    context: dict[str, Any] | None
    received_at: datetime
    # Set when the request said when it was sent (see ``correct_clock_skew``).
    corrected_timestamp: datetime | None = None
    clock_skew_ms: int | None = None


def correct_clock_skew(
    records: Sequence[EventRecord], sent_at: datetime, max_skew: timedelta
) -> None:
    """Stamp each record with the sender's clock skew and its time on our clock.

    The request was sent at ``sent_at`` by the client's clock and received at
    ``received_at`` by ours, so the client's clock is ``skew = sent_at -
    received_at`` ahead (network time counted in, milliseconds on a back end),
    and an event it stamped ``timestamp`` happened at ``timestamp - skew`` on
    ours. That is ``corrected_timestamp``; ``timestamp`` stays the client's, as
    the row's identity must (a resend carries a new ``sent_at``). A skew beyond
    ``max_skew`` is not believed: ``clock_skew_ms`` records it, and
    ``corrected_timestamp`` stays NULL. An event without a time of its own is
    already on our clock: it took the receive time, and holds that very object
    (``to_record`` and the Segment mapping assign it), so ``is`` tells it apart
    exactly, even from a client time that happens to be equal.
    """
    for record in records:
        skew = sent_at - record.received_at
        record.clock_skew_ms = round(skew / timedelta(milliseconds=1))
        if record.timestamp is record.received_at:
            record.corrected_timestamp = record.received_at
        elif abs(skew) <= max_skew:
            record.corrected_timestamp = record.timestamp - skew


def now() -> datetime:
    """The receive time of a request (one place, so every route reads the same clock)."""
    return datetime.now(UTC)


def timestamp_from_uuid7(event_id: uuid.UUID) -> datetime | None:
    """The creation time a UUIDv7 carries in its first 48 bits, if it is one."""
    if event_id.version != 7:
        return None
    unix_ms = event_id.int >> 80
    try:
        return datetime.fromtimestamp(unix_ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_uuid4() -> uuid.UUID:
    """A random (version 4) UUID, like ``uuid.uuid4()`` at a fraction of its cost.

    ``UUID.__init__`` validates its input, which dominated ingest of events
    sent without ids; here the value is made valid by construction.
    """
    return _uuid_from_int((int.from_bytes(os.urandom(16)) & _UUID4_CLEAR) | _UUID4_SET)


_UUID5_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID5_SET = (0x5000 << 64) | (0x8000 << 48)


def uuid5(namespace: uuid.UUID, name: str) -> uuid.UUID:
    """``uuid.uuid5(namespace, name)``, the same value, without ``UUID.__init__``'s checks
    (several per request on the compatibility routes)."""
    digest = hashlib.sha1(namespace.bytes + name.encode(), usedforsecurity=False).digest()
    return _uuid_from_int((int.from_bytes(digest[:16]) & _UUID5_CLEAR) | _UUID5_SET)


def parse_uuid(text: str) -> uuid.UUID:
    """``uuid.UUID(text)``: the same value for the same texts, ValueError for the same others.

    Parsed by asyncpg's UUID type when it can (a ``uuid.UUID`` subclass,
    equal, hashing and printing alike, built in C: 0.2 µs against 1.6; the
    flushers parse every event's id, and spent a quarter of their time on it),
    which reads a subset of what ``uuid.UUID`` reads (not braces, not ``urn:``)
    to the same value. orjson writes only ``uuid.UUID`` itself: encoders of
    these ids pass ``default=str`` or a function that does (``queue.entries``).
    """
    try:
        parsed: uuid.UUID = _AsyncpgUUID(text)
    except ValueError:
        return uuid.UUID(text)
    return parsed


# Read once, not per id: each ``SafeUUID.unknown`` is a descriptor call (enum's
# ``property``), and the rest attribute lookups; together, a third of an id's cost.
_SAFE_UNKNOWN = uuid.SafeUUID.unknown
_new_object = object.__new__
_set_attribute = object.__setattr__


def _uuid_from_int(value: int) -> uuid.UUID:
    # What UUID(int=value) builds, without re-checking a value known to fit in 128 bits.
    made: uuid.UUID = _new_object(uuid.UUID)
    _set_attribute(made, "int", value)
    _set_attribute(made, "is_safe", _SAFE_UNKNOWN)
    return made


def to_record(event: EventIn, *, product: str, received_at: datetime) -> EventRecord:
    """Fill the server-side fields: the id, the timestamp, the product."""
    if event.event_id is None:
        event_id, from_id = new_uuid4(), None
    else:
        event_id, from_id = event.event_id, timestamp_from_uuid7(event.event_id)
    # The timestamp is part of the primary key and picks the partition, so it
    # must come from the event itself whenever possible: a client retry that
    # took the receive time would land in another row and escape dedup.
    timestamp = event.timestamp or from_id or received_at
    return EventRecord(
        event_id=event_id,
        product=product,
        name=event.name,
        user=event.user,
        timestamp=timestamp,
        properties=event.properties,
        context=event.context,
        received_at=received_at,
    )
