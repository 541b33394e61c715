"""The read API's records: a user's summary, raw events, exports.

``GET /v1/users/{user}/summary``, ``GET /v1/events``, ``GET /v1/export``.
Keys and products as for ``/v1/query``: a ``read`` (or ``admin``) key reads
its own product, an ``admin`` key may name another (``product``); the key is
checked before the parameters, so a stranger learns nothing from a 422. The
definitions (streaks, weekdays, cursors, formats) are in ``read/summary.py``,
``read/events.py`` and ``read/export.py``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.convertors import Convertor, register_url_convertor
from starlette.types import Receive, Scope, Send

from labs_analytics.api.dependencies import State
from labs_analytics.api.errors import ErrorBody
from labs_analytics.api.read import ReadKey
from labs_analytics.read.events import EventsParams, list_events
from labs_analytics.read.export import MEDIA_TYPES, Export, ExportParams, accepts_gzip, open_export
from labs_analytics.read.summary import SummaryParams, user_summary
from labs_analytics_client.contract import MAX_USER_LENGTH

router = APIRouter(tags=["read"])


class UserIdConvertor(Convertor[str]):
    """A path parameter that is any text: a user id may hold slashes and line breaks.

    (Starlette's ``path`` convertor is ``.*``, which stops at a line break: such a
    user's summary would be a 404.)
    """

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return quote(value, safe="")


register_url_convertor("user_id", UserIdConvertor())

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, unknown or revoked API key."},
    403: {
        "model": ErrorBody,
        "description": "The key lacks the `read` scope, or names another product without `admin`.",
    },
    422: {
        "model": ErrorBody,
        "description": "A parameter is invalid: `details` names it (`query.cursor`, …).",
    },
    429: {
        "model": ErrorBody,
        "description": "The key started more reads per second than allowed.",
        "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
    },
    503: {
        "model": ErrorBody,
        "description": "`query_timeout`: a statement ran past the limit and was cancelled; "
        "`read_busy`: every read connection (or export slot) is in use; "
        "`database_unavailable`.",
    },
}
_SECURITY: dict[str, Any] = {"security": [{"HTTPBearer": []}]}


# --- GET /v1/users/{user}/summary


class NameCount(BaseModel):
    name: str
    events: int


class ValueCount(BaseModel):
    value: str = Field(description="As text: strings bare; numbers, booleans, objects as JSON.")
    events: int


class WeekdayCount(BaseModel):
    weekday: int = Field(ge=0, le=6, description="ISO: Monday = 0 … Sunday = 6 (local).")
    name: str = Field(examples=["Monday"])
    events: int


class HourCount(BaseModel):
    hour: int = Field(ge=0, le=23, description="The local wall-clock hour.")
    events: int


class Streak(BaseModel):
    days: int = Field(description="Consecutive local days with at least one event.")
    start: dt.date
    end: dt.date = Field(description="The last day of the run, included.")


class UserSummary(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    user: str
    product: str
    timezone: str
    from_: dt.date = Field(alias="from", description="The first local day.")
    to: dt.date = Field(description="The last local day, included.")
    date_range: list[str] = Field(description="The range as resolved: [start, end) instants.")
    total_events: int
    active_days: int = Field(description="Local days with at least one event.")
    first_seen: dt.datetime | None = Field(description="The earliest event (local offset).")
    last_seen: dt.datetime | None = Field(description="The latest event (local offset).")
    events_by_name: list[NameCount] = Field(
        description="Most events first, ties by name (byte order); at most 1,000 names."
    )
    top: dict[str, list[ValueCount]] = Field(
        description="Per `top` field, its 10 most frequent values; ties by value (byte order)."
    )
    events_by_weekday: list[int] = Field(description="7 counts, Monday first (local).")
    events_by_hour: list[int] = Field(description="24 counts, local hours 0 to 23.")
    most_active_weekday: WeekdayCount | None = Field(description="Ties: the earliest weekday.")
    most_active_hour: HourCount | None = Field(description="Ties: the earliest hour.")
    longest_streak: Streak | None = Field(description="Ties: the earliest run.")
    source: str = Field(
        description="`rollup` (whole clean UTC days from the rollups, the rest raw) or `raw`."
    )
    took_ms: float


@router.get(
    "/v1/users/{user:user_id}/summary",
    response_model=UserSummary,
    responses=_ERRORS,
    summary="One user's year: counts, top values, habits, streak",
    description="Exact SQL over the user's stored events in the range (default: this calendar "
    "year in `timezone`). Weekdays, hours and days are local.",
    openapi_extra=_SECURITY,
)
async def summary(
    user: Annotated[
        str,
        Path(
            min_length=1,
            max_length=MAX_USER_LENGTH,
            pattern=r"^[^\x00]+$",
            description="The user id as sent with the events (URL-encoded).",
        ),
    ],
    params: Annotated[SummaryParams, Query()],
    key: ReadKey,
    state: State,
) -> dict[str, Any]:
    return await user_summary(state.reads, key, user, params, dt.datetime.now(dt.UTC))


# --- GET /v1/events


class EventRecord(BaseModel):
    event_id: uuid.UUID
    timestamp: dt.datetime
    name: str
    user: str | None
    properties: dict[str, Any] = Field(description="As stored.")
    context: dict[str, Any] | None
    received_at: dt.datetime
    corrected_timestamp: dt.datetime | None = Field(
        description="`timestamp` on the server's clock, when the request said when it was sent "
        "(`sent_at`, Segment's `sentAt`) and the sender's clock was off by at most "
        "`CLOCK_SKEW_MAX_SECONDS`; else null."
    )
    clock_skew_ms: int | None = Field(
        description="How far ahead of the server's clock the sender's was (negative: behind), "
        "network time included; null when the request did not say when it was sent."
    )


class EventsMeta(BaseModel):
    date_range: list[str] = Field(description="The range as resolved: [start, end) instants.")
    limit: int
    took_ms: float


class EventsPage(BaseModel):
    events: list[EventRecord] = Field(description="Newest first; ties by event id, descending.")
    next_cursor: str | None = Field(
        description="Pass as `cursor`, with the same other parameters, for the next page; "
        "null: this page is the last."
    )
    meta: EventsMeta


@router.get(
    "/v1/events",
    response_model=EventsPage,
    responses=_ERRORS,
    summary="Raw events, newest first, a page at a time",
    description="The filters of /v1/query as query parameters. Keyset pages: events arriving "
    "meanwhile never shift a page.",
    openapi_extra=_SECURITY,
)
async def events(params: Annotated[EventsParams, Query()], key: ReadKey, state: State) -> Response:
    body = await list_events(state.reads, key, params, dt.datetime.now(dt.UTC))
    # Built by the service with the events' JSON passed through exactly as stored.
    return Response(body, media_type="application/json")


# --- GET /v1/export


class ExportResponse(StreamingResponse):
    """Streams an export, and ends it whatever happens to the client."""

    def __init__(self, export: Export, *, gzip: bool) -> None:
        headers = {
            "Content-Disposition": f'attachment; filename="{export.filename}"',
            "Vary": "Accept-Encoding",
        }
        if gzip:
            headers["Content-Encoding"] = "gzip"
        super().__init__(export, media_type=export.media_type, headers=headers)
        self.export = export

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # A client gone mid-stream leaves the export suspended between
            # chunks: close it now, not whenever it is collected.
            with anyio.CancelScope(shield=True):
                await self.export.aclose()


_EXPORT_CONTENT = {
    media_type.split(";")[0]: {"schema": {"type": "string"}} for media_type in MEDIA_TYPES.values()
}


@router.get(
    "/v1/export",
    status_code=200,
    response_class=ExportResponse,
    responses={
        200: {
            "description": "Every matching event, oldest first, streamed; gzip when the "
            "request's `Accept-Encoding` allows it. `Content-Disposition` names a file.",
            "content": _EXPORT_CONTENT,
        },
        **_ERRORS,
    },
    summary="Export events as CSV or NDJSON",
    description="Any number of rows, in constant memory, from a server-side cursor. CSV "
    "columns: event_id, timestamp, name, user, properties, context (JSON text).",
    openapi_extra=_SECURITY,
)
async def export(
    params: Annotated[ExportParams, Query()],
    key: ReadKey,
    state: State,
    accept_encoding: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    gzip = accepts_gzip(accept_encoding)
    started = await open_export(
        state.reads,
        key,
        params,
        gzip=gzip,
        max_running=max(1, state.settings.read_pool_size // 2),
        now=dt.datetime.now(dt.UTC),
    )
    return ExportResponse(started, gzip=gzip)
