"""The wire contract: what an event is, its limits, and how it is normalised.

The API validates with these models, the queue carries ``EventRecord``s, the
flusher writes them, and the tests import the same definitions.

Limits that are deployment tunables (properties size, clock skew) come in
through the Pydantic validation context as an ``EventLimits``; without one the
defaults below apply.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
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

EVENT_NAME_PATTERN = r"^[A-Za-z0-9_.:/\-]{1,128}$"
MAX_USER_LENGTH = 256
MAX_JSON_DEPTH = 32
PRODUCT_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,63}$"


@dataclass(frozen=True, slots=True)
class EventLimits:
    max_properties_bytes: int = 32 * 1024
    max_future_skew: timedelta = timedelta(hours=24)


DEFAULT_LIMITS = EventLimits()


_UNIX_SECONDS_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?", re.ASCII)


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


def _unix_seconds_to_datetime(value: Any) -> Any:
    # Pydantic reads large numbers as milliseconds; our contract says seconds,
    # so numbers are converted here and only strings reach Pydantic's parser.
    if isinstance(value, str):
        if not _UNIX_SECONDS_TEXT.fullmatch(value):
            return value  # an RFC 3339 string: Pydantic parses it
        value = float(value)  # "1700000000" is unix seconds too, never milliseconds
    if isinstance(value, bool):
        raise ValueError("timestamp must be an RFC 3339 string or unix seconds, not a boolean")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("timestamp must be a finite number of unix seconds")
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError("timestamp is out of range") from exc
    return value


def _as_utc(value: datetime) -> datetime:
    # RFC 3339 requires an offset; a timestamp without one is taken as UTC.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # e.g. year 1 with a positive offset
        raise ValueError("timestamp is out of range") from exc


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


def _check_json_object(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
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


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000)")
    return value


EventName = Annotated[str, StringConstraints(pattern=EVENT_NAME_PATTERN)]
UserId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_USER_LENGTH), AfterValidator(_no_nul)
]
ProductName = Annotated[str, StringConstraints(pattern=PRODUCT_PATTERN)]
Timestamp = Annotated[
    datetime,
    # The schema says what clients may send: an RFC 3339 string or unix seconds.
    BeforeValidator(_unix_seconds_to_datetime, json_schema_input_type=datetime | float),
    AfterValidator(_as_utc),
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
        description="When it happened: RFC 3339 (UTC if no offset) or unix seconds. Missing: "
        "taken from a UUIDv7 event_id, else the time we received it. At most 24 h ahead.",
    )
    properties: dict[str, Any] = Field(
        default_factory=dict, description="Free-form JSON object, at most 32 KiB serialized."
    )
    context: dict[str, Any] | None = Field(
        default=None, description="Optional JSON object: session id, app version, device, …"
    )
    product: ProductName | None = Field(
        default=None,
        description="Optional; if present it must equal the product of the API key (else 403).",
    )

    @field_validator("timestamp")
    @classmethod
    def _not_in_the_future(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is not None:
            skew = _limits(info).max_future_skew
            if value > datetime.now(UTC) + skew:
                raise ValueError(f"timestamp is more than {_describe(skew)} in the future")
        return value

    @model_validator(mode="after")
    def _uuid7_time_is_plausible(self, info: ValidationInfo) -> EventIn:
        # Without a timestamp the event's time comes from a UUIDv7 id; that
        # time must pass the same checks as an explicit one.
        if self.timestamp is None and self.event_id is not None and self.event_id.version == 7:
            derived = timestamp_from_uuid7(self.event_id)
            skew = _limits(info).max_future_skew
            if derived is None or derived > datetime.now(UTC) + skew:
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
        return _check_json_object(value, info)


class EventBatchIn(BaseModel):
    """A batch: ``{"events": [...]}``."""

    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(min_length=1)
    sent_at: Timestamp | None = Field(
        default=None, description="When the client sent this request (informational)."
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


_CANONICAL_UUID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII
)


def parse_uuid(text: str) -> uuid.UUID:
    """``uuid.UUID(text)``, faster for the canonical lower-case form our queue entries hold."""
    if _CANONICAL_UUID.fullmatch(text):
        return _uuid_from_int(int(text.replace("-", ""), 16))
    return uuid.UUID(text)


def _uuid_from_int(value: int) -> uuid.UUID:
    # What UUID(int=value) builds, without re-checking a value known to fit in 128 bits.
    made = object.__new__(uuid.UUID)
    object.__setattr__(made, "int", value)
    object.__setattr__(made, "is_safe", uuid.SafeUUID.unknown)
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
