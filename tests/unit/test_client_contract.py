"""The SDK's light copy of the wire contract agrees with the server's one."""

from __future__ import annotations

import ast
import gzip
import json
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from labs_analytics import events as server
from labs_analytics.auth.keys import ApiKey, Scope
from labs_analytics.errors import AppError
from labs_analytics.ingest.service import IngestService
from labs_analytics.settings import Settings
from labs_analytics_client import _batching, _events, contract

KEY = ApiKey(key_id="0123456789ab", product="clubs", scopes=frozenset({Scope.INGEST}), key_hash="x")
# parse() never touches the queue.
SERVICE = IngestService(None, Settings(_env_file=None))  # type: ignore[arg-type]


def _default(field: str) -> Any:
    return Settings.model_fields[field].default


def test_the_server_and_the_sdk_share_one_contract_module() -> None:
    # The same objects, not equal copies: there is one source.
    for name in (
        "EVENT_NAME_PATTERN",
        "MAX_USER_LENGTH",
        "MAX_JSON_DEPTH",
        "MIN_JSON_INT",
        "MAX_JSON_INT",
        "UNIX_SECONDS_PATTERN",
        "RFC3339_PATTERN",
        "EARLIEST_TIMESTAMP",
    ):
        assert getattr(server, name) is getattr(contract, name), name
        assert getattr(_events, name) is getattr(contract, name), name
    assert server.PRODUCT_PATTERN is contract.PRODUCT_PATTERN
    assert server.EventLimits().max_properties_bytes == contract.MAX_PROPERTIES_BYTES
    skew = server.EventLimits().max_future_skew
    assert skew == timedelta(seconds=contract.MAX_FUTURE_SKEW_SECONDS)
    # The server's per-deployment settings default to the contract's values.
    assert _default("max_properties_bytes") == contract.MAX_PROPERTIES_BYTES
    assert _default("max_future_skew_seconds") == contract.MAX_FUTURE_SKEW_SECONDS
    assert _default("max_events_per_request") == contract.MAX_EVENTS_PER_REQUEST
    assert _default("max_body_bytes") == contract.MAX_BODY_BYTES
    assert _batching.MAX_EVENTS_PER_REQUEST is contract.MAX_EVENTS_PER_REQUEST


def test_the_contract_module_needs_only_the_standard_library() -> None:
    tree = ast.parse(Path(contract.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported, "the contract module imports nothing: this test reads the wrong file"
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def _server_parses(raw: bytes) -> bool:
    """The server's verdict on a body, from its bytes (where integers are judged)."""
    try:
        SERVICE.parse(raw, KEY)
    except AppError:
        return False
    return True


BOUNDARY_INTEGERS = [
    (2**63 - 1, True),
    (2**63, True),
    (2**64 - 1, True),
    (2**64, False),
    (-(2**63), True),
    (-(2**63) - 1, False),
]


@pytest.mark.parametrize(("value", "accepted"), BOUNDARY_INTEGERS)
@pytest.mark.parametrize("field", ["properties", "context"])
def test_the_sdk_and_the_server_accept_the_same_integers(
    value: int, accepted: bool, field: str
) -> None:
    # What the SDK sends, or would have sent had it not refused: the same JSON text.
    raw = b'{"name":"check","%s":{"n":[%d]}}' % (field.encode(), value)
    if not accepted:
        with pytest.raises(_events.EventRejected, match="64 bits"):
            _events.encode_event("check", **{field: {"n": [value]}})
        assert not _server_parses(raw)
        return
    encoded = _events.encode_event("check", **{field: {"n": [value]}})
    assert b'"n":[%d]' % value in encoded.data
    assert _server_parses(raw)
    # And what is accepted is stored exactly as sent.
    [record] = SERVICE.parse(gzip.decompress(_body(encoded)), KEY)
    assert getattr(record, field) == {"n": [value]}


def _server_timestamp_ok(value: object) -> bool:
    try:
        server.EventIn(name="check", timestamp=value)
    except ValidationError:
        return False
    return True


def _client_timestamp_ok(value: object) -> bool:
    try:
        encoded = _events.encode_event("check", timestamp=value)
    except _events.EventRejected as exc:
        reason = exc.reason
    else:
        reason = None
    if reason is not None:
        assert reason is _events.DropReason.INVALID_TIMESTAMP
        return False
    # The SDK's normalised form reads back, at the server, as the same instant.
    sent = orjson.loads(encoded.data)["timestamp"]
    assert server.EventIn(name="check", timestamp=sent).timestamp is not None
    return True


TIMESTAMP_EDGES = [
    0,
    0.0,
    -1,
    -0.5,
    "0",
    "-1",
    "1700000000",
    "1700000000.5",
    "+1700000000",
    "1.0e9",
    "1e9",
    "1764547200000",
    "+1764547200000",
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999999Z",
    "1970-01-01T01:00:00+01:00",
    "1970-01-01T00:59:59+01:00",
    "0001-01-01T00:00:00Z",
    "2026-01-02 03:04:05",
    "2026-01-02T03:04:05.123456789Z",
    "2026-01-02T03:04:05-00:00",
    "2026-01-02t03:04:05z",
    "2026-01-02T03:04Z",
    "2026-01-02",
    "20260102T030405Z",
    "2026-W01-1T00:00:00Z",
    "2026-02-29T00:00:00Z",
    "2026-01-02T24:00:00Z",
    "2026-01-02T23:59:60Z",
    "2026-01-02T03:04:05+24:00",
    "2026-01-02T03:04:05+0100",
    "9999-12-31T23:59:59Z",
    float("inf"),
    float("nan"),
    True,
]


@pytest.mark.parametrize("value", TIMESTAMP_EDGES, ids=repr)
def test_the_sdk_and_the_server_accept_the_same_timestamps(value: object) -> None:
    assert _client_timestamp_ok(value) == _server_timestamp_ok(value)


def test_the_sdk_and_the_server_agree_at_the_future_limit() -> None:
    skew = _events.MAX_FUTURE_SKEW_SECONDS
    for offset, accepted in [(skew - 60, True), (skew + 60, False)]:
        moment = time.time() + offset
        text = datetime.fromtimestamp(moment, UTC).isoformat()
        for value in (moment, text, f"{moment:.3f}"):
            assert _client_timestamp_ok(value) == _server_timestamp_ok(value) == accepted


RFC3339_LIKE = st.builds(
    lambda y, mo, d, sep, h, mi, s, frac, off: f"{y}-{mo}-{d}{sep}{h}:{mi}:{s}{frac}{off}",
    st.sampled_from(["0000", "0001", "1969", "1970", "2024", "2026", "9999"]),
    st.integers(0, 13).map("{:02d}".format),
    st.integers(0, 32).map("{:02d}".format),
    st.sampled_from(["T", " ", "t", "_"]),
    st.integers(0, 25).map("{:02d}".format),
    st.integers(0, 61).map("{:02d}".format),
    st.integers(0, 61).map("{:02d}".format),
    st.sampled_from(["", ".5", ".123456", ".1234567890", "."]),
    st.sampled_from(["", "Z", "z", "+00:00", "-00:00", "+05:30", "-23:59", "+24:00", "+0530"]),
)


@settings(max_examples=500, deadline=None)
@given(RFC3339_LIKE | st.from_regex(r"-?[0-9]{1,11}(\.[0-9]{1,7})?", fullmatch=True))
def test_the_sdk_and_the_server_accept_the_same_timestamp_strings(value: str) -> None:
    assert _client_timestamp_ok(value) == _server_timestamp_ok(value), value


def _server_accepts(body: bytes) -> bool:
    data = orjson.loads(gzip.decompress(body))
    try:
        batch = server.EventBatchIn.model_validate(data)
    except ValidationError:
        return False
    return len(batch.events) <= contract.MAX_EVENTS_PER_REQUEST


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
        for i in range(contract.MAX_EVENTS_PER_REQUEST)
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
        if exc.reason is _events.DropReason.INVALID_PROPERTIES and "64 bits" in exc.message:
            # Integers past 64 bits: the server refuses them too, from the JSON text
            # (its parser would otherwise have silently made floats of them).
            assert not _server_parses(
                json.dumps({"name": "check", "properties": properties}).encode()
            )
            return
        with pytest.raises(ValidationError):
            server.EventIn(name="check", properties=properties)
        return
    assert _server_accepts(_body(encoded))
    assert _server_parses(gzip.decompress(_body(encoded)))


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
    assert len(body) <= limits.max_bytes < contract.MAX_BODY_BYTES
    assert len(batch) == 15  # 15 of 32 kB fit, a 16th would not
