"""Lenient serialization: values JSON cannot carry are converted, and the event is kept."""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import logging
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

from labs_analytics_client import AnalyticsClient, InvalidEvent
from labs_analytics_client import _events as events_module
from labs_analytics_client._events import DropReason, EventRejected, encode_event

UNREACHABLE = "http://127.0.0.1:9"


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Avatar:
    url: str
    raw: bytes
    size: tuple[int, int]


@dataclasses.dataclass
class User:
    id: int
    avatar: Avatar
    joined: datetime


class Club(pydantic.BaseModel):
    name: str
    founded: datetime
    tags: tuple[str, ...]


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque 7>"


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no")


def lenient(properties: Any, **kwargs: Any) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
    encoded = encode_event("check", properties=properties, lenient=True, **kwargs)
    return json.loads(encoded.data)["properties"], encoded.converted


def lenient_reason(properties: Any) -> DropReason:
    with pytest.raises(EventRejected) as caught:
        encode_event("check", properties=properties, lenient=True)
    return caught.value.reason


def test_dataclasses_and_pydantic_models_become_objects_nested_all_the_way() -> None:
    joined = datetime(2026, 1, 2, tzinfo=UTC)
    user = User(7, Avatar("https://x/a.png", b"png", (64, 64)), joined)
    club = Club(name="chess", founded=joined, tags=("board", "games"))
    properties, converted = lenient({"user": user, "club": club, "pair": (1, Color.RED)})
    assert properties == {
        "user": {
            "id": 7,
            "avatar": {"url": "https://x/a.png", "raw": "png", "size": [64, 64]},
            "joined": "2026-01-02T00:00:00+00:00",
        },
        "club": {"name": "chess", "founded": "2026-01-02T00:00:00Z", "tags": ["board", "games"]},
        "pair": [1, "red"],
    }
    assert converted == ()  # nothing fell back to repr()


def test_bytes_are_utf8_text_when_they_decode_else_tagged_base64() -> None:
    binary = b"\x89PNG\xff\x00"
    properties, converted = lenient(
        {"text": "é".encode(), "binary": binary, "view": memoryview(b"ok"), "array": bytearray()}
    )
    assert properties == {
        "text": "é",
        "binary": {"$base64": base64.b64encode(binary).decode()},
        "view": "ok",
        "array": "",
    }
    assert base64.b64decode(properties["binary"]["$base64"]) == binary
    assert converted == ()


def test_an_unknown_object_becomes_its_repr_and_its_path_is_noted() -> None:
    properties, converted = lenient(
        {"user": {"avatar": Opaque()}, "items": [1, BrokenRepr()], Opaque(): "key"}
    )
    assert properties["user"] == {"avatar": "<Opaque 7>"}
    assert properties["items"][0] == 1
    assert properties["items"][1].startswith("<")  # object.__repr__ when repr() raises
    assert properties["<Opaque 7>"] == "key"
    assert [path for path, _ in converted] == [
        "properties.user.avatar",
        "properties.items[1]",
        "properties.<key Opaque>",
    ]
    _, in_context = encode_event("check", context={"req": Opaque()}, lenient=True)[1:]
    assert in_context == (("context.req", "Opaque"),)


def test_the_contract_still_refuses_what_breaks_it_after_conversion() -> None:
    assert lenient_reason({"blob": b"x" * 40_000}) is DropReason.TOO_LARGE
    assert lenient_reason({"nul": b"a\x00b", "o": Opaque()}) is DropReason.INVALID_PROPERTIES
    assert lenient_reason({"n": (2**64, Opaque())}) is DropReason.INVALID_PROPERTIES
    assert lenient_reason({"f": [float("nan"), Opaque()]}) is DropReason.INVALID_PROPERTIES

    @dataclasses.dataclass
    class Node:
        child: Any

    deep: Any = Opaque()
    for _ in range(40):
        deep = Node(deep)
    assert lenient_reason({"deep": deep}) is DropReason.INVALID_PROPERTIES
    loop = Node(None)
    loop.child = loop  # a cycle ends at the depth limit
    assert lenient_reason({"loop": loop}) is DropReason.INVALID_PROPERTIES
    circular: dict[str, Any] = {}
    circular["self"] = circular
    assert lenient_reason(circular) is DropReason.NOT_SERIALIZABLE
    assert lenient_reason({"x": "\ud800"}) is DropReason.NOT_SERIALIZABLE


def test_strict_encoding_refuses_every_value_json_cannot_carry() -> None:
    for value in (Opaque(), b"bytes", Avatar("u", b"", (1, 1))):
        with pytest.raises(EventRejected) as caught:
            encode_event("check", properties={"x": value})
        assert caught.value.reason is DropReason.NOT_SERIALIZABLE


def test_plain_json_never_reaches_the_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object, **kwargs: object) -> object:
        raise AssertionError("the lenient walk ran for plain JSON")

    monkeypatch.setattr(events_module, "jsonable", never)
    properties = {"s": "x", "n": 1, "f": 1.5, "b": True, "none": None, "l": [1, {"k": (2,)}]}
    assert lenient(properties)[0] == {**properties, "l": [1, {"k": [2]}]}
    when = datetime(2026, 1, 2, tzinfo=UTC)
    assert lenient({"when": when})[0] == {"when": "2026-01-02T00:00:00+00:00"}


def test_track_keeps_the_event_and_warns_once_naming_the_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = AnalyticsClient("lak_0_x", base_url=UNREACHABLE, flush_interval=60)
    try:
        with caplog.at_level(logging.WARNING, logger="labs_analytics_client"):
            first = client.track("ok", properties={"user": {"avatar": Opaque()}})
            second = client.track("ok", properties={"other": Opaque()})
        assert first is not None
        assert second is not None
        stats = client.stats()
        assert stats.dropped == 0
        assert stats.queued == 2
        warnings = [r.getMessage() for r in caplog.records if "value_converted" in r.getMessage()]
        assert len(warnings) == 1
        assert "path=properties.user.avatar type=Opaque" in warnings[0]
    finally:
        client.close(timeout=0)


def test_strict_track_raises_where_lenient_would_use_repr() -> None:
    client = AnalyticsClient("lak_0_x", base_url=UNREACHABLE, strict=True, flush_interval=60)
    try:
        with pytest.raises(InvalidEvent, match="not_serializable"):
            client.track("ok", properties={"user": {"avatar": Opaque()}})
    finally:
        client.close(timeout=0)
