"""``GET /v1/events``: a product's raw events, newest first, a page at a time.

The filters are those of ``POST /v1/query`` written as query parameters
(``EventFilters``, which the export shares)::

    ?name=club.view&name=club.apply          any of these names
    &user=u_1                                any of these users
    &filter=["gte","prop:status_code",[500]] repeatable, AND; parsed by parse_filter
    &date_range=7d | &from=2026-11-01&to=2026-11-07 (dates, end included, or RFC 3339)
    &timezone=America/New_York&limit=100&cursor=…

Pages are keyset pages on ``(timestamp, event_id)``, descending: a page is the
events strictly below the cursor (the last row of the page before). Events
that arrive meanwhile with newer timestamps sort above the cursor, so they
never shift a page; a late event (older than the cursor when it lands) is
still met further down. The cursor also carries the range as resolved for the
first page, so ``7d`` means the same seven days on every page even across
midnight.

A cursor is base64url of ``(version, timestamp, event_id, range start, range
end)`` and a 12-byte BLAKE2b check over those and the request's other
parameters. A cursor changed by hand, cut short, or sent with other filters
or another product is a 422. The check is integrity, not secrecy: there is no
server secret to sign with, and none is needed, because a cursor only names a
position; the product always comes from the key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import asyncpg
import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from labs_analytics.auth.keys import ApiKey
from labs_analytics.errors import AppError
from labs_analytics.read.cursor import Position, decode_cursor, encode_cursor
from labs_analytics.read.dates import Interval, resolve
from labs_analytics.read.fields import parse_field
from labs_analytics.read.request import (
    MAX_FILTER_VALUES,
    MAX_FILTERS,
    MAX_VALUE_LENGTH,
    Filter,
    check_date_range,
    check_timezone,
    parse_filter,
)
from labs_analytics.read.service import ReadService
from labs_analytics.read.sql import SqlBuilder
from labs_analytics_client.contract import MAX_USER_LENGTH

MAX_LIMIT = 1_000
DEFAULT_RANGE = "30d"
MAX_FILTER_TEXT = 200_000  # a filter of 100 values of 1,024 characters, JSON-encoded
_FAR_END = "9999-01-01T00:00:00+00:00"
_EPOCH_TEXT = "1970-01-01T00:00:00+00:00"

Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_VALUE_LENGTH)]
User = Annotated[str, StringConstraints(min_length=1, max_length=MAX_USER_LENGTH)]
FilterText = Annotated[str, StringConstraints(min_length=2, max_length=MAX_FILTER_TEXT)]


class InvalidParameter(AppError):
    """A query parameter the model alone could not judge (a cursor, a range): a 422 naming it.

    The same shape as the framework's validation errors, so a client reads one kind of 422.
    """

    status_code = 422
    code = "invalid_request"

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(
            "the request is invalid",
            details=[{"field": f"query.{parameter}", "message": message, "type": "value_error"}],
        )


def _no_nul(values: list[str], what: str) -> list[str]:
    if any("\x00" in value for value in values):
        raise ValueError(f"{what} may not contain NUL")
    return values


class EventFilters(BaseModel):
    """Which events: the filters of ``/v1/query`` as query parameters (events and export).

    Fields are checked in the order written: the time zone before the dates it resolves.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    timezone: str = Field(
        default="UTC",
        max_length=64,
        description="An IANA time zone: local days for `date_range`, `from` and `to`.",
    )
    date_range: str | None = Field(
        default=None,
        max_length=64,
        description="`today`, `yesterday`, `7d`, `30d`, `90d` (any `Nd`), `month`, `year`, "
        "`all`. Default `30d`; not together with `from`/`to`.",
    )
    from_: str | None = Field(
        default=None,
        alias="from",
        max_length=64,
        description="The first day (`YYYY-MM-DD`, local) or instant (RFC 3339, with an "
        "offset). Alone: up to the end of `all`.",
    )
    to: str | None = Field(
        default=None,
        max_length=64,
        description="The last day, included (`YYYY-MM-DD`), or the end instant, excluded "
        "(RFC 3339). Alone: from 1970.",
    )
    name: list[Name] = Field(
        default_factory=list,
        max_length=MAX_FILTER_VALUES,
        description="Events with any of these names (repeat the parameter).",
    )
    user: list[User] = Field(
        default_factory=list,
        max_length=MAX_FILTER_VALUES,
        description="Events of any of these users (repeat the parameter).",
    )
    filter: list[FilterText] = Field(
        default_factory=list,
        max_length=MAX_FILTERS,
        description='A JSON filter as in /v1/query, e.g. `["gte","prop:status_code",[500]]`; '
        "repeat the parameter: all must hold.",
    )
    product: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Another product's name: `admin` keys only.",
    )

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("date_range")
    @classmethod
    def _date_range(cls, value: str | None) -> str | None:
        if value is not None:
            check_date_range(value)
        return value

    @field_validator("from_")
    @classmethod
    def _from(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if info.data.get("date_range") is not None:
            raise ValueError("give date_range or from/to, not both")
        if value.startswith("9999"):
            raise ValueError("from must be before the year 9999")
        check_date_range([value, _FAR_END])
        return value

    @field_validator("to")
    @classmethod
    def _to(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if info.data.get("date_range") is not None:
            raise ValueError("give date_range or from/to, not both")
        check_date_range([_EPOCH_TEXT, value])
        start = info.data.get("from_")
        if start is not None:
            try:
                check_date_range([start, value])
            except ValueError:
                raise ValueError("to must be after from") from None
        return value

    @field_validator("name")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return _no_nul(value, "a name")

    @field_validator("user")
    @classmethod
    def _users(cls, value: list[str]) -> list[str]:
        return _no_nul(value, "a user")

    @field_validator("filter")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        normalized = []
        for text in value:
            try:
                raw = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise ValueError(
                    f'a filter is JSON, e.g. ["is", "name", ["signup"]]: {text[:80]!r}'
                ) from None
            parse_filter(raw)
            normalized.append(orjson.dumps(raw).decode())  # one spelling for the cursor check
        return normalized

    # --- parsed views

    def filters(self) -> list[Filter]:
        """Every condition, names and users first: all must hold."""
        parsed = []
        if self.name:
            parsed.append(Filter("is", parse_field("name"), tuple(self.name)))
        if self.user:
            parsed.append(Filter("is", parse_field("user"), tuple(self.user)))
        return parsed + [parse_filter(orjson.loads(text)) for text in self.filter]

    def interval(self, now: dt.datetime) -> Interval:
        """The range as ``[start, end)``, resolved in the request's zone at ``now``.

        The model checked each bound's shape in UTC; in the request's zone a
        date may still fall before 1970 or past 9999: a 422 naming it.
        """
        zone = ZoneInfo(self.timezone)
        if self.from_ is None and self.to is None:
            return _resolved("date_range", self.date_range or DEFAULT_RANGE, zone, now)
        if self.from_ is not None:
            _resolved("from", [self.from_, _FAR_END], zone, now)
        if self.to is not None:
            _resolved("to", [_EPOCH_TEXT, self.to], zone, now)
        start = self.from_ or _EPOCH_TEXT
        end = self.to or resolve("all", zone, now).end.isoformat()
        return _resolved("to" if self.to is not None else "from", [start, end], zone, now)

    def fingerprint(self, product: str) -> bytes:
        """What a cursor is bound to: the product and every parameter that picks events."""
        parts = [
            product,
            self.name,
            self.user,
            self.filter,
            self.date_range,
            self.from_,
            self.to,
            self.timezone,
        ]
        return hashlib.blake2b(orjson.dumps(parts), digest_size=16).digest()


def _resolved(parameter: str, value: str | list[str], zone: ZoneInfo, now: dt.datetime) -> Interval:
    try:
        interval = resolve(value, zone, now)
        for bound in (interval.start, interval.end):
            bound.astimezone(dt.UTC)  # past year 9999 in UTC: not a timestamp PostgreSQL takes
    except OverflowError:
        raise InvalidParameter(parameter, "the range must end before the year 10000") from None
    except ValueError as exc:
        raise InvalidParameter(parameter, str(exc)) from None
    return interval


class EventsParams(EventFilters):
    """The query parameters of ``GET /v1/events``."""

    limit: int = Field(default=100, ge=1, le=MAX_LIMIT, description="Events per page.")
    cursor: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="`next_cursor` of the page before, with the same other parameters.",
    )


# --- SQL


def event_conditions(
    builder: SqlBuilder, product: str, interval: Interval, filters: list[Filter]
) -> list[str]:
    """The product, the range and every filter, as conditions of one WHERE (AND)."""
    return [
        f"product = {builder.param(product)}",
        f'"timestamp" >= {builder.param(interval.start)}',
        f'"timestamp" < {builder.param(interval.end)}',
        *(builder.condition(flt) for flt in filters),
    ]


def page_statement(
    product: str,
    interval: Interval,
    filters: list[Filter],
    after: Position | None,
    limit: int,
) -> tuple[str, list[Any]]:
    """One page, newest first, and one row more: whether there is a next page."""
    builder = SqlBuilder()
    where = event_conditions(builder, product, interval, filters)
    if after is not None:
        timestamp, event_id = builder.param(after.timestamp), builder.param(after.event_id)
        # The first test lets an index on the timestamp bound the scan; the second
        # is the keyset itself ((timestamp, event_id) is unique within a product).
        where += [
            f'"timestamp" <= {timestamp}',
            f'("timestamp", event_id) < ({timestamp}, {event_id})',
        ]
    sql = (
        'SELECT event_id, "timestamp", name, user_id, properties::text AS properties, '
        "context::text AS context, received_at, corrected_timestamp, clock_skew_ms FROM events "
        f"WHERE {' AND '.join(where)} "
        f'ORDER BY "timestamp" DESC, event_id DESC LIMIT {builder.param(limit + 1)}'
    )
    return sql, builder.args


def event_record(row: asyncpg.Record) -> dict[str, Any]:
    """A stored event as the read API shows it; its JSON exactly as stored (a Fragment)."""
    context = row["context"]
    return {
        "event_id": str(row["event_id"]),
        "timestamp": row["timestamp"],
        "name": row["name"],
        "user": row["user_id"],
        "properties": orjson.Fragment(row["properties"]),
        "context": None if context is None else orjson.Fragment(context),
    }


async def list_events(
    reads: ReadService, key: ApiKey, params: EventsParams, now: dt.datetime
) -> bytes:
    """A page of ``GET /v1/events``, as JSON: the events' own JSON is passed through as stored."""
    reads.admit(key)
    product = reads.product_for(key, params.product)
    started = time.monotonic()
    fingerprint = params.fingerprint(product)
    after: Position | None = None
    if params.cursor is None:
        interval = params.interval(now)
    else:
        try:
            after, interval = decode_cursor(params.cursor, fingerprint)
        except ValueError as exc:
            raise InvalidParameter("cursor", str(exc)) from None
    sql, args = page_statement(product, interval, params.filters(), after, params.limit)
    rows = await reads.fetch(sql, args)
    page = rows[: params.limit]
    next_cursor = None
    if len(rows) > params.limit:
        last = page[-1]
        next_cursor = encode_cursor(
            Position(last["timestamp"], last["event_id"]), interval, fingerprint
        )
    zone = ZoneInfo(params.timezone)
    body = {
        "events": [
            event_record(row)
            | {
                "received_at": row["received_at"],
                "corrected_timestamp": row["corrected_timestamp"],
                "clock_skew_ms": row["clock_skew_ms"],
            }
            for row in page
        ],
        "next_cursor": next_cursor,
        "meta": {
            "date_range": [
                interval.start.astimezone(zone).isoformat(),
                interval.end.astimezone(zone).isoformat(),
            ],
            "limit": params.limit,
            "took_ms": round((time.monotonic() - started) * 1000, 1),
        },
    }
    return orjson.dumps(body, option=orjson.OPT_UTC_Z)
