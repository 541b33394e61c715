"""The wire contract: what ``EventIn`` accepts and refuses, and how ``to_record`` fills it in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from labs_analytics.events import (
    EVENT_LIST_ADAPTER,
    MAX_JSON_DEPTH,
    MAX_JSON_INT,
    MAX_USER_LENGTH,
    MIN_JSON_INT,
    EventIn,
    EventLimits,
    may_hold_large_integers,
    out_of_range_integers,
    timestamp_from_uuid7,
    to_record,
)

RECEIVED_AT = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def uuid7_at(
    moment: datetime, *, rand_a: int = 0x123, rand_b: int = 0x0ABC_DEF0_1234_5678
) -> uuid.UUID:
    """A UUIDv7 built by hand (RFC 9562 §5.7): 48 bits of unix ms, version 7, variant 10."""
    unix_ms = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    return uuid7_from_ms(unix_ms, rand_a=rand_a, rand_b=rand_b)


def uuid7_from_ms(
    unix_ms: int, *, rand_a: int = 0x123, rand_b: int = 0x0ABC_DEF0_1234_5678
) -> uuid.UUID:
    value = (unix_ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return uuid.UUID(int=value)


def errors_of(data: dict[str, Any], context: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        EventIn.model_validate(data, context=context)
    return info.value.errors(include_url=False)


def only_error(data: dict[str, Any], context: dict[str, Any] | None = None) -> dict[str, Any]:
    errors = errors_of(data, context)
    assert len(errors) == 1, errors
    return errors[0]


def nested(levels: int, leaf: Any = 1) -> dict[str, Any]:
    """A properties object whose leaf value sits ``levels`` containers deep."""
    value: Any = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


# --- name ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "post.click",
        "a",
        "A-Z_a-z.0-9",
        "app:screen/view-open_v2",
        "x" * 128,
    ],
)
def test_name_of_letters_digits_and_the_five_punctuation_marks_is_accepted(name: str) -> None:
    assert EventIn(name=name).name == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 129, id="129-chars"),
        pytest.param("post click", id="space"),
        pytest.param(" post.click", id="leading-space"),
        pytest.param("post.click\n", id="trailing-newline"),
        pytest.param("café", id="unicode-letter"),
        pytest.param("\uff50\uff4f\uff53\uff54", id="fullwidth-letters"),
        pytest.param("post,click", id="comma"),
        pytest.param("post@click", id="at-sign"),
        pytest.param("post\\click", id="backslash"),
    ],
)
def test_name_outside_the_pattern_is_refused(name: str) -> None:
    error = only_error({"name": name})
    assert error["loc"] == ("name",)
    assert error["type"] == "string_pattern_mismatch"


def test_name_is_required() -> None:
    error = only_error({})
    assert error["loc"] == ("name",)
    assert error["type"] == "missing"


# --- user ---------------------------------------------------------------------


def test_user_of_the_maximum_length_is_accepted() -> None:
    user = "u" * MAX_USER_LENGTH
    assert EventIn(name="a", user=user).user == user


def test_user_longer_than_the_maximum_is_refused() -> None:
    error = only_error({"name": "a", "user": "u" * (MAX_USER_LENGTH + 1)})
    assert error["loc"] == ("user",)
    assert error["type"] == "string_too_long"


def test_empty_user_is_refused() -> None:
    assert only_error({"name": "a", "user": ""})["loc"] == ("user",)


def test_user_with_a_nul_character_is_refused() -> None:
    error = only_error({"name": "a", "user": "pennkey\x00"})
    assert error["loc"] == ("user",)
    assert "NUL" in error["msg"]


def test_user_is_optional() -> None:
    assert EventIn(name="a").user is None


# --- timestamp ----------------------------------------------------------------


def test_timestamp_in_rfc3339_with_an_offset_is_converted_to_utc() -> None:
    event = EventIn(name="a", timestamp="2024-01-01T12:00:00+02:00")
    assert event.timestamp == datetime(2024, 1, 1, 10, 0, 0, tzinfo=UTC)
    assert event.timestamp is not None
    assert event.timestamp.utcoffset() == timedelta(0)


def test_timestamp_with_a_z_suffix_is_utc() -> None:
    event = EventIn(name="a", timestamp="2024-01-01T12:00:00.123456Z")
    assert event.timestamp == datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_timestamp_without_an_offset_is_taken_as_utc() -> None:
    event = EventIn(name="a", timestamp="2024-01-01T12:00:00")
    assert event.timestamp == datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert event.timestamp is not None
    assert event.timestamp.tzinfo is not None


def test_timestamp_as_an_aware_datetime_is_converted_to_utc() -> None:
    eastern = timezone(timedelta(hours=-5))
    event = EventIn(name="a", timestamp=datetime(2024, 1, 1, 7, 0, tzinfo=eastern))
    assert event.timestamp == datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert event.timestamp is not None
    assert event.timestamp.utcoffset() == timedelta(0)


def test_timestamp_in_unix_seconds_is_read_as_seconds_not_milliseconds() -> None:
    event = EventIn(name="a", timestamp=1_700_000_000)
    assert event.timestamp == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_timestamp_in_fractional_unix_seconds_keeps_the_fraction() -> None:
    event = EventIn(name="a", timestamp=1_700_000_000.25)
    assert event.timestamp == datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC)


def test_timestamp_in_unix_milliseconds_is_refused_not_reinterpreted() -> None:
    # 1.7e12 seconds is tens of thousands of years away: out of range, never "ms".
    error = only_error({"name": "a", "timestamp": 1_700_000_000_000})
    assert error["loc"] == ("timestamp",)
    assert "out of range" in error["msg"] or "in the future" in error["msg"]


def test_timestamp_as_a_string_of_digits_is_not_read_as_milliseconds() -> None:
    # The contract is RFC 3339 or unix *seconds*: a digit string must never be
    # silently read as milliseconds (it would land in 2023 instead of being refused).
    with pytest.raises(ValidationError):
        EventIn(name="a", timestamp="1700000000000")


def test_timestamp_as_a_string_of_digits_is_read_as_unix_seconds() -> None:
    event = EventIn(name="a", timestamp="1700000000")
    assert event.timestamp == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_timestamp_that_cannot_be_expressed_in_utc_is_refused() -> None:
    # Year 1 at +01:00 is before the first representable UTC instant.
    error = only_error({"name": "a", "timestamp": "0001-01-01T00:00:00+01:00"})
    assert error["loc"] == ("timestamp",)
    assert "before 1970-01-01T00:00:00Z" in error["msg"]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("0001-01-01T00:00:00Z", id="year-1-stored-as-minus-infinity-before"),
        pytest.param("1969-12-31T23:59:59.999999Z", id="a-microsecond-before"),
        pytest.param("1970-01-01T00:59:59+01:00", id="before-once-in-utc"),
        pytest.param(-1, id="negative-seconds"),
        pytest.param(-0.000001, id="negative-fraction"),
        pytest.param("-1", id="negative-seconds-text"),
        pytest.param("-1700000000", id="negative-large-text"),
    ],
)
def test_timestamp_before_unix_zero_is_refused(value: object) -> None:
    error = only_error({"name": "a", "timestamp": value})
    assert error["loc"] == ("timestamp",)
    assert "before 1970-01-01T00:00:00Z (unix 0)" in error["msg"]


@pytest.mark.parametrize(
    "value", [0, 0.0, "0", "0.0", "1970-01-01T00:00:00Z", "1970-01-01T01:00:00+01:00"]
)
def test_timestamp_at_unix_zero_is_accepted(value: object) -> None:
    assert EventIn(name="a", timestamp=value).timestamp == datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-01 12:00:00Z", datetime(2024, 1, 1, 12, tzinfo=UTC)),
        ("2024-01-01T12:00:00-00:00", datetime(2024, 1, 1, 12, tzinfo=UTC)),
        ("2024-01-01T12:00:00.5+01:00", datetime(2024, 1, 1, 11, 0, 0, 500000, tzinfo=UTC)),
        # Digits past the microsecond are dropped, not rounded (as the SDK does).
        ("2024-01-01T12:00:00.123456789Z", datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ("1700000000.25", datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC)),
    ],
)
def test_timestamp_forms_of_the_rule_are_read_as_documented(value: str, expected: datetime) -> None:
    assert EventIn(name="a", timestamp=value).timestamp == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("+1764547200000", id="plus-sign-digits-once-read-as-milliseconds"),
        pytest.param("1.0e9", id="exponent-once-accepted"),
        pytest.param("1e9", id="exponent"),
        pytest.param("+1700000000", id="plus-sign"),
        pytest.param("1700000000.", id="trailing-dot"),
        pytest.param(".5", id="leading-dot"),
        pytest.param("2024-01-01", id="date-only"),
        pytest.param("2024-01-01T12:00Z", id="no-seconds"),
        pytest.param("20240101T120000Z", id="compact-iso-8601"),
        pytest.param("2024-W01-1T12:00:00Z", id="week-date"),
        pytest.param("2024-01-01T12:00:00+0100", id="offset-without-colon"),
        pytest.param("2024-01-01T12:00:00+01", id="offset-hours-only"),
        pytest.param("2024-01-01T12:00:00.Z", id="empty-fraction"),
        pytest.param("2024-01-01T12:00:00,5Z", id="comma-fraction"),
        pytest.param("2024-01-01t12:00:00z", id="lowercase"),
        pytest.param("2024-01-01T12:00:00Z ", id="trailing-space"),
        pytest.param("2024-01-01T12:00:00Z\n", id="trailing-newline"),
        pytest.param("\uff12024-01-01T12:00:00Z", id="fullwidth-digit"),
    ],
)
def test_timestamp_text_in_neither_form_is_refused_naming_the_field(value: str) -> None:
    error = only_error({"name": "a", "timestamp": value})
    assert error["loc"] == ("timestamp",)
    assert "unix seconds" in error["msg"]
    assert "RFC 3339" in error["msg"]


@pytest.mark.parametrize(
    "value",
    [
        "2024-02-30T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T23:60:00Z",
        "2024-01-01T23:59:60Z",
        "2024-01-01T00:00:00+24:00",
        "0000-01-01T00:00:00Z",
    ],
)
def test_timestamp_in_the_rfc3339_shape_but_impossible_is_refused(value: str) -> None:
    error = only_error({"name": "a", "timestamp": value})
    assert error["loc"] == ("timestamp",)
    assert "not a valid date-time" in error["msg"]


@pytest.mark.parametrize("value", [[], {}, [1700000000], {"seconds": 1}])
def test_timestamp_of_another_json_type_is_refused(value: object) -> None:
    assert only_error({"name": "a", "timestamp": value})["loc"] == ("timestamp",)


@pytest.mark.parametrize("value", [True, False])
def test_timestamp_as_a_boolean_is_refused(value: bool) -> None:
    error = only_error({"name": "a", "timestamp": value})
    assert error["loc"] == ("timestamp",)
    assert "boolean" in error["msg"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_timestamp_that_is_not_a_finite_number_is_refused(value: float) -> None:
    error = only_error({"name": "a", "timestamp": value})
    assert error["loc"] == ("timestamp",)
    assert "finite" in error["msg"]


@pytest.mark.parametrize("value", ["nan", "inf", "1_700_000_000", " 17e8 ", "\u0661\u0667"])
def test_timestamp_text_is_unix_seconds_only_in_plain_ascii_digits(value: str) -> None:
    error = only_error({"name": "a", "timestamp": value})
    assert error["loc"] == ("timestamp",)


def test_timestamp_that_is_not_a_date_is_refused() -> None:
    assert only_error({"name": "a", "timestamp": "yesterday"})["loc"] == ("timestamp",)


def test_timestamp_a_little_in_the_future_is_accepted() -> None:
    soon = datetime.now(UTC) + timedelta(hours=23)
    assert EventIn(name="a", timestamp=soon).timestamp == soon


def test_timestamp_more_than_24_hours_in_the_future_is_refused() -> None:
    later = datetime.now(UTC) + timedelta(hours=24, minutes=5)
    error = only_error({"name": "a", "timestamp": later.isoformat()})
    assert error["loc"] == ("timestamp",)
    assert "in the future" in error["msg"]


def test_timestamp_more_than_24_hours_in_the_future_in_unix_seconds_is_refused() -> None:
    later = (datetime.now(UTC) + timedelta(hours=25)).timestamp()
    assert "in the future" in only_error({"name": "a", "timestamp": later})["msg"]


def test_timestamp_far_in_the_past_is_accepted() -> None:
    assert EventIn(name="a", timestamp="1999-12-31T23:59:59Z").timestamp is not None


def test_future_skew_limit_comes_from_the_validation_context() -> None:
    context = {"limits": EventLimits(max_future_skew=timedelta(minutes=5))}
    in_two_minutes = datetime.now(UTC) + timedelta(minutes=2)
    in_ten_minutes = datetime.now(UTC) + timedelta(minutes=10)

    accepted = EventIn.model_validate({"name": "a", "timestamp": in_two_minutes}, context=context)
    assert accepted.timestamp == in_two_minutes
    error = only_error({"name": "a", "timestamp": in_ten_minutes}, context)
    assert "in the future" in error["msg"]
    # Without the context the default 24 h applies, and ten minutes is fine.
    assert EventIn(name="a", timestamp=in_ten_minutes).timestamp == in_ten_minutes


# --- properties and context ---------------------------------------------------


def test_properties_default_to_an_empty_object() -> None:
    assert EventIn(name="a").properties == {}


def test_properties_keep_any_json_value() -> None:
    properties = {"s": "x", "i": 1, "f": 1.5, "b": True, "n": None, "l": [1, {"k": "v"}]}
    assert EventIn(name="a", properties=properties).properties == properties


def test_properties_at_the_default_size_limit_are_accepted() -> None:
    # {"k":"xx…"} serializes to len(value) + 8 bytes.
    properties = {"k": "x" * (32 * 1024 - 8)}
    assert EventIn(name="a", properties=properties).properties == properties


def test_properties_over_the_default_size_limit_are_refused() -> None:
    error = only_error({"name": "a", "properties": {"k": "x" * (32 * 1024 - 7)}})
    assert error["loc"] == ("properties",)
    assert f"serialized size {32 * 1024 + 1} bytes exceeds the limit of {32 * 1024}" in error["msg"]


def test_properties_size_limit_comes_from_the_validation_context() -> None:
    context = {"limits": EventLimits(max_properties_bytes=100)}
    at_limit = {"name": "a", "properties": {"k": "x" * 92}}
    over_limit = {"name": "a", "properties": {"k": "x" * 93}}

    assert EventIn.model_validate(at_limit, context=context).properties == at_limit["properties"]
    error = only_error(over_limit, context)
    assert "serialized size 101 bytes exceeds the limit of 100 bytes" in error["msg"]


def test_context_object_has_the_same_size_limit_as_properties() -> None:
    context = {"limits": EventLimits(max_properties_bytes=100)}
    error = only_error({"name": "a", "context": {"k": "x" * 93}}, context)
    assert error["loc"] == ("context",)


def test_properties_size_is_measured_in_utf8_bytes_not_characters() -> None:
    context = {"limits": EventLimits(max_properties_bytes=100)}
    # 50 two-byte characters: 50 characters, 108 bytes serialized.
    error = only_error({"name": "a", "properties": {"k": "é" * 50}}, context)
    assert "serialized size 108 bytes" in error["msg"]


def test_nul_character_in_a_property_key_is_refused() -> None:
    error = only_error({"name": "a", "properties": {"bad\x00key": 1}})
    assert error["loc"] == ("properties",)
    assert "keys must not contain the NUL character" in error["msg"]


def test_nul_character_in_a_nested_property_value_is_refused() -> None:
    error = only_error({"name": "a", "properties": {"list": [{"v": "bad\x00value"}]}})
    assert error["loc"] == ("properties",)
    assert "strings must not contain the NUL character" in error["msg"]


def test_nul_character_in_context_is_refused() -> None:
    assert only_error({"name": "a", "context": {"k": "\x00"}})["loc"] == ("context",)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_property_that_is_not_a_finite_number_is_refused(value: float) -> None:
    error = only_error({"name": "a", "properties": {"x": [value]}})
    assert "numbers must be finite" in error["msg"]


def test_property_integer_beyond_64_bits_is_refused() -> None:
    error = only_error({"name": "a", "properties": {"x": 2**70}})
    assert error["loc"] == ("properties",)
    assert "not serializable as JSON" in error["msg"]


def test_properties_nested_max_json_depth_levels_deep_are_accepted() -> None:
    properties = nested(MAX_JSON_DEPTH)
    assert EventIn(name="a", properties=properties).properties == properties


def test_properties_nested_deeper_than_max_json_depth_are_refused() -> None:
    error = only_error({"name": "a", "properties": nested(MAX_JSON_DEPTH + 1)})
    assert error["loc"] == ("properties",)
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in error["msg"]


def test_deep_nesting_through_lists_counts_too() -> None:
    value: Any = 1
    for _ in range(MAX_JSON_DEPTH):
        value = [value]
    assert "nested deeper" in only_error({"name": "a", "properties": {"l": value}})["msg"]


def test_properties_must_be_an_object() -> None:
    assert only_error({"name": "a", "properties": [1, 2]})["loc"] == ("properties",)


# --- integers in the JSON text -----------------------------------------------------


def test_the_integer_range_is_signed_and_unsigned_64_bits() -> None:
    assert (MIN_JSON_INT, MAX_JSON_INT) == (-(2**63), 2**64 - 1)


@pytest.mark.parametrize("value", [2**63 - 1, 2**63, 2**64 - 1, -(2**63), 0, -1])
def test_integers_within_64_bits_are_not_reported(value: int) -> None:
    assert out_of_range_integers(f'{{"x": {value}}}'.encode()) == []


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30, -(10**400)])
def test_integers_beyond_64_bits_are_reported_with_where_they_are(value: int) -> None:
    raw = f'{{"events": [{{"properties": {{"ok": 1, "big": [0, {value}]}}}}]}}'.encode()
    assert may_hold_large_integers(raw)
    [found] = out_of_range_integers(raw)
    assert found.path == ("events", 0, "properties", "big", 1)
    assert found.literal == str(value)
    assert "64-bit range" in found.describe()
    assert "as strings" in found.describe()


def test_a_long_literal_is_shortened_in_the_message() -> None:
    [found] = out_of_range_integers(b'{"x": ' + b"7" * 100_000 + b"}")
    assert len(found.describe()) < 200
    assert "100000 digits" in found.describe()


def test_long_digit_runs_in_strings_and_floats_are_not_integers() -> None:
    raw = b'{"id": "123456789012345678901234", "f": 123456789012345678901234.5, "e": 1e300}'
    assert may_hold_large_integers(raw)  # the fast scan only says: look closer
    assert out_of_range_integers(raw) == []


def test_bodies_without_19_digit_runs_skip_the_exact_check() -> None:
    assert not may_hold_large_integers(b'{"x": 922337203685477580, "id": "0192f0c4-8c3a"}')
    assert may_hold_large_integers(b'{"x": -9223372036854775809}')


# --- product and extra fields -------------------------------------------------


@pytest.mark.parametrize("product", ["clubs", "penn-mobile", "a_1", "0", "p" * 64])
def test_product_of_lowercase_letters_digits_dash_and_underscore_is_accepted(product: str) -> None:
    assert EventIn(name="a", product=product).product == product


@pytest.mark.parametrize(
    "product",
    [
        pytest.param("", id="empty"),
        pytest.param("Clubs", id="uppercase"),
        pytest.param("-clubs", id="leading-dash"),
        pytest.param("_clubs", id="leading-underscore"),
        pytest.param("p" * 65, id="65-chars"),
        pytest.param("penn.mobile", id="dot"),
        pytest.param("penn mobile", id="space"),
    ],
)
def test_product_outside_the_pattern_is_refused(product: str) -> None:
    error = only_error({"name": "a", "product": product})
    assert error["loc"] == ("product",)


def test_unknown_field_is_refused() -> None:
    error = only_error({"name": "a", "colour": "red"})
    assert error["loc"] == ("colour",)
    assert error["type"] == "extra_forbidden"


def test_every_invalid_field_is_reported_not_only_the_first() -> None:
    errors = errors_of({"name": "bad name", "user": "", "product": "Bad"})
    assert {error["loc"] for error in errors} == {("name",), ("user",), ("product",)}


def test_error_location_in_a_list_names_the_index_and_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        EVENT_LIST_ADAPTER.validate_python(
            [{"name": "ok"}, {"name": "bad name"}, {"name": "ok"}, {"name": "ok", "user": ""}]
        )
    locs = [error["loc"] for error in info.value.errors()]
    assert locs == [(1, "name"), (3, "user")]


def test_event_list_adapter_uses_the_validation_context() -> None:
    context = {"limits": EventLimits(max_properties_bytes=10)}
    with pytest.raises(ValidationError) as info:
        EVENT_LIST_ADAPTER.validate_python(
            [{"name": "ok"}, {"name": "ok", "properties": {"k": "long enough"}}], context=context
        )
    assert [error["loc"] for error in info.value.errors()] == [(1, "properties")]


# --- event_id and UUIDv7 --------------------------------------------------------


def test_event_id_is_optional() -> None:
    assert EventIn(name="a").event_id is None


def test_event_id_that_is_not_a_uuid_is_refused() -> None:
    assert only_error({"name": "a", "event_id": "not-a-uuid"})["loc"] == ("event_id",)


def test_uuid7_event_id_with_a_time_more_than_24_hours_ahead_is_refused() -> None:
    future_id = uuid7_at(datetime.now(UTC) + timedelta(hours=25))
    error = only_error({"name": "a", "event_id": str(future_id)})
    assert "UUIDv7" in error["msg"]
    assert "send a timestamp" in error["msg"]


def test_uuid7_event_id_at_unix_zero_is_accepted_as_1970() -> None:
    event = EventIn(name="a", event_id=uuid7_from_ms(0))
    record = to_record(event, product="clubs", received_at=RECEIVED_AT)
    assert record.timestamp == datetime(1970, 1, 1, tzinfo=UTC)


def test_uuid7_event_id_with_the_largest_48_bit_time_is_refused() -> None:
    # 2^48 - 1 ms is past year 9999: no datetime can hold it.
    error = only_error({"name": "a", "event_id": str(uuid7_from_ms(2**48 - 1))})
    assert "UUIDv7" in error["msg"]


def test_uuid7_future_check_uses_the_context_skew() -> None:
    context = {"limits": EventLimits(max_future_skew=timedelta(minutes=1))}
    future_id = uuid7_at(datetime.now(UTC) + timedelta(minutes=10))
    assert "UUIDv7" in only_error({"name": "a", "event_id": str(future_id)}, context)["msg"]
    assert EventIn(name="a", event_id=future_id).event_id == future_id


def test_future_uuid7_is_accepted_when_an_explicit_timestamp_is_sent() -> None:
    future_id = uuid7_at(datetime.now(UTC) + timedelta(days=30))
    event = EventIn(name="a", event_id=future_id, timestamp="2024-01-01T00:00:00Z")
    record = to_record(event, product="clubs", received_at=RECEIVED_AT)
    assert record.timestamp == datetime(2024, 1, 1, tzinfo=UTC)


def test_timestamp_from_uuid7_reads_the_millisecond_time() -> None:
    moment = datetime(2024, 3, 15, 9, 26, 53, 589000, tzinfo=UTC)
    assert timestamp_from_uuid7(uuid7_at(moment)) == moment


def test_timestamp_from_uuid7_ignores_the_random_bits() -> None:
    moment = datetime(2024, 3, 15, 9, 26, 53, 589000, tzinfo=UTC)
    a = uuid7_at(moment, rand_a=0, rand_b=0)
    b = uuid7_at(moment, rand_a=0xFFF, rand_b=2**62 - 1)
    assert a != b
    assert timestamp_from_uuid7(a) == timestamp_from_uuid7(b) == moment


def test_timestamp_from_uuid7_returns_none_for_a_uuid4() -> None:
    assert timestamp_from_uuid7(uuid.uuid4()) is None


def test_hand_built_uuid7_is_a_valid_rfc_uuid7() -> None:
    value = uuid7_at(RECEIVED_AT)
    assert value.version == 7
    assert value.variant == uuid.RFC_4122


# --- to_record ----------------------------------------------------------------


def test_record_gets_a_uuid4_when_the_event_has_no_id() -> None:
    event = EventIn(name="a")
    first = to_record(event, product="clubs", received_at=RECEIVED_AT)
    second = to_record(event, product="clubs", received_at=RECEIVED_AT)
    assert first.event_id.version == 4
    assert first.event_id != second.event_id


def test_record_keeps_the_event_id_it_was_sent() -> None:
    event_id = uuid.uuid4()
    record = to_record(
        EventIn(name="a", event_id=event_id), product="clubs", received_at=RECEIVED_AT
    )
    assert record.event_id == event_id


def test_record_takes_the_explicit_timestamp_first() -> None:
    event = EventIn(
        name="a", event_id=uuid7_at(datetime(2024, 2, 2, tzinfo=UTC)), timestamp=1_700_000_000
    )
    record = to_record(event, product="clubs", received_at=RECEIVED_AT)
    assert record.timestamp == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_record_without_timestamp_takes_the_time_of_its_uuid7_id() -> None:
    moment = datetime(2024, 4, 30, 23, 59, 59, 999000, tzinfo=UTC)
    event = EventIn(name="a", event_id=uuid7_at(moment))
    record = to_record(event, product="clubs", received_at=RECEIVED_AT)
    assert record.timestamp == moment


def test_record_without_timestamp_or_uuid7_takes_the_receive_time() -> None:
    event = EventIn(name="a", event_id=uuid.uuid4())
    assert to_record(event, product="clubs", received_at=RECEIVED_AT).timestamp == RECEIVED_AT
    assert to_record(EventIn(name="a"), product="clubs", received_at=RECEIVED_AT).timestamp == (
        RECEIVED_AT
    )


def test_record_carries_the_given_product_and_every_client_field() -> None:
    event = EventIn(
        name="post.click",
        user="u_1",
        timestamp="2024-01-01T00:00:00Z",
        properties={"post": 7},
        context={"app": "1.2"},
        product="clubs",
    )
    record = to_record(event, product="clubs", received_at=RECEIVED_AT)
    assert record.product == "clubs"
    assert record.name == "post.click"
    assert record.user == "u_1"
    assert record.properties == {"post": 7}
    assert record.context == {"app": "1.2"}
    assert record.received_at == RECEIVED_AT


def test_record_of_an_event_without_product_takes_the_product_given() -> None:
    record = to_record(EventIn(name="a"), product="penn-mobile", received_at=RECEIVED_AT)
    assert record.product == "penn-mobile"
    assert record.context is None
    assert record.user is None


def test_server_assigned_ids_are_valid_distinct_version_4_uuids() -> None:
    from labs_analytics.events import new_uuid4

    made = [new_uuid4() for _ in range(2000)]
    assert len(set(made)) == 2000
    for value in made[:200]:
        assert value.version == 4
        assert value.variant == uuid.RFC_4122
        assert value.is_safe is uuid.SafeUUID.unknown  # as uuid.uuid4() says
        assert uuid.UUID(str(value)) == value
        assert hash(uuid.UUID(str(value))) == hash(value)


@given(namespace=st.uuids(), name=st.text())
def test_the_fast_uuid5_is_the_standard_librarys(namespace: uuid.UUID, name: str) -> None:
    """Ids made from message ids and legacy data points must never change."""
    from labs_analytics.events import uuid5

    made, standard = uuid5(namespace, name), uuid.uuid5(namespace, name)
    assert made == standard
    assert str(made) == str(standard)
    assert hash(made) == hash(standard)
    assert made.version == 5
