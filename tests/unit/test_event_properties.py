"""Properties of the event contract, for any input a client could send.

Whatever arrives, ``IngestService.parse`` returns records or raises an
``AppError`` (a 4xx), never anything else (a 500). What it accepts can travel
through the queue unchanged and be written by the flusher: properties within
the size limit and free of NUL, timestamps in UTC and at most 24 h ahead, and
an event with an id always normalised to the same ``(timestamp, event_id)``,
which with the key's product is what the flusher deduplicates on.

``valid_events`` and ``valid_bodies`` are the strategies for what the contract
must accept; the API fuzz test posts them too.
"""

from __future__ import annotations

import json
import string
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from labs_analytics.auth.keys import ApiKey, Scope
from labs_analytics.errors import AppError
from labs_analytics.events import (
    EVENT_LIST_ADAPTER,
    MAX_USER_LENGTH,
    EventIn,
    EventRecord,
    to_record,
)
from labs_analytics.ingest.service import IngestService
from labs_analytics.queue.entries import decode_entry, encode_entry
from labs_analytics.settings import Settings

KEY = ApiKey(key_id="0123456789ab", product="clubs", scopes=frozenset({Scope.INGEST}), key_hash="x")
SETTINGS = Settings(_env_file=None)
MAX_SKEW = timedelta(seconds=SETTINGS.max_future_skew_seconds)
# parse() never touches the queue, so the service is given none.
SERVICE = IngestService(None, SETTINGS)  # type: ignore[arg-type]

PROPERTIES = settings(
    max_examples=300,
    deadline=None,
    # No explain phase: it re-runs a failure hundreds of times for little insight.
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def uuid7_from_ms(unix_ms: int, rand: int = 0) -> uuid.UUID:
    """A UUIDv7 (RFC 9562 §5.7): 48 bits of unix ms, version 7, variant 10."""
    rand_a, rand_b = rand >> 62 & 0xFFF, rand & (2**62 - 1)
    return uuid.UUID(int=(unix_ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b)


def nested(levels: int, leaf: str = "1") -> str:
    """A JSON object whose leaf sits ``levels`` objects deep."""
    return '{"a":' * levels + leaf + "}" * levels


# --- strategies: what the contract must accept -----------------------------------

NAMES = st.text(string.ascii_letters + string.digits + "_.:/-", min_size=1, max_size=128)
SAFE_CHARACTERS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
SAFE_TEXT = st.text(SAFE_CHARACTERS, max_size=50)
VALID_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | SAFE_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(SAFE_TEXT, inner, max_size=4),
    max_leaves=20,
)
# A fixed ceiling keeps generated events reproducible; it is well in the past.
LATEST = datetime(2025, 1, 1)
LATEST_UNIX = LATEST.replace(tzinfo=UTC).timestamp()
OFFSETS = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
# The earliest valid timestamp is unix 0; a day later leaves room for any offset.
EARLIEST = datetime(1970, 1, 2)
VALID_TIMESTAMPS = (
    st.datetimes(min_value=EARLIEST, max_value=LATEST, timezones=st.just(UTC) | OFFSETS).map(
        datetime.isoformat
    )
    | st.datetimes(min_value=EARLIEST, max_value=LATEST).map(datetime.isoformat)
    | st.integers(0, int(LATEST_UNIX))
    | st.floats(0, LATEST_UNIX)
)
PAST_UUID7S = st.builds(uuid7_from_ms, st.integers(0, int(LATEST_UNIX * 1000)))


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    """An event the contract must accept, as a client would send it."""
    sent: dict[str, Any] = {"name": draw(NAMES)}
    optional = {
        "event_id": (st.uuids(version=4) | PAST_UUID7S).map(str),
        "user": st.text(SAFE_CHARACTERS, min_size=1, max_size=MAX_USER_LENGTH),
        "timestamp": VALID_TIMESTAMPS,
        "properties": st.dictionaries(SAFE_TEXT, VALID_JSON, max_size=5),
        "context": st.none() | st.dictionaries(SAFE_TEXT, VALID_JSON, max_size=3),
        "product": st.just(KEY.product),
    }
    for field, values in optional.items():
        if draw(st.booleans()):
            sent[field] = draw(values)
    return sent


def valid_bodies() -> st.SearchStrategy[dict[str, Any]]:
    """One valid event, or a batch of them."""
    return valid_events() | st.fixed_dictionaries(
        {"events": st.lists(valid_events(), min_size=1, max_size=3)},
        optional={"sent_at": VALID_TIMESTAMPS},
    )


# --- strategies: anything JSON-ish -----------------------------------------------

ODD_STRINGS = st.sampled_from(
    [
        "",
        "\x00",
        "a\x00b",
        "\u200f",  # right-to-left mark
        "\u202e\u2066abc\u2069",  # bidi override and isolate
        "\ufeff",
        "\U0001f389\u200d\U0001f525",  # emoji joined by a zero-width joiner
        "\U0010ffff",
        "\ud800",  # lone surrogates: a Python str can hold them, UTF-8 cannot
        "\udfff",
        "nan",
        "-Infinity",
        "1e400",
        " 17e8 ",
        "1700000000",
        "2024-02-29T12:00:00Z",
        "2024-02-29T12:00:00",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "9999-12-31T23:59:59.999999Z",
        "post.click",
        "0192f0c4-8c3a-7cc2-9a1e-3f6d2b1c4e5a",
    ]
)
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40) | ODD_STRINGS
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: far beyond 64 bits
    | st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**30, -(10**400)])
    | st.floats()  # nan, ±inf, -0.0, subnormals
    | ANY_TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=25,
)
# Around the 24 h limit, read at draw time: the boundary moves with the clock.
NEAR_NOW_SECONDS = st.floats(-2 * 86400, 2 * 86400).map(lambda offset: time.time() + offset)
EVENT_IDS = (
    st.uuids()  # any version, v7 among them with random times
    | st.builds(uuid7_from_ms, st.integers(0, 2**48 - 1), st.integers(0, 2**74 - 1))
    | NEAR_NOW_SECONDS.map(lambda seconds: uuid7_from_ms(int(seconds * 1000)))
).map(str)
ANY_EVENT_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "name": NAMES | JSON_VALUES,
    "event_id": EVENT_IDS | JSON_VALUES,
    "user": ANY_TEXT | JSON_VALUES,
    "timestamp": st.integers(-(10**12), 10**12)
    | st.floats()
    | NEAR_NOW_SECONDS
    | NEAR_NOW_SECONDS.map(lambda seconds: datetime.fromtimestamp(seconds, UTC).isoformat())
    | st.datetimes(timezones=st.none() | st.just(UTC) | OFFSETS).map(datetime.isoformat)
    | JSON_VALUES,
    "properties": st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=4) | JSON_VALUES,
    "context": st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=4) | JSON_VALUES,
    "product": st.sampled_from(["clubs", "other", "Clubs", ""]) | JSON_VALUES,
    "props": JSON_VALUES,  # a typo of a field: refused
}


@st.composite
def nearly_valid_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one field replaced by anything: the edge of the contract."""
    sent = draw(valid_events())
    field = draw(st.sampled_from(sorted(ANY_EVENT_FIELDS)))
    sent[field] = draw(ANY_EVENT_FIELDS[field])
    return sent


# Random JSON rarely looks like an event; event-shaped objects whose fields may
# be anything reach the field-by-field refusals (and acceptances).
ANY_EVENTS = st.fixed_dictionaries({}, optional=ANY_EVENT_FIELDS) | nearly_valid_events()
ANY_BODIES = (
    JSON_VALUES
    | ANY_EVENTS
    | st.fixed_dictionaries(
        {"events": st.lists(ANY_EVENTS, max_size=4) | JSON_VALUES},
        optional={"sent_at": ANY_EVENT_FIELDS["timestamp"], "extra": JSON_VALUES},
    )
)


def to_json_bytes(value: Any, *, ascii_only: bool) -> bytes:
    # The stdlib writes what orjson would not: NaN, Infinity, integers of any
    # size, lone surrogates (as escapes, or raw and so as invalid UTF-8).
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["json", "utf-8", "spliced", "duplicate", "deep", "binary"]))
    if kind == "binary":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        levels = draw(st.integers(1, 5000))
        shape = draw(st.sampled_from(["list", "object", "properties", "context"]))
        if shape == "list":
            return b"[" * levels + b"]" * levels
        if shape == "object":
            return nested(levels).encode()
        return f'{{"name":"deep","{shape}":{nested(levels)}}}'.encode()
    if kind == "duplicate":
        field = json.dumps(draw(st.sampled_from(sorted(ANY_EVENT_FIELDS))))
        first, second = json.dumps(draw(JSON_VALUES)), json.dumps(draw(JSON_VALUES))
        return f'{{"name":"dup",{field}:{first},{field}:{second}}}'.encode()
    raw = to_json_bytes(draw(ANY_BODIES), ascii_only=kind != "utf-8")
    if kind == "spliced":
        # Bytes that are never valid UTF-8 (a stray continuation, an overlong
        # form, an encoded surrogate, a truncated sequence) or a raw NUL.
        # Where, as a share of the length: a body holding a time read from the clock
        # has another length when hypothesis replays it, and a draw bounded by
        # that length would then differ (FlakyStrategyDefinition).
        at = round(draw(st.floats(0, 1)) * len(raw))
        junk = draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x00"]))
        raw = raw[:at] + junk + raw[at:]
    return raw


# --- what every accepted event must satisfy --------------------------------------


def events_of(body: Any) -> Any:
    """What the service validates as the list of events: a batch's events, or the body."""
    return body["events"] if isinstance(body, dict) and "events" in body else [body]


def contains_nul(value: Any) -> bool:
    # Not a search of the serialized text: a literal backslash-u0000 is fine.
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(contains_nul(item) for item in value)
    return False


def assert_storable(records: list[EventRecord]) -> None:
    """What the queue and PostgreSQL need of an accepted event."""
    now = datetime.now(UTC)
    for record in records:
        assert record.product == KEY.product
        assert record.timestamp.utcoffset() == timedelta(0)
        assert record.timestamp <= now + MAX_SKEW
        assert record.received_at.utcoffset() == timedelta(0)
        for document in (record.properties, record.context):
            if document is not None:
                serialized = orjson.dumps(document)
                assert len(serialized) <= SETTINGS.max_properties_bytes
                assert not contains_nul(document)
        assert record.user is None or "\x00" not in record.user
    assert decode_entry(encode_entry(records)) == records


def parse_or_refuse(raw: bytes) -> list[EventRecord] | None:
    """The records, or None when refused, which must be with a 4xx ``AppError``."""
    try:
        records = SERVICE.parse(raw, KEY)
    except AppError as exc:
        assert_client_error(exc)
        return None
    event("accepted")
    return records


def assert_client_error(exc: AppError) -> None:
    assert 400 <= exc.status_code < 500
    event(f"refused: {exc.code}")


# --- arbitrary input --------------------------------------------------------------


@PROPERTIES
@given(body=ANY_BODIES)
def test_any_python_value_is_validated_or_refused_never_crashes(body: Any) -> None:
    try:
        events = EVENT_LIST_ADAPTER.validate_python(events_of(body))
    except ValidationError:
        event("refused")
        return
    event("accepted")
    received_at = datetime.now(UTC)
    assert_storable([to_record(e, product=KEY.product, received_at=received_at) for e in events])


@PROPERTIES
@given(body=ANY_BODIES, ascii_only=st.booleans())
def test_any_json_body_is_parsed_or_refused_with_an_app_error(body: Any, ascii_only: bool) -> None:
    records = parse_or_refuse(to_json_bytes(body, ascii_only=ascii_only))
    if records is not None:
        assert_storable(records)


@PROPERTIES
@given(raw=raw_bodies())
def test_any_bytes_are_parsed_or_refused_with_an_app_error(raw: bytes) -> None:
    records = parse_or_refuse(raw)
    if records is not None:
        assert_storable(records)


@pytest.mark.parametrize("levels", [32, 33, 1000, 1023, 1024, 1025, 5000])
@pytest.mark.parametrize("field", ["properties", "context"])
def test_json_nested_past_the_limit_is_refused_with_an_app_error(field: str, levels: int) -> None:
    raw = f'{{"name":"deep","{field}":{nested(levels)}}}'.encode()
    if levels <= 32:
        assert_storable(SERVICE.parse(raw, KEY))
    else:
        with pytest.raises(AppError):
            SERVICE.parse(raw, KEY)


@pytest.mark.parametrize("levels", [31, 32, 1000, 5000])
@pytest.mark.parametrize("container", [dict, list])
def test_python_objects_nested_past_the_limit_are_refused(container: type, levels: int) -> None:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value} if container is dict else [value]
    sent = {"name": "deep", "properties": {"a": value}}
    if levels < 32:
        EventIn.model_validate(sent)
    else:
        with pytest.raises(ValidationError, match="nested deeper than"):
            EventIn.model_validate(sent)


# --- valid input ------------------------------------------------------------------


def expected_timestamp(value: str | float) -> datetime:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC)
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@PROPERTIES
@given(body=valid_bodies())
def test_valid_events_are_always_accepted_as_sent(body: dict[str, Any]) -> None:
    sent_events = events_of(body)
    records = SERVICE.parse(orjson.dumps(body), KEY)

    assert len(records) == len(sent_events)
    for sent, record in zip(sent_events, records, strict=True):
        assert record.name == sent["name"]
        assert record.user == sent.get("user")
        assert record.properties == sent.get("properties", {})
        assert record.context == sent.get("context")
        if "event_id" in sent:
            assert record.event_id == uuid.UUID(sent["event_id"])
        if "timestamp" in sent:
            assert record.timestamp == expected_timestamp(sent["timestamp"])
    assert_storable(records)


@PROPERTIES
@given(sent=valid_events())
def test_valid_python_events_pass_the_model(sent: dict[str, Any]) -> None:
    model = EventIn.model_validate(sent)
    received_at = datetime.now(UTC)
    assert_storable([to_record(model, product=KEY.product, received_at=received_at)])


@PROPERTIES
@given(
    event_id=EVENT_IDS,
    timestamp=st.none() | ANY_EVENT_FIELDS["timestamp"],
)
def test_an_event_id_always_yields_the_same_timestamp(event_id: str, timestamp: Any) -> None:
    # A retry must land on the same (timestamp, event_id), or dedup misses it;
    # the retry arrives later, so the receive times differ by a day here.
    sent: dict[str, Any] = {"name": "post.click", "event_id": event_id}
    if timestamp is not None:
        sent["timestamp"] = timestamp
    try:
        model = EventIn.model_validate(sent)
    except ValidationError:
        event("refused")
        return
    first, retry = (
        to_record(model, product=KEY.product, received_at=datetime(2024, 5, day, tzinfo=UTC))
        for day in (1, 2)
    )
    assert first.event_id == retry.event_id == uuid.UUID(event_id)
    if timestamp is None and uuid.UUID(event_id).version != 7:
        event("no time in the event: the receive time")
        return
    event("time from the event")
    assert first.timestamp == retry.timestamp
    assert EventIn.model_validate(sent).timestamp == model.timestamp


def test_without_a_timestamp_or_uuid7_the_receive_time_is_used() -> None:
    # The documented fallback, and the one case a retry can escape dedup:
    # clients that retry must send a timestamp or a UUIDv7.
    model = EventIn.model_validate({"name": "post.click", "event_id": str(uuid.uuid4())})
    received = [datetime(2024, 5, day, tzinfo=UTC) for day in (1, 2)]
    records = [to_record(model, product=KEY.product, received_at=at) for at in received]
    assert [record.timestamp for record in records] == received
