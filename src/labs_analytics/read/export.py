"""``GET /v1/export``: every event a filter picks, streamed as CSV or NDJSON in constant memory.

The rows come from a server-side cursor (a portal, inside a read-only
transaction on one read connection), ``CHUNK_ROWS`` at a time, oldest first
(ties by event id); each chunk is encoded, gzip-compressed when the client
accepts it, and sent before the next is fetched, so memory holds one chunk
whatever the size of the export. Each fetch is a statement of its own, so
the per-statement timeout bounds a fetch, never the whole export.

The first chunk is fetched before the answer begins: a busy pool, a timeout
or an unavailable database is still a 503 in the one error shape. After that
the status is sent; a failure mid-stream cuts the connection (the client sees
an incomplete body, never a short one that looks whole). A client that goes
away mid-stream ends it: the fetch under way completes, the transaction is
rolled back (closing the cursor) and the connection goes back to the pool.

An export holds a read connection for as long as its client reads, so at
most half the read pool (at least one) exports at once per process; past
that, 503 ``read_busy``.

Formats: CSV (RFC 4180, a header row, CRLF) with columns ``event_id,
timestamp, name, user, properties, context`` (the two last as JSON text, as
stored; an empty field for no user or no context); NDJSON, one JSON object per
line with the same keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import re
import weakref
import zlib
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, Literal
from zoneinfo import ZoneInfo

import anyio
import asyncpg
import orjson
from pydantic import Field

from labs_analytics.auth.keys import ApiKey
from labs_analytics.errors import AppError
from labs_analytics.logs import get_logger
from labs_analytics.read.dates import Interval
from labs_analytics.read.events import EventFilters, event_conditions, event_record
from labs_analytics.read.request import Filter
from labs_analytics.read.service import ReadBusy, ReadService
from labs_analytics.read.sql import SqlBuilder

log = get_logger(__name__)

CHUNK_ROWS = 1_000  # a chunk of events at the 32 KiB property limit stays tens of MB
COLUMNS = ("event_id", "timestamp", "name", "user", "properties", "context")
ExportFormat = Literal["csv", "ndjson"]
MEDIA_TYPES: dict[str, str] = {"csv": "text/csv", "ndjson": "application/x-ndjson"}
CLEANUP_SECONDS = 10.0
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

# Exports running per read service (per app): each holds a read connection.
_running: weakref.WeakKeyDictionary[ReadService, int] = weakref.WeakKeyDictionary()


class ExportParams(EventFilters):
    """The query parameters of ``GET /v1/export``."""

    format: ExportFormat = Field(
        default="csv", description="`csv` (a header row, then one event a line) or `ndjson`."
    )


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (``gzip``, ``x-gzip`` or ``*``, q > 0)."""
    weights: dict[str, float] = {}
    for item in (accept_encoding or "").split(","):
        coding, _, parameters = item.partition(";")
        weight = 1.0
        for parameter in parameters.split(";"):
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = 0.0
        weights[coding.strip().lower()] = weight
    for coding in ("gzip", "x-gzip", "*"):
        if coding in weights:
            return weights[coding] > 0  # NaN is not
    return False


def count_statement(
    product: str, interval: Interval, filters: list[Filter]
) -> tuple[str, list[Any]]:
    """How many rows the export would send (for a progress bar: rows may still arrive)."""
    builder = SqlBuilder()
    where = event_conditions(builder, product, interval, filters)
    return f"SELECT count(*) FROM events WHERE {' AND '.join(where)}", builder.args


def export_statement(
    product: str, interval: Interval, filters: list[Filter]
) -> tuple[str, list[Any]]:
    builder = SqlBuilder()
    where = event_conditions(builder, product, interval, filters)
    sql = (
        'SELECT event_id, "timestamp", name, user_id, properties::text AS properties, '
        f"context::text AS context FROM events WHERE {' AND '.join(where)} "
        'ORDER BY "timestamp", event_id'
    )
    return sql, builder.args


def _rfc3339(moment: dt.datetime) -> str:
    return orjson.dumps(moment, option=orjson.OPT_UTC_Z)[1:-1].decode()


def encode_csv(rows: Sequence[asyncpg.Record]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerows(
        (
            str(row["event_id"]),
            _rfc3339(row["timestamp"]),
            row["name"],
            row["user_id"],
            row["properties"],
            row["context"],
        )
        for row in rows
    )
    return text.getvalue().encode()


def encode_ndjson(rows: Sequence[asyncpg.Record]) -> bytes:
    # Appended one by one: each line orjson returns holds a buffer of a few
    # kilobytes, far more than the line; a thousand of them at once added up.
    lines = bytearray()
    for row in rows:
        lines += orjson.dumps(
            event_record(row), option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE
        )
    return bytes(lines)


def _filename(product: str, interval: Interval, zone: ZoneInfo, extension: str) -> str:
    first = interval.start.astimezone(zone).date()
    last = (interval.end - dt.timedelta(microseconds=1)).astimezone(zone).date()
    name = _UNSAFE.sub("_", product)[:64] or "product"
    return f"{name}-events-{first:%Y%m%d}-{last:%Y%m%d}.{extension}"


class _Sent:
    """Rows handed out so far (the CLI's progress bar and its count at the end)."""

    rows = 0


class Export:
    """An export begun (its first chunk fetched): iterate for the bytes, then ``aclose``."""

    def __init__(
        self,
        filename: str,
        media_type: str,
        first: bytes,
        rest: AsyncGenerator[bytes, None],
        sent: _Sent,
    ) -> None:
        self.filename = filename
        self.media_type = media_type
        self._first: bytes | None = first
        self._rest = rest
        self._sent = sent

    @property
    def rows(self) -> int:
        """Rows in the chunks handed out so far."""
        return self._sent.rows

    def __aiter__(self) -> Export:
        return self

    async def __anext__(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._rest)

    async def aclose(self) -> None:
        """End it wherever it is: the transaction rolled back, the connection returned."""
        await self._rest.aclose()


async def open_export(
    reads: ReadService,
    key: ApiKey,
    params: ExportParams,
    *,
    gzip: bool,
    max_running: int,
    now: dt.datetime,
) -> Export:
    reads.admit(key)
    product = reads.product_for(key, params.product)
    interval = params.interval(now)
    if _running.get(reads, 0) >= max_running:
        raise ReadBusy(f"{max_running} exports are running, the most at once; retry shortly")
    sql, args = export_statement(product, interval, params.filters())
    encode = encode_csv if params.format == "csv" else encode_ndjson
    header = (",".join(COLUMNS) + "\r\n").encode() if params.format == "csv" else b""
    sent = _Sent()
    chunks = _chunks(reads, sql, args, encode, header, gzip=gzip, sent=sent)
    # Fetched now, before the status is sent: a 503 can still say why.
    first = await anext(chunks)
    log.info("export.started", product=product, format=params.format, gzip=gzip)
    filename = _filename(product, interval, ZoneInfo(params.timezone), params.format)
    return Export(filename, MEDIA_TYPES[params.format], first, chunks, sent)


async def _chunks(
    reads: ReadService,
    sql: str,
    args: list[Any],
    encode: Callable[[Sequence[asyncpg.Record]], bytes],
    header: bytes,
    *,
    gzip: bool,
    sent: _Sent,
) -> AsyncGenerator[bytes, None]:
    _running[reads] = _running.get(reads, 0) + 1
    # wbits 31: a gzip stream. Each chunk is flushed (Z_SYNC_FLUSH), so what has
    # arrived can be decompressed as it arrives.
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip else None
    rows_sent = 0
    begun = False  # the first chunk went out: the answer has started
    try:
        async with reads.connection() as connection:
            transaction = connection.transaction(readonly=True)
            await transaction.start()
            fetching: asyncio.Future[list[asyncpg.Record]] | None = None
            try:
                cursor = await connection.cursor(sql, *args, timeout=reads.timeout)
                while True:
                    fetching = asyncio.ensure_future(
                        cursor.fetch(CHUNK_ROWS, timeout=reads.timeout)
                    )
                    # Shielded: a client gone mid-fetch lets the fetch finish, so the
                    # connection is idle (not cancelling) when it is rolled back below.
                    rows = await asyncio.shield(fetching)
                    data = header + encode(rows)
                    header = b""
                    rows_sent += len(rows)
                    sent.rows = rows_sent
                    if compressor is not None:
                        data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
                    yield data
                    begun = True
                    if len(rows) < CHUNK_ROWS:
                        break
            finally:
                await _end(transaction, fetching)
        if compressor is not None:
            yield compressor.flush()
        log.info("export.finished", rows=rows_sent)
    except (GeneratorExit, asyncio.CancelledError):  # the client went away
        log.info("export.stopped", rows=rows_sent, reason="closed_early")
        raise
    except AppError as exc:
        if begun:  # before that, the client gets the error itself (a 503)
            log.warning("export.aborted", rows=rows_sent, error=exc.code)
        raise
    finally:
        _running[reads] -= 1


async def _end(transaction: Any, fetching: asyncio.Future[list[asyncpg.Record]] | None) -> None:
    """Roll back (read-only: nothing to keep), which closes the cursor; even when cancelled."""
    with anyio.move_on_after(CLEANUP_SECONDS, shield=True):
        if fetching is not None and not fetching.done():
            with contextlib.suppress(Exception):
                await fetching  # the query timeout bounds it
        # If this fails the pool's release resets the connection, or drops it.
        with contextlib.suppress(Exception):
            await transaction.rollback()
