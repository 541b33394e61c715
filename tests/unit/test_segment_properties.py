"""Properties of the Segment mapping, for any message those libraries could send.

Whatever a message holds within the rules, ``map_messages`` accepts it and
the record carries exactly what was sent: the name (free text for `track`),
the user, the properties (or traits), the context merged with the batch's,
the timestamp, and an ``event_id`` that is the ``messageId`` itself when it
is a UUID and the same UUIDv5 every time otherwise. The record then travels
through the stream entry unchanged.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from labs_analytics.events import DEFAULT_LIMITS, MAX_USER_LENGTH
from labs_analytics.ingest.segment import (
    EVENT_NAMES,
    MESSAGE_ID_NAMESPACE,
    MESSAGE_TYPES,
    RESERVED_CONTEXT_KEY,
    map_messages,
)
from tests.unit.test_event_properties import (
    KEY,
    PROPERTIES,
    SAFE_CHARACTERS,
    SAFE_TEXT,
    VALID_JSON,
    VALID_TIMESTAMPS,
    assert_storable,
    expected_timestamp,
)

RECEIVED_AT = datetime(2025, 6, 1, 12, tzinfo=UTC)
OBJECTS = st.dictionaries(SAFE_TEXT, VALID_JSON, max_size=5)
CONTEXTS = st.dictionaries(SAFE_TEXT.filter(lambda key: key != RESERVED_CONTEXT_KEY), VALID_JSON)
USERS = st.text(SAFE_CHARACTERS, min_size=1, max_size=MAX_USER_LENGTH) | st.integers(
    -(2**63), 2**63 - 1
)
# UUIDs in every form uuid.UUID reads (the mapping parses the common ones in
# C, the rest with uuid.UUID: both must give uuid.UUID's value), and free text.
MESSAGE_IDS = (
    st.uuids().map(str)
    | st.uuids().map(lambda u: str(u).upper())
    | st.uuids().map(lambda u: u.hex)
    | st.uuids().map(lambda u: f"{{{u}}}")
    | st.uuids().map(lambda u: u.urn)
    | st.text(SAFE_CHARACTERS, min_size=1, max_size=100)
)


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(MESSAGE_TYPES))
    message: dict[str, Any] = {"type": kind}
    if kind == "track":
        # Segment's event names are free text: spaces, any letter, punctuation.
        message["event"] = draw(st.text(SAFE_CHARACTERS, min_size=1, max_size=200))
    if kind in ("identify", "group"):
        message["traits"] = draw(OBJECTS)
    elif kind != "alias":
        message["properties"] = draw(OBJECTS)
    optional = {
        "userId": USERS,
        "anonymousId": USERS,
        "messageId": MESSAGE_IDS,
        "timestamp": VALID_TIMESTAMPS,
        "context": CONTEXTS,
        "sentAt": st.just("2025-06-01T12:00:00Z"),
    }
    for name, values in optional.items():
        if draw(st.booleans()):
            message[name] = draw(values)
    return message


def expected_event_id(message: dict[str, Any]) -> uuid.UUID | None:
    """None: made from the content (checked by sending it twice)."""
    message_id = message.get("messageId")
    if message_id is None:
        return None
    try:
        return uuid.UUID(message_id)
    except ValueError:
        return uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{KEY.product}\n{message_id}")


def mapped(batch: list[dict[str, Any]], shared: dict[str, Any]) -> list[Any]:
    result = map_messages(
        batch,
        shared,
        product=KEY.product,
        received_at=RECEIVED_AT,
        limits=DEFAULT_LIMITS,
        raw=orjson.dumps({"batch": batch, "context": shared}),
        route_type=None,
    )
    assert result.refusals == []
    return result.records


@PROPERTIES
@given(message=messages(), shared=CONTEXTS)
def test_any_valid_message_round_trips_into_a_record_of_what_was_sent(
    message: dict[str, Any], shared: dict[str, Any]
) -> None:
    [record] = mapped([message], shared)
    kind = message["type"]
    assert record.name == (message["event"] if kind == "track" else EVENT_NAMES[kind])
    users = [message.get(name) for name in ("userId", "anonymousId")]
    user = next((value for value in users if value not in (None, "")), None)
    assert record.user == (None if user is None else str(user))
    sent_properties = message.get("traits" if kind in ("identify", "group") else "properties")
    assert record.properties == (sent_properties or {})
    assert record.context is not None
    described = record.context.pop(RESERVED_CONTEXT_KEY)
    assert record.context == {**shared, **message.get("context", {})}
    assert described["type"] == kind
    for name in ("messageId", "userId", "anonymousId", "sentAt"):
        assert described.get(name) == message.get(name)
    if "timestamp" in message:
        assert record.timestamp == expected_timestamp(message["timestamp"])
    else:
        assert record.timestamp == RECEIVED_AT
    expected_id = expected_event_id(message)
    if expected_id is not None:
        assert record.event_id == expected_id
    record.context[RESERVED_CONTEXT_KEY] = described
    assert_storable([record])


@PROPERTIES
@given(message=messages(), shared=CONTEXTS)
def test_a_resent_message_maps_to_the_same_event_id(
    message: dict[str, Any], shared: dict[str, Any]
) -> None:
    """A resend differs in `sentAt` at most: the same id, so it is stored once."""
    resent = {**message, "sentAt": "2025-06-01T12:00:09Z"}
    [first] = mapped([message], shared)
    [again] = mapped([resent], shared)
    assert again.event_id == first.event_id
