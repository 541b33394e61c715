"""Segment's wire format, mapped onto our events.

Clients built for Segment's HTTP tracking API (segment-analytics-python,
rudder-sdk-python, analytics.js and the like) send messages of six types:
``track``, ``identify``, ``page``, ``screen``, ``group`` and ``alias``, one
per request or a ``batch`` of them. Each message becomes one event:

============  ===================  ==========================================
message       ``name``             ``properties``
============  ===================  ==========================================
track         its ``event``, as    its ``properties``
              sent (any text)
page          ``page.view``        its ``properties``
screen        ``screen.view``      its ``properties``
identify      ``identify``         its ``traits`` (else ``context.traits``)
group         ``group``            its ``traits`` (else ``context.traits``)
alias         ``alias``            ``{}``
============  ===================  ==========================================

- ``user``: ``userId`` (a number as its decimal text), else ``anonymousId``.
- ``timestamp``: the message's ``timestamp``, else ``originalTimestamp``,
  else the time we received it.
- ``context``: the batch's ``context`` overlaid by the message's (key by
  key), plus ``$segment``: what the message said about itself that has no
  column of ours — ``type``, ``messageId``, ``userId``, ``anonymousId``,
  ``integrations``, ``sentAt``, a page's ``name`` and ``category``,
  ``groupId``, ``previousId`` (those it had). ``context.$segment`` is ours: a
  message that sends one is refused, rather than have it overwritten.
- ``event_id``: ``messageId`` itself when it is a UUID; else a UUIDv5 of the
  product and the ``messageId`` (a resend is the same row); a message
  without one gets a UUIDv5 of its own content (minus ``sentAt``), so an
  identical resend is the same row too.

A batch is taken message by message: the valid ones are queued, the others
refused with the reason, in the same answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from labs_analytics.events import (
    EventLimits,
    EventRecord,
    Timestamp,
    UserId,
    check_json_object,
    correct_clock_skew,
    may_hold_large_integers,
    new_uuid4,
    no_nul,
    out_of_range_integers,
    parse_sent_at,
    parse_uuid,
    uuid5,
)

MESSAGE_TYPES = ("track", "identify", "page", "screen", "group", "alias")
# analytics.js's short routes: /v1/t is /v1/track, and so on.
SHORT_TYPES = {
    "t": "track",
    "i": "identify",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
}
EVENT_NAMES = {
    "page": "page.view",
    "screen": "screen.view",
    "identify": "identify",
    "group": "group",
    "alias": "alias",
}
# Segment's own limits are 32 KB a message, 500 KB and 2,500 messages a batch;
# rudder-sdk-python sends batches of up to 4 MiB, taken whole.
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_MESSAGES = 2500
MAX_BODY_BYTES = 4 * 1024 * 1024
# Event names are free text here (`Order Completed`), bounded all the same.
MAX_NAME_CHARS = 1024
MAX_MESSAGE_ID_CHARS = 1024
RESERVED_CONTEXT_KEY = "$segment"
# Refusals listed in an answer, at most; the count covers them all.
MAX_LISTED_REFUSALS = 100

# The namespace of UUIDv5 event ids made from message ids (fixed forever:
# changing it would store resends of old messages again).
MESSAGE_ID_NAMESPACE = uuid.UUID("6f1c2b9e-5d0a-4f57-9a43-2e8b7c1d0a55")

# Fields of a message copied into context.$segment when present.
_SELF_DESCRIPTION = frozenset(
    {
        "type",
        "messageId",
        "userId",
        "anonymousId",
        "integrations",
        "sentAt",
        "name",
        "category",
        "groupId",
        "previousId",
    }
)
# The row's fields, named as the message names them (for refusals).
_SOURCE_FIELD = {"name": "event", "user": "userId", "timestamp": "timestamp", "context": "context"}

SegmentEventName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS), AfterValidator(no_nul)
]
JsonObject = Annotated[dict[str, Any], AfterValidator(check_json_object)]


class MappedEvent(BaseModel):
    """A message mapped to our fields, validated with the native route's rules
    (the name aside: free text here)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: SegmentEventName
    user: UserId | None = None
    timestamp: Timestamp | None = None
    properties: JsonObject
    context: JsonObject


_MAPPED_EVENTS = TypeAdapter(list[MappedEvent])


@dataclass(frozen=True, slots=True)
class Refusal:
    index: int
    field: str | None
    message: str
    message_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "messageId": self.message_id,
            "field": self.field,
            "message": self.message,
        }


@dataclass
class MappedBatch:
    records: list[EventRecord] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)


class NotAMessage(ValueError):
    """The body is not a message or a batch of them (the whole request is refused)."""


def messages_of(data: Any, route_type: str | None) -> tuple[list[Any], dict[str, Any]]:
    """The messages of a body and the batch's shared ``context``; ``route_type``
    is the type a single-message route sets (None: a batch route)."""
    if not isinstance(data, dict):
        raise NotAMessage("the body must be a JSON object")
    if route_type is not None:
        return [{**data, "type": route_type}], {}
    batch = data.get("batch")
    if not isinstance(batch, list):
        raise NotAMessage('a batch body must be {"batch": [message, ...]}')
    if len(batch) > MAX_BATCH_MESSAGES:
        raise NotAMessage(f"a batch holds at most {MAX_BATCH_MESSAGES} messages, not {len(batch)}")
    shared = data.get("context")
    return batch, shared if isinstance(shared, dict) else {}


def write_key_of(data: Any) -> str | None:
    """The body's ``writeKey``, if it has one."""
    if isinstance(data, dict):
        key = data.get("writeKey")
        if isinstance(key, str) and key:
            return key
    return None


def map_messages(
    messages: list[Any],
    shared_context: dict[str, Any],
    *,
    product: str,
    received_at: datetime,
    limits: EventLimits,
    raw: bytes,
    route_type: str | None,
    sent_at: Any = None,
) -> MappedBatch:
    """Every message as a record, or the reason it is refused.

    ``sent_at`` is the batch's ``sentAt``; a message's own wins. Either, when
    it reads as a time, corrects the message's time for the sender's clock
    skew (``events.correct_clock_skew``); one that does not is ignored, as
    Segment does: it only ever informs.
    """
    refusals: dict[int, Refusal] = {}
    oversized_integers = _messages_with_large_integers(raw, route_type)
    mapped_fields: list[_MappedFields] = []
    for index, message in enumerate(messages):
        if index in oversized_integers:
            field_name, problem = oversized_integers[index]
            refusals[index] = Refusal(index, field_name, problem, _message_id_text(message))
            continue
        try:
            mapped_fields.append(_mapped_fields(index, message, shared_context))
        except _Refused as exc:
            refusals[index] = Refusal(index, exc.field, exc.message, _message_id_text(message))
    validated = _validate(mapped_fields, {"limits": limits})
    records: list[EventRecord] = []
    batch_sent_at = parse_sent_at(sent_at)  # once, not once a message
    for fields, event in zip(mapped_fields, validated, strict=True):
        message = messages[fields.index]
        try:
            if isinstance(event, _Refused):
                raise event
            record = EventRecord(
                event_id=_event_id(message, product),
                product=product,
                name=event.name,
                user=event.user,
                timestamp=event.timestamp or received_at,
                properties=event.properties,
                context=event.context,
                received_at=received_at,
            )
        except _Refused as exc:
            refusals[fields.index] = Refusal(
                fields.index, exc.field, exc.message, _message_id_text(message)
            )
            continue
        own = message.get("sentAt")
        sent = batch_sent_at if own is None else parse_sent_at(own)
        if sent is not None:
            correct_clock_skew([record], sent, limits.max_clock_skew)
        records.append(record)
    return MappedBatch(records, [refusals[index] for index in sorted(refusals)])


class _Refused(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class _MappedFields:
    """A message's fields as ours, before validation; where ``properties`` came from."""

    index: int
    fields: dict[str, Any]
    properties_field: str


def _mapped_fields(index: int, message: Any, shared_context: dict[str, Any]) -> _MappedFields:
    if not isinstance(message, dict):
        raise _Refused(None, "a message must be a JSON object")
    size = len(orjson.dumps(message))
    if size > MAX_MESSAGE_BYTES:
        raise _Refused(None, f"the message is {size} bytes; at most {MAX_MESSAGE_BYTES}")
    kind = message.get("type")
    if kind not in MESSAGE_TYPES:
        raise _Refused("type", f"type must be one of {', '.join(MESSAGE_TYPES)}")
    if kind == "track":
        name = message.get("event")
        if not isinstance(name, str):
            raise _Refused("event", "a track message needs its event name (a string)")
    else:
        name = EVENT_NAMES[kind]
    user = _user_of(message)
    own_context = message.get("context")
    if own_context is not None and not isinstance(own_context, dict):
        raise _Refused("context", "context must be a JSON object")
    if own_context and RESERVED_CONTEXT_KEY in own_context:
        raise _Refused(f"context.{RESERVED_CONTEXT_KEY}", "this context key is reserved")
    properties_field = "traits" if kind in ("identify", "group") else "properties"
    properties = message.get(properties_field) if kind != "alias" else {}
    if properties is None and properties_field == "traits" and own_context:
        # rudder-sdk-python sends an identify's traits as context.traits only.
        properties_field = "context.traits"
        properties = own_context.get("traits")
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        raise _Refused(properties_field, f"{properties_field} must be a JSON object")
    # The message's own fields, in its order: a message holds fewer fields than
    # the list has names.
    about = {
        name: value
        for name, value in message.items()
        if name in _SELF_DESCRIPTION and value is not None
    }
    context = {**shared_context, **(own_context or {}), RESERVED_CONTEXT_KEY: about}
    timestamp = message.get("timestamp")
    if timestamp is None:
        timestamp = message.get("originalTimestamp")
    fields = {
        "name": name,
        "user": user,
        "timestamp": timestamp,
        "properties": properties,
        "context": context,
    }
    return _MappedFields(index, fields, properties_field)


def _validate(mapped: list[_MappedFields], context: dict[str, Any]) -> list[MappedEvent | _Refused]:
    """Each message's fields validated, or why they are refused.

    The whole list in one call first (what a batch of valid messages costs:
    a third less than message by message); only when it fails, message by
    message, to tell which were at fault. Every list holds exactly the five
    fields we built, so a failing one has at most a few errors per message.
    """
    try:
        return list(_MAPPED_EVENTS.validate_python([m.fields for m in mapped], context=context))
    except ValidationError:
        pass
    results: list[MappedEvent | _Refused] = []
    for one in mapped:
        try:
            results.append(MappedEvent.model_validate(one.fields, context=context))
        except ValidationError as exc:
            error = exc.errors(include_url=False, include_input=False)[0]
            where = str(error["loc"][0]) if error["loc"] else None
            source = (
                one.properties_field if where == "properties" else _SOURCE_FIELD.get(where or "")
            )
            results.append(_Refused(source or where, error["msg"]))
    return results


def _user_of(message: Mapping[str, Any]) -> str | None:
    for name in ("userId", "anonymousId"):
        value = message.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise _Refused(name, f"{name} must be a string or an integer")
        return str(value)
    return None


def _message_id_text(message: Any) -> str | None:
    if isinstance(message, dict):
        value = message.get("messageId")
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)[:MAX_MESSAGE_ID_CHARS]
    return None


def _event_id(message: dict[str, Any], product: str) -> uuid.UUID:
    message_id = message.get("messageId")
    if message_id is not None:
        if isinstance(message_id, bool) or not isinstance(message_id, str | int):
            raise _Refused("messageId", "messageId must be a string")
        text = str(message_id)
        if not text or len(text) > MAX_MESSAGE_ID_CHARS:
            raise _Refused("messageId", f"messageId must be 1 to {MAX_MESSAGE_ID_CHARS} characters")
        try:
            return parse_uuid(text)
        except ValueError:
            return uuid5(MESSAGE_ID_NAMESPACE, f"{product}\n{text}")
    # No id: the same content is the same event. sentAt changes on every
    # attempt of the same message, so it is left out.
    content = {name: value for name, value in message.items() if name != "sentAt"}
    try:
        canonical = orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return new_uuid4()
    return uuid5(MESSAGE_ID_NAMESPACE, f"{product}\n{canonical}")


def _messages_with_large_integers(
    raw: bytes, route_type: str | None
) -> dict[int, tuple[str | None, str]]:
    """Messages holding an integer outside [-2^63, 2^64-1] (JSON parsers would
    round it), by index: the first such field and why."""
    found: dict[int, tuple[str | None, str]] = {}
    if not may_hold_large_integers(raw):
        return found  # the common case, without parsing the body a second time
    for integer in out_of_range_integers(raw):
        path = list(integer.path)
        if route_type is None:
            if len(path) < 2 or path[0] != "batch" or not isinstance(path[1], int):
                continue  # outside the messages: ignored, as the rest of the envelope
            index, path = path[1], path[2:]
        else:
            index = 0
        where = ".".join(str(part) for part in path) or None
        found.setdefault(index, (where, integer.describe()))
    return found


def success_body(mapped: MappedBatch) -> bytes:
    """What Segment's clients expect on success, with the refused messages if any."""
    if not mapped.refusals:
        return b'{"success":true}'
    return orjson.dumps(
        {
            "success": True,
            "accepted": len(mapped.records),
            "refused": len(mapped.refusals),
            "refusals": [r.as_json() for r in mapped.refusals[:MAX_LISTED_REFUSALS]],
        }
    )
