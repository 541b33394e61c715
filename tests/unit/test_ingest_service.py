"""Parsing a request body into records: all or nothing, every problem named by index and field."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from labs_analytics.auth.keys import ApiKey, Scope
from labs_analytics.errors import Forbidden, InvalidEvents, MalformedBody, PayloadTooLarge
from labs_analytics.events import EVENT_LIST_ADAPTER
from labs_analytics.ingest.limits import LimitedKeys, RequestMeter
from labs_analytics.ingest.problems import MAX_LISTED_PROBLEMS
from labs_analytics.ingest.service import IngestService
from labs_analytics.queue.producer import StreamProducer
from labs_analytics.queue.service import EventQueue
from labs_analytics.settings import Settings

KEY = ApiKey(key_id="0123456789ab", product="clubs", scopes=frozenset({Scope.INGEST}), key_hash="x")
MAX_EVENTS = 3


@pytest.fixture
def service() -> IngestService:
    return make_service()


def make_service(**overrides: Any) -> IngestService:
    # parse() never touches the queue: a Redis client that is never used never connects.
    settings = Settings(_env_file=None, **{"max_events_per_request": MAX_EVENTS, **overrides})
    redis = Redis()
    producer = StreamProducer(redis, stream_key="unit:events", backlog_key="unit:backlog")
    queue = EventQueue(producer=producer, redis=redis, spool=None, memory_max_ratio=0.9)
    return IngestService(queue, settings)


def body(data: Any) -> bytes:
    return orjson.dumps(data)


def event(**fields: Any) -> dict[str, Any]:
    return {"name": "post.click", **fields}


# --- body shape ---------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"name": "a"', b"\xff\xfe{}"])
def test_body_that_is_not_json_is_malformed(service: IngestService, raw: bytes) -> None:
    with pytest.raises(MalformedBody, match="body is not valid JSON"):
        service.parse(raw, KEY)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param([event()], id="array"),
        pytest.param("post.click", id="string"),
        pytest.param(42, id="number"),
        pytest.param(None, id="null"),
    ],
)
def test_body_that_is_not_a_json_object_is_invalid(service: IngestService, data: Any) -> None:
    with pytest.raises(InvalidEvents, match="body must be a JSON object") as info:
        service.parse(body(data), KEY)
    assert info.value.details == [
        {"index": None, "field": None, "message": "expected a JSON object", "type": "model_type"}
    ]


def test_a_single_event_object_is_one_record(service: IngestService) -> None:
    records = service.parse(body(event(user="u_1", properties={"post": 7})), KEY)
    assert len(records) == 1
    (record,) = records
    assert record.name == "post.click"
    assert record.user == "u_1"
    assert record.properties == {"post": 7}
    assert record.product == "clubs"


def test_a_batch_is_one_record_per_event_in_request_order(service: IngestService) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    data = {"events": [event(event_id=str(i), name=f"e{n}") for n, i in enumerate(ids)]}
    records = service.parse(body(data), KEY)
    assert [r.event_id for r in records] == ids
    assert [r.name for r in records] == ["e0", "e1", "e2"]


def test_records_of_one_request_share_one_receive_time(service: IngestService) -> None:
    before = datetime.now(UTC)
    records = service.parse(body({"events": [event(), event()]}), KEY)
    after = datetime.now(UTC)
    assert records[0].received_at == records[1].received_at
    assert before <= records[0].received_at <= after
    # Without timestamp or UUIDv7 id, the event's time is the receive time.
    assert records[0].timestamp == records[0].received_at


def test_batch_may_carry_a_sent_at(service: IngestService) -> None:
    data = {"events": [event()], "sent_at": "2024-01-01T00:00:00Z"}
    assert len(service.parse(body(data), KEY)) == 1


def test_batch_with_an_invalid_sent_at_is_refused(service: IngestService) -> None:
    with pytest.raises(InvalidEvents, match="invalid batch envelope") as info:
        service.parse(body({"events": [event()], "sent_at": "not a time"}), KEY)
    assert [(d["index"], d["field"]) for d in info.value.details] == [(None, "sent_at")]


# --- batch envelope -----------------------------------------------------------


def test_empty_events_list_is_invalid_and_names_the_events_field(service: IngestService) -> None:
    with pytest.raises(InvalidEvents, match="nothing was accepted") as info:
        service.parse(body({"events": []}), KEY)
    assert [d["field"] for d in info.value.details] == ["events"]
    assert info.value.details[0]["index"] is None
    assert f"1 to {MAX_EVENTS} events" in info.value.details[0]["message"]


@pytest.mark.parametrize("events", [None, {"name": "a"}, "a", 3])
def test_events_that_is_not_a_list_is_invalid(service: IngestService, events: Any) -> None:
    with pytest.raises(InvalidEvents) as info:
        service.parse(body({"events": events}), KEY)
    assert [d["field"] for d in info.value.details] == ["events"]


def test_batch_of_exactly_the_maximum_is_accepted(service: IngestService) -> None:
    assert len(service.parse(body({"events": [event()] * MAX_EVENTS}), KEY)) == MAX_EVENTS


def test_batch_over_the_maximum_is_too_large(service: IngestService) -> None:
    with pytest.raises(
        PayloadTooLarge, match=f"batch of {MAX_EVENTS + 1} events exceeds the limit of {MAX_EVENTS}"
    ):
        service.parse(body({"events": [event()] * (MAX_EVENTS + 1)}), KEY)


def test_unknown_envelope_field_is_invalid(service: IngestService) -> None:
    with pytest.raises(InvalidEvents) as info:
        service.parse(body({"events": [event()], "batch": 1, "api_key": "x"}), KEY)
    assert info.value.details == [
        {"index": None, "field": "api_key", "message": "unknown field", "type": "extra_forbidden"},
        {"index": None, "field": "batch", "message": "unknown field", "type": "extra_forbidden"},
    ]


def test_unknown_field_in_a_single_event_is_invalid(service: IngestService) -> None:
    with pytest.raises(InvalidEvents) as info:
        service.parse(body(event(colour="red")), KEY)
    assert [(d["index"], d["field"], d["type"]) for d in info.value.details] == [
        (0, "colour", "extra_forbidden")
    ]


# --- invalid events -----------------------------------------------------------


def test_invalid_events_are_each_named_by_index_and_field(service: IngestService) -> None:
    data = {
        "events": [
            event(),
            event(name="bad name"),
            event(user="u" * 257, timestamp=True),
        ]
    }
    with pytest.raises(InvalidEvents) as info:
        service.parse(body(data), KEY)
    assert info.value.message == "2 of 3 events are invalid; nothing was accepted"
    assert sorted((d["index"], d["field"]) for d in info.value.details) == [
        (1, "name"),
        (2, "timestamp"),
        (2, "user"),
    ]
    for detail in info.value.details:
        assert detail["message"]
        assert detail["type"]


def test_invalid_single_event_is_reported_at_index_zero(service: IngestService) -> None:
    with pytest.raises(InvalidEvents) as info:
        service.parse(body({"name": ""}), KEY)
    assert info.value.message == "1 of 1 events are invalid; nothing was accepted"
    assert [(d["index"], d["field"]) for d in info.value.details] == [(0, "name")]


def test_event_that_is_not_an_object_is_reported_without_a_field(service: IngestService) -> None:
    with pytest.raises(InvalidEvents) as info:
        service.parse(body({"events": [event(), "post.click"]}), KEY)
    assert [(d["index"], d["field"]) for d in info.value.details] == [(1, None)]


def test_error_details_never_echo_the_input(service: IngestService) -> None:
    secret = "s3cr3t-value-that-must-not-be-echoed"
    with pytest.raises(InvalidEvents) as info:
        service.parse(body(event(name=secret + " x")), KEY)
    assert secret not in str(info.value.to_body())


def test_properties_limit_comes_from_settings() -> None:
    service = make_service(max_properties_bytes=50)
    with pytest.raises(InvalidEvents) as info:
        service.parse(body(event(properties={"k": "x" * 50})), KEY)
    assert [(d["index"], d["field"]) for d in info.value.details] == [(0, "properties")]


def test_future_skew_limit_comes_from_settings() -> None:
    service = make_service(max_future_skew_seconds=60)
    in_ten_minutes = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    with pytest.raises(InvalidEvents) as info:
        service.parse(body(event(timestamp=in_ten_minutes)), KEY)
    assert [(d["index"], d["field"]) for d in info.value.details] == [(0, "timestamp")]


# --- product ------------------------------------------------------------------


def test_events_naming_another_product_are_forbidden_with_their_indexes(
    service: IngestService,
) -> None:
    data = {
        "events": [event(product="clubs"), event(product="penn-mobile"), event(product="other")]
    }
    with pytest.raises(Forbidden) as info:
        service.parse(body(data), KEY)
    assert [(d["index"], d["field"]) for d in info.value.details] == [
        (1, "product"),
        (2, "product"),
    ]


def test_events_naming_the_keys_product_are_accepted(service: IngestService) -> None:
    records = service.parse(body({"events": [event(product="clubs"), event()]}), KEY)
    assert [r.product for r in records] == ["clubs", "clubs"]


def test_records_carry_the_keys_product(service: IngestService) -> None:
    key = ApiKey(
        key_id="ba9876543210", product="penn-mobile", scopes=frozenset({Scope.INGEST}), key_hash="y"
    )
    assert service.parse(body(event()), key)[0].product == "penn-mobile"


def test_invalid_events_are_reported_before_a_foreign_product(service: IngestService) -> None:
    data = {"events": [event(product="other"), event(name="bad name")]}
    with pytest.raises(InvalidEvents):
        service.parse(body(data), KEY)


# --- hostile bodies: bounded answers -----------------------------------------------


def hostile_event(unknown_fields: int) -> dict[str, Any]:
    """An event wrong in every field, plus many fields that do not exist."""
    return {
        "event_id": "not-a-uuid",
        "name": "",
        "user": 1,
        "timestamp": "yesterday",
        "properties": [],
        **{f"x{i}": 0 for i in range(unknown_fields)},
    }


def test_an_error_lists_the_first_problems_then_the_totals() -> None:
    service = make_service(max_events_per_request=1000)
    items = [hostile_event(40)] * 1000
    with pytest.raises(InvalidEvents) as info:
        service.parse(body({"events": items}), KEY)
    details = info.value.details
    *listed, summary = details
    assert len(listed) == MAX_LISTED_PROBLEMS
    assert all(d["index"] == 0 for d in listed)  # the first event's problems come first
    assert {d["field"] for d in listed} >= {"event_id", "name", "user", "timestamp"}
    # The totals are exact: what validating the whole list reports.
    with pytest.raises(ValidationError) as everything:
        EVENT_LIST_ADAPTER.validate_python(items)
    assert summary["type"] == "too_many_problems"
    assert summary["index"] is None
    assert summary["problems"] == everything.value.error_count() == 1000 * 45
    assert summary["invalid_events"] == 1000
    assert summary["invalid_indexes"] == list(range(1000))
    assert info.value.message == (
        "1000 of 1000 events are invalid (45000 problems, the first 20 listed); "
        "nothing was accepted"
    )
    assert len(orjson.dumps(info.value.to_body())) < 16 * 1024


def test_a_few_problems_are_all_listed_without_a_summary(service: IngestService) -> None:
    with pytest.raises(InvalidEvents) as info:
        service.parse(body({"events": [event(), event(colour="red", user="")]}), KEY)
    assert sorted((d["index"], d["field"]) for d in info.value.details) == [
        (1, "colour"),
        (1, "user"),
    ]
    assert "too_many_problems" not in {d["type"] for d in info.value.details}


def test_invalid_indexes_name_only_the_invalid_events() -> None:
    service = make_service(max_events_per_request=1000)
    items = [event() if i % 3 else hostile_event(30) for i in range(300)]
    with pytest.raises(InvalidEvents) as info:
        service.parse(body({"events": items}), KEY)
    summary = info.value.details[-1]
    assert summary["invalid_indexes"] == list(range(0, 300, 3))
    assert summary["problems"] == 100 * 35


def test_a_single_event_with_a_hundred_thousand_unknown_fields_is_answered_briefly() -> None:
    service = make_service(max_events_per_request=1000)
    with pytest.raises(InvalidEvents) as info:
        service.parse(body(hostile_event(100_000)), KEY)
    summary = info.value.details[-1]
    assert summary["problems"] == 100_005
    assert summary["invalid_indexes"] == [0]
    assert len(orjson.dumps(info.value.to_body())) < 16 * 1024


def test_refusing_the_worst_body_costs_little_cpu() -> None:
    # The 6 KB gzip body that expands to 1 MiB of events and 150,000 problems:
    # it cost 0.46 s of CPU to refuse, listing every problem. A generous bound.
    service = make_service(max_events_per_request=1000)
    items = [{"name": "", **{f"{i:x}": 0 for i in range(145)}}] * 1000
    raw = orjson.dumps({"events": items})
    assert len(raw) <= 1024 * 1024
    started = time.process_time()
    with pytest.raises(InvalidEvents):
        service.parse(raw, KEY)
    assert time.process_time() - started < 0.25


def test_many_unknown_envelope_fields_are_counted_not_all_listed(service: IngestService) -> None:
    data: dict[str, Any] = {"events": [event()], **{f"k{i:05d}": 1 for i in range(5000)}}
    with pytest.raises(InvalidEvents) as info:
        service.parse(body(data), KEY)
    *listed, summary = info.value.details
    assert [d["field"] for d in listed] == [f"k{i:05d}" for i in range(MAX_LISTED_PROBLEMS)]
    assert summary["problems"] == 5000


def test_events_of_another_product_are_counted_not_all_listed() -> None:
    service = make_service(max_events_per_request=1000)
    with pytest.raises(Forbidden) as info:
        service.parse(body({"events": [event(product="other")] * 1000}), KEY)
    *listed, summary = info.value.details
    assert len(listed) == MAX_LISTED_PROBLEMS
    assert summary["invalid_indexes"] == list(range(1000))


def test_a_request_records_its_event_count_for_the_rate_limit(service: IngestService) -> None:
    meter = RequestMeter(received=10)
    with pytest.raises(InvalidEvents):
        service.parse(body({"events": [event(name="bad name")] * 2}), KEY, meter=meter)
    assert meter.events == 2
    assert meter.rejected_cost() == 2


# --- stored is what was sent ----------------------------------------------------------


@pytest.mark.parametrize("value", [2**63 - 1, 2**63, 2**64 - 1, -(2**63)])
def test_integers_within_64_bits_are_stored_exactly(service: IngestService, value: int) -> None:
    raw = b'{"name": "n", "properties": {"x": %d}}' % value
    [record] = service.parse(raw, KEY)
    assert record.properties == {"x": value}


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30])
def test_integers_beyond_64_bits_are_refused_naming_the_literal(
    service: IngestService, value: int
) -> None:
    raw = b'{"events": [{"name": "ok"}, {"name": "n", "properties": {"x": [1, %d]}}]}' % value
    with pytest.raises(InvalidEvents) as info:
        service.parse(raw, KEY)
    [detail] = info.value.details
    assert (detail["index"], detail["field"], detail["type"]) == (
        1,
        "properties.x.1",
        "int_out_of_range",
    )
    assert str(value) in detail["message"]
    assert "send larger numbers as strings" in detail["message"]
    assert info.value.message == "1 of 2 events are invalid; nothing was accepted"


def test_an_integer_beyond_64_bits_in_a_single_event_is_at_index_zero(
    service: IngestService,
) -> None:
    with pytest.raises(InvalidEvents) as info:
        service.parse(b'{"name": "n", "context": {"id": 18446744073709551616}}', KEY)
    assert [(d["index"], d["field"]) for d in info.value.details] == [(0, "context.id")]


def test_long_digit_strings_are_not_integers(service: IngestService) -> None:
    raw = b'{"name": "n", "properties": {"card": "12345678901234567890123"}}'
    assert service.parse(raw, KEY)[0].properties == {"card": "12345678901234567890123"}


@pytest.mark.parametrize("sent_at", ["1969-12-31T23:59:59Z", -5, "1e9"])
def test_sent_at_follows_the_timestamp_rule(service: IngestService, sent_at: Any) -> None:
    with pytest.raises(InvalidEvents) as info:
        service.parse(body({"events": [event()], "sent_at": sent_at}), KEY)
    assert [(d["index"], d["field"]) for d in info.value.details] == [(None, "sent_at")]


def test_sent_at_in_the_future_uses_the_configured_skew() -> None:
    service = make_service(max_future_skew_seconds=60)
    later = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    with pytest.raises(InvalidEvents):
        service.parse(body({"events": [event()], "sent_at": later}), KEY)


# --- the memory of limited keys -----------------------------------------------------


def test_a_limited_key_is_remembered_until_its_time_and_no_longer() -> None:
    limited = LimitedKeys()
    # Long enough that a busy machine's pause between two lines does not end it.
    limited.limit("a", 1.0)
    left = limited.seconds_left("a")
    assert left is not None
    assert 0 < left <= 1.0
    assert limited.seconds_left("b") is None  # other keys are unaffected
    time.sleep(left + 0.01)  # past its time: the limit itself is what is tested
    assert limited.seconds_left("a") is None
    assert len(limited) == 0


def test_the_memory_of_limited_keys_is_bounded() -> None:
    limited = LimitedKeys(max_keys=100)
    for i in range(1000):
        limited.limit(f"k{i}", 60)
    assert len(limited) == 100
    assert limited.seconds_left("k999") is not None  # the newest are kept


def test_a_longer_limit_is_never_shortened_by_a_shorter_one() -> None:
    limited = LimitedKeys()
    limited.limit("a", 60)
    limited.limit("a", 1)
    left = limited.seconds_left("a")
    assert left is not None
    assert left > 50


@pytest.mark.parametrize(
    ("meter", "cost"),
    [
        (RequestMeter(), 1),
        (RequestMeter(received=1), 1),
        (RequestMeter(received=1025), 2),
        (RequestMeter(received=6000, decompressed=1024 * 1024), 1024),
        (RequestMeter(received=900_000, events=500), 879),
        (RequestMeter(received=5000, events=1000), 1000),
    ],
)
def test_refused_work_costs_the_larger_of_its_events_and_its_kib(
    meter: RequestMeter, cost: int
) -> None:
    assert meter.rejected_cost() == cost
