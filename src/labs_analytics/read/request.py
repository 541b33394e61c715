"""``POST /v1/query``: the request, checked field by field (a mistake is a 422 naming it).

::

    {"metrics": ["events", "users", "p95:prop:duration_ms"],
     "date_range": "30d", "timezone": "America/New_York",
     "dimensions": ["time:day", "prop:route"],
     "filters": [["is", "name", ["http.request"]], ["gte", "prop:status_code", [500]]],
     "order_by": [["events", "desc"]], "limit": 100, "offset": 0}

A metric over a property may also be written ``p95:duration_ms`` (``prop:``
is assumed).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from labs_analytics.read.dates import Granularity, Interval, resolve
from labs_analytics.read.fields import FieldRef, parse_field

MAX_METRICS = 10
MAX_DIMENSIONS = 4
MAX_FILTERS = 20
MAX_FILTER_VALUES = 100
MAX_VALUE_LENGTH = 1024
MAX_LIMIT = 10_000
MAX_OFFSET = 1_000_000

# The shapes the OpenAPI document gives (the validators below say what is wrong).
_KEY = r"[^.\x00-\x1f]{1,128}(\.[^.\x00-\x1f]{1,128}){0,7}"
FIELD_PATTERN = rf"^(name|user|(prop|context):{_KEY})$"
METRIC_PATTERN = rf"^(events|users|(sum|avg|min|max|p50|p90|p95|p99):((prop|context):)?{_KEY})$"
DIMENSION_PATTERN = rf"^(time:(hour|day|week|month)|name|user|(prop|context):{_KEY})$"

Aggregate = Literal["sum", "avg", "min", "max", "p50", "p90", "p95", "p99"]
AGGREGATES: tuple[str, ...] = ("sum", "avg", "min", "max", "p50", "p90", "p95", "p99")
Operator = Literal["is", "is_not", "contains", "gt", "gte", "lt", "lte", "exists"]
ORDERED_OPERATORS = ("gt", "gte", "lt", "lte")
FilterValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Metric:
    text: str
    kind: Literal["events", "users"] | Aggregate
    field: FieldRef | None = None  # the numeric property of an aggregate


@dataclass(frozen=True, slots=True)
class Dimension:
    text: str
    granularity: Granularity | None = None  # a time dimension
    field: FieldRef | None = None


@dataclass(frozen=True, slots=True)
class Filter:
    operator: Operator
    field: FieldRef
    values: tuple[FilterValue, ...]


def parse_metric(text: str) -> Metric:
    if text in ("events", "users"):
        return Metric(text, text)  # type: ignore[arg-type]
    aggregate, separator, rest = text.partition(":")
    if not separator or aggregate not in AGGREGATES:
        raise ValueError(
            f"unknown metric {text[:80]!r}: use events, users, or "
            f"{'|'.join(AGGREGATES)}:PROPERTY (e.g. p95:duration_ms)"
        )
    field = parse_field(rest if rest.startswith(("prop:", "context:")) else f"prop:{rest}")
    return Metric(text, aggregate, field)  # type: ignore[arg-type]


def parse_dimension(text: str) -> Dimension:
    if text.startswith("time:"):
        granularity = text.removeprefix("time:")
        if granularity not in ("hour", "day", "week", "month"):
            raise ValueError("a time dimension is time:hour, time:day, time:week or time:month")
        return Dimension(text, granularity=granularity)  # type: ignore[arg-type]
    return Dimension(text, field=parse_field(text))


def _check_value(value: Any) -> FilterValue:
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("filter values must be finite numbers")
        return value
    if isinstance(value, str):
        if len(value) > MAX_VALUE_LENGTH:
            raise ValueError(f"a filter value has at most {MAX_VALUE_LENGTH} characters")
        if "\x00" in value:
            raise ValueError("a filter value may not contain NUL")
        return value
    raise ValueError("filter values are strings, numbers or booleans")


def parse_filter(raw: Any) -> Filter:
    if not isinstance(raw, list) or len(raw) not in (2, 3):
        raise ValueError('a filter is [operator, field, [values]], e.g. ["is", "name", ["signup"]]')
    operator, field_text, *rest = raw
    if operator not in ("is", "is_not", "contains", "gt", "gte", "lt", "lte", "exists"):
        raise ValueError(
            f"unknown operator {str(operator)[:40]!r}: use is, is_not, contains, gt, gte, lt, "
            "lte or exists"
        )
    if not isinstance(field_text, str):
        raise ValueError("a filter's field is a string")
    field = parse_field(field_text)
    values = rest[0] if rest else []
    if not isinstance(values, list):
        raise ValueError("a filter's values are a list")
    if len(values) > MAX_FILTER_VALUES:
        raise ValueError(f"a filter has at most {MAX_FILTER_VALUES} values")
    checked = tuple(_check_value(value) for value in values)
    if operator == "exists":
        if checked:
            raise ValueError("exists takes no values")
    elif not checked:
        raise ValueError(f"{operator} needs at least one value")
    if operator in ORDERED_OPERATORS:
        if len(checked) != 1:
            raise ValueError(f"{operator} takes exactly one value")
        if field.is_json and not all(_is_number(value) for value in checked):
            raise ValueError(f"{operator} on a property compares numbers")
    if operator == "contains" and not all(isinstance(value, str) for value in checked):
        raise ValueError("contains takes strings")
    return Filter(operator, field, checked)


def _is_number(value: FilterValue) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class QueryRequest(BaseModel):
    """The body of ``POST /v1/query``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metrics: Annotated[
        list[Annotated[str, Field(json_schema_extra={"pattern": METRIC_PATTERN})]],
        Field(min_length=1, max_length=MAX_METRICS),
    ] = Field(
        description="`events`, `users` (exact distinct users), or `sum|avg|min|max|p50|p90|"
        "p95|p99:PROPERTY` over a numeric property.",
        examples=[["events", "users", "p95:duration_ms"]],
    )
    date_range: str | list[str] = Field(
        default="30d",
        description="`today`, `yesterday`, `7d`, `30d`, `90d` (any `Nd`), `month`, `year`, "
        "`all`, or `[start, end]` as dates (the end day included) or RFC 3339 instants.",
    )
    timezone: str = Field(default="UTC", description="An IANA time zone, e.g. America/New_York.")
    dimensions: Annotated[
        list[Annotated[str, Field(json_schema_extra={"pattern": DIMENSION_PATTERN})]],
        Field(max_length=MAX_DIMENSIONS),
    ] = Field(
        default_factory=list,
        description="`time:hour|day|week|month`, `name`, `user`, `prop:KEY`, `context:KEY` "
        "(dotted keys reach into nested objects).",
    )
    filters: Annotated[list[Any], Field(max_length=MAX_FILTERS)] = Field(
        default_factory=list,
        description="`[operator, field, [values]]`, all combined with AND; operators `is`, "
        "`is_not`, `contains`, `gt`, `gte`, `lt`, `lte`, `exists`.",
    )
    order_by: list[tuple[str, Literal["asc", "desc"]]] = Field(
        default_factory=list,
        description="`[[metric or dimension, asc|desc], …]`; default: time ascending, else "
        "the first metric descending.",
    )
    limit: int = Field(default=100, ge=1, le=MAX_LIMIT)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    product: str | None = Field(
        default=None, description="Another product's name: `admin` keys only."
    )

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_metric(text)
        if len(set(value)) != len(value):
            raise ValueError("each metric at most once")
        return value

    @field_validator("dimensions")
    @classmethod
    def _dimensions(cls, value: list[str]) -> list[str]:
        parsed = [parse_dimension(text) for text in value]
        if sum(dimension.granularity is not None for dimension in parsed) > 1:
            raise ValueError("at most one time dimension")
        if len(set(value)) != len(value):
            raise ValueError("each dimension at most once")
        return value

    @field_validator("filters")
    @classmethod
    def _filters(cls, value: list[Any]) -> list[Any]:
        for raw in value:
            parse_filter(raw)
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("date_range")
    @classmethod
    def _date_range(cls, value: str | list[str]) -> str | list[str]:
        return check_date_range(value)

    @model_validator(mode="after")
    def _order_by(self) -> QueryRequest:
        known = set(self.metrics) | set(self.dimensions)
        for name, _direction in self.order_by:
            if name not in known:
                raise ValueError(f"order_by {name[:80]!r} is neither a metric nor a dimension")
        return self

    # --- parsed views, for the compiler

    def parsed_metrics(self) -> list[Metric]:
        return [parse_metric(text) for text in self.metrics]

    def parsed_dimensions(self) -> list[Dimension]:
        return [parse_dimension(text) for text in self.dimensions]

    def parsed_filters(self) -> list[Filter]:
        return [parse_filter(raw) for raw in self.filters]

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def interval(self, now: dt.datetime) -> Interval:
        return resolve(self.date_range, self.zone(), now)


_ZONES: frozenset[str] | None = None


def _zones() -> frozenset[str]:
    global _ZONES
    if _ZONES is None:
        # "localtime" is the host's own zone file, not an IANA name: PostgreSQL refuses it.
        _ZONES = (frozenset(available_timezones()) - {"localtime"}) | {"UTC"}
    return _ZONES


def check_timezone(value: str) -> str:
    """An IANA time zone name, as every read request takes one."""
    if value not in _zones():
        raise ValueError(f"unknown time zone {value[:60]!r}: use an IANA name")
    return value


def check_date_range(value: str | list[str]) -> str | list[str]:
    """A date range's shape, checked now (resolved again, in the request's zone, when run)."""
    try:
        interval = resolve(value, ZoneInfo("UTC"), dt.datetime.now(dt.UTC))
        # Bounds past year 9999 in UTC cannot be sent to the database: a 422, not a 500.
        for bound in (interval.start, interval.end):
            bound.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("date_range must end before the year 10000") from None
    return value


def check_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name[:60]!r}") from None
