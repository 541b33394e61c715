"""The SDK's light copy of the wire contract agrees with the server's one."""

from __future__ import annotations

import gzip
import re
from datetime import timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from labs_analytics import events as server
from labs_analytics.client import _batching, _events
from labs_analytics.settings import Settings


def _default(field: str) -> Any:
    return Settings.model_fields[field].default


def test_the_limits_are_the_servers() -> None:
    assert _events.EVENT_NAME_PATTERN == server.EVENT_NAME_PATTERN
    assert _events.MAX_USER_LENGTH == server.MAX_USER_LENGTH
    assert _events.MAX_JSON_DEPTH == server.MAX_JSON_DEPTH
    assert _events.MAX_PROPERTIES_BYTES == server.EventLimits().max_properties_bytes
    assert _events.MAX_PROPERTIES_BYTES == _default("max_properties_bytes") == 32 * 1024
    skew = timedelta(seconds=_events.MAX_FUTURE_SKEW_SECONDS)
    assert skew == server.EventLimits().max_future_skew
    assert _events.MAX_FUTURE_SKEW_SECONDS == _default("max_future_skew_seconds")
    assert _events.MAX_EVENTS_PER_REQUEST == _default("max_events_per_request") == 1000
    assert _events.MAX_BODY_BYTES == _default("max_body_bytes") == 1024 * 1024


def _server_accepts(body: bytes) -> bool:
    data = orjson.loads(gzip.decompress(body))
    try:
        batch = server.EventBatchIn.model_validate(data)
    except ValidationError:
        return False
    return len(batch.events) <= _events.MAX_EVENTS_PER_REQUEST


def _body(*encoded: _events.EncodedEvent) -> bytes:
    queued = [_batching.QueuedEvent(i, e.event_id, e.data, 0.0) for i, e in enumerate(encoded)]
    return _batching.encode_body(queued, sent_at="2026-11-27T16:20:00.000000Z", gzip=True)


def test_a_full_body_of_sdk_events_is_what_the_server_takes() -> None:
    encoded = [
        _events.encode_event(
            "post.click",
            user="u_1",
            properties={"post_id": i, "tags": ["a", "b"], "ratio": 0.5, "ok": True, "none": None},
            context={"app": "clubs"},
        )
        for i in range(_events.MAX_EVENTS_PER_REQUEST)
    ]
    body = _body(*encoded)
    assert _server_accepts(body)
    # Every field the SDK writes is one the server knows (it refuses unknown ones).
    event = orjson.loads(encoded[0].data)
    assert set(event) <= set(server.EventIn.model_fields)
    assert set(orjson.loads(gzip.decompress(body))) <= set(server.EventBatchIn.model_fields)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="aZ09_.:/-\n \x00é", min_size=0, max_size=130))
def test_the_sdk_and_the_server_accept_the_same_names(name: str) -> None:
    try:
        server.EventIn(name=name)
        server_ok = True
    except ValidationError:
        server_ok = False
    try:
        _events.encode_event(name)
        client_ok = True
    except _events.EventRejected:
        client_ok = False
    assert client_ok == server_ok, name
    assert client_ok == bool(re.fullmatch(server.EVENT_NAME_PATTERN, name))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N", "Cc", "Zs"])),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=40,
)


def _nest(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    st.integers(min_value=0, max_value=40),
)
def test_what_the_sdk_accepts_the_server_accepts(properties: dict[str, Any], depth: int) -> None:
    properties = {**properties, "deep": _nest(properties.get("x", 1), depth)}
    try:
        encoded = _events.encode_event("check", properties=properties)
    except _events.EventRejected as exc:
        # The SDK refuses a little more than the server: integers past 64 bits,
        # which the server's parser would silently turn into floats.
        if exc.reason is _events.DropReason.INVALID_PROPERTIES and "64 bits" in exc.message:
            return
        with pytest.raises(ValidationError):
            server.EventIn(name="check", properties=properties)
        return
    assert _server_accepts(_body(encoded))


@pytest.mark.parametrize("extra", [0, 1])
def test_the_properties_size_limit_falls_on_the_same_byte(extra: int) -> None:
    overhead = len(orjson.dumps({"k": ""}))
    properties = {"k": "é" * ((_events.MAX_PROPERTIES_BYTES - overhead) // 2) + "x" * extra}
    size = len(orjson.dumps(properties))
    assert size == _events.MAX_PROPERTIES_BYTES + extra
    try:
        server.EventIn(name="check", properties=properties)
        server_ok = True
    except ValidationError:
        server_ok = False
    refused: _events.DropReason | None = None
    try:
        _events.encode_event("check", properties=properties)
    except _events.EventRejected as exc:
        refused = exc.reason
    assert (refused is None) == server_ok == (extra == 0)
    assert refused in (None, _events.DropReason.TOO_LARGE)


def test_a_batch_the_sdk_closes_fits_the_body_limit() -> None:
    big = _events.encode_event("big", properties={"blob": "x" * 32_000})
    limits = _batching.BatchLimits(max_events=1000, max_bytes=500_000, interval=1.0)
    queue = _batching.EventQueue(max_events=10_000, max_bytes=10**9)
    for seq in range(1, 100):
        queue.put(_batching.QueuedEvent(seq, big.event_id, big.data, 0.0))
    batch = queue.take(limits)
    body = _batching.encode_body(batch, sent_at="2026-11-27T16:20:00.000000Z", gzip=False)
    assert len(body) <= limits.max_bytes < _events.MAX_BODY_BYTES
    assert len(batch) == 15  # 15 of 32 kB fit, a 16th would not
