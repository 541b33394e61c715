"""Logs are data: one JSON object per line with ts, level, logger, event and fields."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from labs_analytics.logs import JsonFormatter, get_logger


class Captured:
    def __init__(self, name: str, stream: io.StringIO) -> None:
        self.name = name
        self._stream = stream

    def lines(self) -> list[str]:
        return self._stream.getvalue().splitlines()

    def objects(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]


@pytest.fixture
def captured() -> Iterator[Captured]:
    """A logger of its own, at INFO, writing JSON lines to a string."""
    name = f"unit.logs.{uuid.uuid4().hex[:8]}"
    logger = logging.getLogger(name)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield Captured(name, stream)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def test_event_and_fields_become_one_json_object(captured: Captured) -> None:
    get_logger(captured.name).info("x.y", a=1, b="two")
    (line,) = captured.lines()
    obj = json.loads(line)
    assert obj["event"] == "x.y"
    assert obj["level"] == "info"
    assert obj["logger"] == captured.name
    assert obj["a"] == 1
    assert obj["b"] == "two"


def test_timestamp_is_iso8601_utc_with_milliseconds(captured: Captured) -> None:
    before = datetime.now(UTC)
    get_logger(captured.name).info("x.y")
    after = datetime.now(UTC)
    (obj,) = captured.objects()
    ts = datetime.fromisoformat(obj["ts"])
    assert ts.utcoffset() is not None
    assert ts.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    # Stamped between before and after (to the millisecond it is truncated to).
    assert before - timedelta(milliseconds=1) <= ts <= after
    assert len(obj["ts"].split(".")[1]) == len("123+00:00")


def test_only_the_documented_keys_and_the_fields_appear(captured: Captured) -> None:
    get_logger(captured.name).info("flush.committed", batch_id="b1", events=3, ms=12.5)
    (obj,) = captured.objects()
    assert set(obj) == {"ts", "level", "logger", "event", "batch_id", "events", "ms"}


def test_each_log_call_is_exactly_one_line(captured: Captured) -> None:
    log = get_logger(captured.name)
    log.info("first", text="a\nmulti-line\nvalue")
    log.warning("second")
    log.error("third")
    objects = captured.objects()
    assert [o["event"] for o in objects] == ["first", "second", "third"]
    assert [o["level"] for o in objects] == ["info", "warning", "error"]
    assert objects[0]["text"] == "a\nmulti-line\nvalue"


def test_messages_below_the_logger_level_are_not_emitted(captured: Captured) -> None:
    get_logger(captured.name).debug("too.quiet", a=1)
    assert captured.lines() == []


def test_exception_info_is_included_in_the_same_line(captured: Captured) -> None:
    log = get_logger(captured.name)
    try:
        raise ValueError("boom")
    except ValueError:
        log.error("flush.failed", exc_info=True, attempt=2)
    (line,) = captured.lines()
    obj = json.loads(line)
    assert obj["event"] == "flush.failed"
    assert obj["attempt"] == 2
    assert obj["exception"].startswith("Traceback")
    assert "ValueError: boom" in obj["exception"]


def test_error_without_exc_info_has_no_exception_key(captured: Captured) -> None:
    get_logger(captured.name).error("flush.failed")
    (obj,) = captured.objects()
    assert "exception" not in obj


def test_uuid_and_datetime_fields_are_json_strings(captured: Captured) -> None:
    event_id = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057")
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    get_logger(captured.name).info("x.y", event_id=event_id, at=moment)
    (obj,) = captured.objects()
    assert obj["event_id"] == str(event_id)
    assert datetime.fromisoformat(obj["at"]) == moment


def test_fields_json_cannot_encode_are_logged_as_text(captured: Captured) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque-thing"

    get_logger(captured.name).info("x.y", thing=Opaque())
    (obj,) = captured.objects()
    assert obj["thing"] == "opaque-thing"


def test_third_party_extras_and_format_args_are_kept(captured: Captured) -> None:
    logging.getLogger(captured.name).info(
        "GET %s %d", "/v1/events", 202, extra={"client_addr": "10.0.0.1"}
    )
    (obj,) = captured.objects()
    assert obj["event"] == "GET /v1/events 202"
    assert obj["client_addr"] == "10.0.0.1"
    assert "args" not in obj
    assert "msg" not in obj


def test_formatter_works_with_caplog(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="unit.logs.caplog"):
        get_logger("unit.logs.caplog").info("x.y", a=1)
    (record,) = caplog.records
    obj = json.loads(JsonFormatter().format(record))
    assert obj["event"] == "x.y"
    assert obj["a"] == 1
    assert obj["logger"] == "unit.logs.caplog"
