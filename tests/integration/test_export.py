"""``GET /v1/export``: any number of rows, streamed from a server-side cursor.

50,000 events (one ``INSERT … SELECT generate_series``) go out in both
formats, with and without gzip, and come back parsed to exactly the stored
rows, in order. The module's own streaming is held to constant memory
(``tracemalloc``: the peak stays a small fraction of what was sent), a slow
reader outlives the per-statement timeout, and a real ``serve`` whose client
disconnects mid-stream gets its only read connection back.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import gzip
import io
import json
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from labs_analytics.auth.keys import ApiKey, Scope
from labs_analytics.read.export import ExportParams, accepts_gzip, open_export
from labs_analytics.read.service import ReadBusy
from labs_analytics.settings import Settings
from tests.helpers import (
    ApiFactory,
    RunningApi,
    ServeProcess,
    Servers,
    create_key,
    fast_settings,
    serve_process,
    wait_for,
)

ROWS = 50_000
CLUBS_KEY = ApiKey("test", "clubs", frozenset({Scope.READ}), "unused")


async def insert_events(db: asyncpg.Connection, count: int = ROWS) -> None:
    """``count`` events of clubs (pairs share a timestamp), and a few of mobile."""
    await db.execute(
        "INSERT INTO events (timestamp, event_id, product, name, user_id, properties, context, "
        "received_at) "
        "SELECT timestamptz '2026-11-01T00:00:00Z' + make_interval(secs => (i / 2) * 7), "
        "gen_random_uuid(), 'clubs', "
        "(ARRAY['page.view', 'club,view \"x\"', 'search'])[1 + i % 3], "
        "CASE WHEN i % 10 = 0 THEN NULL ELSE 'u' || (i % 97) END, "
        "jsonb_build_object('i', i, 'route', '/clubs/' || (i % 50), 'note', E'a, \"b\"\\nc', "
        "'ratio', i / 7.0), "
        "CASE WHEN i % 2 = 0 THEN NULL "
        "ELSE jsonb_build_object('app', jsonb_build_object('version', '1.' || (i % 3))) END, "
        "now() FROM generate_series(1, $1) AS i",
        count,
    )
    # Another product, some of them with the same ids: never in clubs' export.
    await db.execute(
        "INSERT INTO events (timestamp, event_id, product, name, properties, received_at) "
        "SELECT timestamp, event_id, 'mobile', 'mobile.secret', '{}', now() "
        "FROM events WHERE product = 'clubs' ORDER BY timestamp LIMIT 100"
    )


async def stored(db: asyncpg.Connection, product: str = "clubs") -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT event_id, timestamp, name, user_id, properties::text AS properties, "
        "context::text AS context FROM events WHERE product = $1 ORDER BY timestamp, event_id",
        product,
    )


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def as_csv_row(record: asyncpg.Record) -> list[str]:
    return [
        str(record["event_id"]),
        rfc3339(record["timestamp"]),
        record["name"],
        record["user_id"] or "",
        record["properties"],
        record["context"] or "",
    ]


def as_ndjson_row(record: asyncpg.Record) -> dict[str, Any]:
    return {
        "event_id": str(record["event_id"]),
        "timestamp": rfc3339(record["timestamp"]),
        "name": record["name"],
        "user": record["user_id"],
        "properties": json.loads(record["properties"]),
        "context": None if record["context"] is None else json.loads(record["context"]),
    }


@pytest.fixture
async def app(api: ApiFactory, db: asyncpg.Connection) -> AsyncIterator[RunningApi]:
    await insert_events(db)
    async with api(run_flusher=False, read_rate_limit_per_second=10_000) as running:
        yield running


async def export_raw(
    app: RunningApi, key: str, params: dict[str, Any], encoding: str
) -> httpx.Response:
    """The answer with its body as sent (httpx leaves a streamed raw body encoded)."""
    headers = {"Authorization": f"Bearer {key}", "Accept-Encoding": encoding}
    async with app.client.stream("GET", "/v1/export", params=params, headers=headers) as answer:
        answer._content = b"".join([chunk async for chunk in answer.aiter_raw()])
    return answer


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
@pytest.mark.parametrize("export_format", ["csv", "ndjson"])
async def test_an_export_is_every_stored_row_in_order(
    app: RunningApi, db: asyncpg.Connection, export_format: str, encoding: str
) -> None:
    key = await create_key(app.settings, "clubs", scopes=[Scope.READ])
    answer = await export_raw(app, key, {"format": export_format, "date_range": "all"}, encoding)
    assert answer.status_code == 200, answer.text
    media_type = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}
    assert answer.headers["content-type"] == media_type[export_format]
    disposition = answer.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="clubs-events-')
    assert disposition.endswith(f'.{export_format}"')
    body = answer.content
    if encoding == "gzip":
        assert answer.headers["content-encoding"] == "gzip"
        body = gzip.decompress(body)
    else:
        assert "content-encoding" not in answer.headers
    rows = await stored(db)
    assert len(rows) == ROWS
    text = body.decode()
    if export_format == "csv":
        header, *lines = list(csv.reader(io.StringIO(text, newline="")))
        assert header == ["event_id", "timestamp", "name", "user", "properties", "context"]
        assert lines == [as_csv_row(row) for row in rows]
    else:
        assert text.endswith("\n")
        lines = [json.loads(line) for line in text.splitlines()]
        assert lines == [as_ndjson_row(row) for row in rows]
    assert (
        len({uuid.UUID(line[0] if export_format == "csv" else line["event_id"]) for line in lines})
        == ROWS
    )


@pytest.mark.parametrize(
    ("accept_encoding", "compressed"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("GZIP;q=0.5", True),
        ("x-gzip", True),
        ("*", True),
        ("identity", False),
        ("gzip;q=0", False),
        ("*;q=0.1, gzip;q=0", False),
        ("br", False),
        ("gzip;q=nan", False),
        ("", False),
        (None, False),
    ],
)
def test_gzip_only_when_the_client_accepts_it(
    accept_encoding: str | None, compressed: bool
) -> None:
    assert accepts_gzip(accept_encoding) is compressed


async def test_filters_and_ranges_apply_and_products_stay_apart(
    app: RunningApi, db: asyncpg.Connection
) -> None:
    key = await create_key(app.settings, "clubs", scopes=[Scope.READ])
    admin = await create_key(app.settings, "clubs", scopes=[Scope.READ, Scope.ADMIN])
    params = {
        "format": "ndjson",
        "from": "2026-11-01T06:00:00Z",
        "to": "2026-11-02T00:00:00Z",
        "name": "search",
        "filter": json.dumps(["exists", "context:app.version"]),
    }
    answer = await export_raw(app, key, params, "identity")
    got = [json.loads(line)["event_id"] for line in answer.text.splitlines()]
    expected = await db.fetch(
        "SELECT event_id FROM events WHERE product = 'clubs' AND name = 'search' "
        "AND context IS NOT NULL AND timestamp >= '2026-11-01T06:00:00Z' "
        "AND timestamp < '2026-11-02T00:00:00Z' ORDER BY timestamp, event_id"
    )
    assert got == [str(row["event_id"]) for row in expected]
    assert got
    mobile = await export_raw(
        app, admin, {"format": "ndjson", "date_range": "all", "product": "mobile"}, "identity"
    )
    assert {json.loads(line)["name"] for line in mobile.text.splitlines()} == {"mobile.secret"}
    refused = await export_raw(app, key, {"date_range": "all", "product": "mobile"}, "identity")
    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden"
    stranger = await app.client.get("/v1/export", params={"format": "xml"})
    assert stranger.status_code == 401
    for params, field in (
        ({"format": "xml"}, "query.format"),
        ({"date_range": "all", "from": "2026-01-01"}, "query.from"),
        ({"filter": "[1, 2"}, "query.filter"),
        ({"limit": 10}, "query.limit"),
    ):
        invalid = await export_raw(app, key, params, "identity")
        assert invalid.status_code == 422, params
        assert [d["field"] for d in invalid.json()["details"]] == [field]


# --- the module itself: memory, time, slots


async def _peak_while_exporting(app: RunningApi, params: dict[str, Any]) -> tuple[int, int]:
    """(bytes sent, the peak of memory traced while sending them, above the start)."""
    export_params = ExportParams.model_validate(params)
    now = dt.datetime.now(dt.UTC)
    reads = app.app.state.labs.reads
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        export = await open_export(
            reads, CLUBS_KEY, export_params, gzip=False, max_running=1, now=now
        )
        sent = 0
        async for chunk in export:
            sent += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return sent, peak - before


@pytest.mark.parametrize("export_format", ["csv", "ndjson"])
async def test_the_export_streams_in_constant_memory(app: RunningApi, export_format: str) -> None:
    # The first export opens the pool's connection: not part of what is measured.
    await _peak_while_exporting(app, {"date_range": "all", "name": ["none"]})
    small_sent, small_peak = await _peak_while_exporting(
        app, {"format": export_format, "from": "2026-11-01T00:00:00Z", "to": "2026-11-01T06:00:00Z"}
    )
    sent, peak = await _peak_while_exporting(app, {"format": export_format, "date_range": "all"})
    assert sent > 4 * small_sent > 0
    # Holding the export (or all its rows) would take more than what was sent;
    # streaming holds one chunk of rows and its encoding, whatever the total.
    assert peak < sent / 4, f"peak {peak:,} bytes for {sent:,} sent"
    assert peak < 1.5 * small_peak + 256 * 1024, (small_peak, peak)


async def test_an_export_outlives_the_statement_timeout(
    api: ApiFactory, db: asyncpg.Connection
) -> None:
    await insert_events(db)
    # Statements end after 0.5 s here (the server's own limit after 1.5 s); the
    # export, read slowly, takes far longer: each fetch is a statement of its own.
    async with api(run_flusher=False, query_timeout_seconds=0.5) as app:
        reads = app.app.state.labs.reads
        params = ExportParams.model_validate({"format": "csv", "date_range": "all"})
        started = time.monotonic()
        export = await open_export(
            reads, CLUBS_KEY, params, gzip=True, max_running=1, now=dt.datetime.now(dt.UTC)
        )
        compressed = b""
        async for chunk in export:
            compressed += chunk
            await asyncio.sleep(0.045)
        assert time.monotonic() - started > 2.0
    lines = gzip.decompress(compressed).decode().splitlines()
    assert len(lines) == ROWS + 1


async def test_exports_past_their_share_of_the_pool_are_read_busy(app: RunningApi) -> None:
    reads = app.app.state.labs.reads
    params = ExportParams.model_validate({"date_range": "all"})
    now = dt.datetime.now(dt.UTC)
    first = await open_export(reads, CLUBS_KEY, params, gzip=False, max_running=1, now=now)
    try:
        with pytest.raises(ReadBusy):
            await open_export(reads, CLUBS_KEY, params, gzip=False, max_running=1, now=now)
    finally:
        await first.aclose()
    second = await open_export(reads, CLUBS_KEY, params, gzip=False, max_running=1, now=now)
    await second.aclose()


# --- a real server: clients that go away, connections that die


@dataclass
class ExportServer:
    """A real `serve` with one read connection, shared by this module's server tests."""

    process: ServeProcess
    settings: Settings

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
        """A client, and headers with a read key the server has loaded."""
        key = await create_key(self.settings, "clubs", scopes=[Scope.READ])
        headers = {"Authorization": f"Bearer {key}", "Accept-Encoding": "identity"}
        async with httpx.AsyncClient(base_url=self.process.base_url, timeout=10) as client:

            async def key_known() -> bool:
                answer = await client.get("/v1/events", params={"limit": 1}, headers=headers)
                return answer.status_code == 200

            await wait_for(key_known, timeout=5, what="the server to load the new key")
            yield client, headers


@pytest.fixture(scope="module")
def export_server(
    servers: Servers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExportServer]:
    log_dir = tmp_path_factory.mktemp("export-serve")
    settings = fast_settings(servers, prefix="export", spool_dir=log_dir / "spool")
    with serve_process(settings, log_dir, "--no-flusher", READ_POOL_SIZE="1") as process:
        yield ExportServer(process, settings)


async def insert_fat_events(db: asyncpg.Connection) -> None:
    """200 MB of CSV: far more than socket buffers hold (up to 32 MB here), so the
    server is mid-result, blocked on a client that does not read, until it reads."""
    await insert_events(db)
    await db.execute(
        "UPDATE events SET properties = properties || jsonb_build_object('pad', repeat('x', 4000))"
    )


async def read_backends(db: asyncpg.Connection) -> list[str]:
    rows = await db.fetch(
        "SELECT state FROM pg_stat_activity WHERE application_name = 'labs-analytics read'"
    )
    return [row["state"] for row in rows]


async def cursor_open(db: asyncpg.Connection) -> None:
    """Wait until the only read connection is inside the export's transaction, idle:
    the cursor is open, mid-result."""

    seen: list[list[str]] = []

    async def idle_in_transaction() -> bool:
        seen.append(await read_backends(db))
        return seen[-1] == ["idle in transaction"]

    try:
        await wait_for(idle_in_transaction, timeout=5, what="the export's open transaction")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; read connections seen: {seen[-3:]}") from None


async def test_a_client_gone_mid_export_gives_the_connection_back(
    export_server: ExportServer, db: asyncpg.Connection
) -> None:
    await insert_fat_events(db)
    async with export_server.client() as (client, headers):
        async with client.stream(
            "GET", "/v1/export", params={"date_range": "all"}, headers=headers
        ) as answer:
            assert answer.status_code == 200
            # Held: an iterator dropped mid-body closes httpx's connection when collected.
            chunks = answer.aiter_raw()
            first = await anext(chunks)
            assert first.startswith(b"event_id,timestamp,")
            await cursor_open(db)
        # Closed before the end: httpx drops the connection.

        async def connection_back() -> bool:
            return await read_backends(db) in (["idle"], [])

        await wait_for(connection_back, timeout=5, what="the read connection released")
        # The only read connection serves the next request at once (a lost one
        # would be a 503 read_busy after 5 s).
        started = time.monotonic()
        after = await client.get("/v1/events", params={"limit": 1}, headers=headers)
        assert after.status_code == 200, after.text
        assert time.monotonic() - started < 2
        # And so does the next export, to its end.
        params = {"from": "2026-11-01T00:00:00Z", "to": "2026-11-01T01:00:00Z"}
        whole = await client.get("/v1/export", params=params, headers=headers)
        assert whole.status_code == 200
        hour = await db.fetchval(
            "SELECT count(*) FROM events WHERE product = 'clubs' "
            "AND timestamp < '2026-11-01T01:00:00Z'"
        )
        assert whole.text.count("\r\n") == hour + 1
    logs = export_server.process.logs()
    assert "export.stopped" in logs
    assert "unhandled_error" not in logs


async def test_a_connection_lost_mid_export_cuts_the_answer_short(
    export_server: ExportServer, db: asyncpg.Connection
) -> None:
    await insert_fat_events(db)
    async with export_server.client() as (client, headers):
        async with client.stream(
            "GET", "/v1/export", params={"date_range": "all"}, headers=headers
        ) as answer:
            assert answer.status_code == 200
            chunks = answer.aiter_raw()  # held, as above
            await anext(chunks)
            await cursor_open(db)
            await db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'labs-analytics read'"
            )
            # Never a body that ends as if it were whole: the connection is cut.
            with pytest.raises(httpx.RemoteProtocolError):
                async for _ in chunks:
                    pass
        # The pool opens a new connection for the next read.
        after = await client.get("/v1/events", params={"limit": 1}, headers=headers)
        assert after.status_code == 200, after.text
