"""``GET /v1/live``: a product's newest events as server-sent events.

Every ``LIVE_POLL_SECONDS`` the stream sends one ``snapshot`` event (JSON:
counts per minute of the last five and the newest events, read/live.py). A
stream ends after ``LIVE_STREAM_MAX_SECONDS``; the browser's ``EventSource``
reconnects by itself. Streams per process are capped (``LIVE_MAX_STREAMS``),
each poll is one short query on the read pool, and a failed poll sends an
``error`` event and carries on: the page says reads need PostgreSQL, then
recovers on its own when it is back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from labs_analytics.api.dependencies import State
from labs_analytics.api.errors import ErrorBody
from labs_analytics.api.read import READ_ERRORS, ReadKey
from labs_analytics.errors import AppError
from labs_analytics.read.live import live_snapshot
from labs_analytics.read.service import ReadService

router = APIRouter(tags=["read"])


class TooManyStreams(AppError):
    status_code = 503
    code = "too_many_streams"


class _StreamSlots:
    def __init__(self) -> None:
        self.open = 0


_slots = _StreamSlots()

_SNAPSHOT_SCHEMA = {
    "type": "object",
    "description": "One `snapshot` event's data.",
    "properties": {
        "as_of": {"type": "string", "format": "date-time"},
        "window_start": {"type": "string", "format": "date-time"},
        "events": {"type": "integer", "description": "Received since `window_start`."},
        "per_minute": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"minute": {"type": "string"}, "events": {"type": "integer"}},
            },
        },
        "latest": {
            "type": "array",
            "description": "The 20 newest by arrival; `properties` cut to 200 characters.",
            "items": {"type": "object"},
        },
    },
}


@router.get(
    "/v1/live",
    response_class=StreamingResponse,
    summary="Events received in the last five minutes, as they arrive (server-sent events)",
    description="`text/event-stream`: a `snapshot` event every `LIVE_POLL_SECONDS`, an `error` "
    "event (`{code, message}`) when a poll fails. By arrival time, not the events' own "
    "timestamps. The stream ends after `LIVE_STREAM_MAX_SECONDS`; clients reconnect.",
    responses={
        200: {"content": {"text/event-stream": {"schema": _SNAPSHOT_SCHEMA}}},
        **{status: READ_ERRORS[status] for status in (401, 403, 429)},
        503: {
            "model": ErrorBody,
            "description": "`too_many_streams`: the process serves its maximum already.",
        },
    },
    openapi_extra={"security": [{"HTTPBearer": []}]},
)
async def live(
    key: ReadKey,
    state: State,
    product: Annotated[
        str | None, Query(max_length=64, description="Another product: `admin` keys only.")
    ] = None,
) -> StreamingResponse:
    reads = state.reads
    readable = reads.product_for(key, product)
    reads.admit(key)
    settings = state.settings
    if _slots.open >= settings.live_max_streams:
        raise TooManyStreams(
            f"this process already serves {settings.live_max_streams} live streams; retry later"
        )
    return StreamingResponse(
        _stream(reads, readable, settings.live_poll_seconds, settings.live_stream_max_seconds),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _stream(
    reads: ReadService, product: str, poll_seconds: float, max_seconds: float
) -> AsyncIterator[bytes]:
    _slots.open += 1
    try:
        deadline = time.monotonic() + max_seconds
        yield b"retry: 2000\n\n"
        while time.monotonic() < deadline:
            yield await _poll(reads, product)
            await asyncio.sleep(poll_seconds)
    finally:
        _slots.open -= 1


async def _poll(reads: ReadService, product: str) -> bytes:
    try:
        snapshot: dict[str, Any] = await live_snapshot(reads, product, dt.datetime.now(dt.UTC))
    # Down, lost mid-poll or busy: ReadService.connection makes each an AppError.
    except AppError as exc:
        return _event("error", {"code": exc.code, "message": exc.message})
    return _event("snapshot", snapshot)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
