"""What many tests need: a running app, servers in child processes, keys, events,
scripts, and waiting for rows (or anything else observable) instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
from alembic import command
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from labs_analytics.api.app import create_app
from labs_analytics.auth.cache import KeyCache
from labs_analytics.auth.keys import Scope
from labs_analytics.auth.repository import KeyRepository
from labs_analytics.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from labs_analytics.events import EventRecord
from labs_analytics.queue.entries import entry_events
from labs_analytics.settings import Settings, to_asyncpg_dsn
from labs_analytics.storage import migrations
from labs_analytics.storage.database import create_engine

T = TypeVar("T")
# Starts the reason of a browser test's skip; the session's closing summary looks for it.
BROWSER_SKIPPED = "BROWSER TESTS SKIPPED: "

REPO = Path(__file__).resolve().parents[1]
SDK = REPO / "clients" / "python"  # the SDK's distribution: scripts import it from src/


@dataclass
class Servers:
    database_url: str
    redis_url: str
    postgres: EmbeddedPostgres | None
    redis: EmbeddedRedis | None
    data_dir: Path


def fast_settings(servers: Servers, *, prefix: str, spool_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: the session's servers, a Redis key prefix of their own,
    and timings in milliseconds rather than seconds."""
    values: dict[str, Any] = {
        "database_url": servers.database_url,
        "redis_url": servers.redis_url,
        "redis_key_prefix": f"{prefix}-{uuid.uuid4().hex[:8]}:",
        "flush_interval_ms": 50,
        "key_cache_refresh_seconds": 0.25,
        "reclaim_idle_ms": 500,
        "retry_backoff_initial_ms": 20,
        "retry_backoff_max_ms": 300,
        "redis_timeout_seconds": 1.0,
        "retry_after_seconds": 2,
        "spool_dir": str(spool_dir),
        # A flusher's own retention run (a minute after it starts) would delete
        # other tests' expired rows from the shared database, and its rollup
        # refresh would roll up their hours with its own property keys (a
        # session-long `serve`, the SDK tests', dropped the keys another test
        # had just rolled up): tests that want either ask for it.
        "retention_interval_seconds": 0,
        "rollup_interval_seconds": 0,
        **overrides,
    }
    return Settings(_env_file=None, **values)


@dataclass
class RunningApi:
    client: httpx.AsyncClient
    settings: Settings
    app: Any

    async def post(self, body: Any, key: str | None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if isinstance(body, bytes | str) or hasattr(body, "__aiter__"):
            return await self.client.post("/v1/events", content=body, headers=headers, **kwargs)
        return await self.client.post("/v1/events", json=body, headers=headers, **kwargs)


@contextlib.asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[RunningApi]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield RunningApi(client=client, settings=settings, app=app)


ApiFactory = Callable[..., contextlib.AbstractAsyncContextManager[RunningApi]]


async def create_key(
    settings: Settings,
    product: str = "clubs",
    scopes: Iterable[Scope] = (Scope.INGEST,),
    *,
    rate_limit_per_second: float | None = None,
) -> str:
    engine = create_engine(settings.database_url)
    try:
        new_key = await KeyRepository(engine).create(
            product=product,
            scopes=scopes,
            label="test",
            rate_limit_per_second=rate_limit_per_second,
        )
    finally:
        await engine.dispose()
    return new_key.plaintext


async def create_key_with_rate(settings: Settings, rate: float, product: str = "clubs") -> str:
    """An ingest key with a rate limit of its own."""
    return await create_key(settings, product, rate_limit_per_second=rate)


def make_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "name": "post.click",
        "user": "u_1",
        "timestamp": "2026-11-27T12:00:00Z",
        "properties": {"post_id": 42},
    }
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not None}


def make_events(n: int, **overrides: Any) -> list[dict[str, Any]]:
    return [make_event(**overrides) for _ in range(n)]


def make_record(**overrides: Any) -> EventRecord:
    """A validated event as the queue carries it, received now: what a test
    writes to the stream itself (an entry from elsewhere, by hand)."""
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "product": "clubs",
        "name": "post.click",
        "user": "u_1",
        "timestamp": now,
        "properties": {"ok": True},
        "context": None,
        "received_at": now,
    }
    return EventRecord(**{**fields, **overrides})


def new_product() -> str:
    """A product of the test's own, so the rows it counts are only its own (the SDK
    tests share one server and one stream)."""
    return f"sdk-{uuid.uuid4().hex[:10]}"


async def event_rows(db: asyncpg.Connection, product: str) -> list[dict[str, Any]]:
    """The events stored for ``product``, oldest first, their JSON columns decoded."""
    records = await db.fetch(
        "SELECT event_id, name, user_id, timestamp, properties, context FROM events "
        "WHERE product = $1 ORDER BY timestamp, event_id",
        product,
    )
    out = []
    for record in records:
        row = dict(record)
        for column in ("properties", "context"):
            if isinstance(row[column], str):
                row[column] = json.loads(row[column])
        out.append(row)
    return out


# Every wait below is on something observable (rows, stream entries, a counter, a
# log line), polled; its timeout only bounds a hang, so it is generous: a busy
# machine must not fail a test that a quiet one passes.
WAIT_SECONDS = 30.0


async def wait_for(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout: float = WAIT_SECONDS,  # noqa: ASYNC109 - the poll's own deadline, this helper's API
    what: str = "condition",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def count_events(db: asyncpg.Connection, product: str | None = None) -> int:
    if product is None:
        return int(await db.fetchval("SELECT count(*) FROM events"))
    return int(await db.fetchval("SELECT count(*) FROM events WHERE product = $1", product))


async def wait_for_events(
    db: asyncpg.Connection,
    expected: int,
    *,
    timeout: float = WAIT_SECONDS,  # noqa: ASYNC109 - the poll's own deadline, this helper's API
    product: str | None = None,
) -> None:
    async def enough() -> bool:
        return await count_events(db, product) >= expected

    await wait_for(enough, timeout=timeout, what=f"{expected} rows in events")


async def stream_state(redis: Redis, settings: Settings) -> tuple[int, int | None]:
    """(XLEN of the stream, pending count of the group; None if there is no group)."""
    length = int(await redis.xlen(settings.stream_key))
    try:
        summary: Any = await redis.xpending(settings.stream_key, settings.consumer_group)
    except ResponseError:  # NOGROUP: no flusher ever started on this stream
        return length, None
    return length, int(summary["pending"])


async def stream_events(redis: Redis, settings: Settings) -> int:
    """The truth: every entry's events, read from the stream itself (ingest requests
    share entries, so the entries alone do not say)."""
    entries: Any = await redis.xrange(settings.stream_key)
    return sum(entry_events(fields) for _, fields in entries)


async def wait_for_drained_stream(settings: Settings) -> None:
    """Every entry of the stream committed, acked and deleted: what was queued is all
    in PostgreSQL, and nothing more will come of it."""
    redis = Redis.from_url(settings.redis_url)
    try:

        async def drained() -> bool:
            length, pending = await stream_state(redis, settings)
            return length == 0 and not pending

        await wait_for(drained, what=f"the stream {settings.stream_key} to drain")
    finally:
        await redis.aclose()


async def wait_for_key_cache_reloads(cache: KeyCache, reloads: int = 1) -> None:
    """Wait until ``cache`` finished ``reloads`` reloads that began after this call.

    Each success stamps ``last_success``; the first change may be a reload that
    was already running, so one more is awaited. Reloads are single flight:
    each of the others began after the one before it ended.
    """
    changes = 0
    seen = cache.last_success

    async def reloaded() -> bool:
        nonlocal changes, seen
        if cache.last_success != seen:
            changes, seen = changes + 1, cache.last_success
        return changes > reloads

    await wait_for(reloaded, what=f"{reloads} reloads of the key cache")


async def duplicated_ids(db: asyncpg.Connection) -> list[uuid.UUID]:
    """Ids stored more than once for one product. Identity is per product: two
    products' events with the same id are two events, not a duplicate. The
    timestamp is left out on purpose: a retry that landed under another
    timestamp is a duplicate too."""
    rows = await db.fetch(
        "SELECT event_id FROM events GROUP BY product, event_id HAVING count(*) > 1"
    )
    return [row["event_id"] for row in rows]


def upgrade_database(database_url: str, revision: str = "head") -> None:
    """The real migrations, up to ``revision``. Alembic runs its own event loop:
    from an async test, call this through ``asyncio.to_thread``."""
    command.upgrade(migrations.alembic_config(database_url), revision)


def downgrade_database(database_url: str, revision: str) -> None:
    """The real migrations, down to ``revision`` (from an async test: ``asyncio.to_thread``)."""
    command.downgrade(migrations.alembic_config(database_url), revision)


@contextlib.contextmanager
def scratch_database(servers: Servers, revision: str | None) -> Iterator[str]:
    """A new database on the session's PostgreSQL, at ``revision`` (None: empty), dropped after.

    The session's own database is at head already; a test of a migration
    needs one built up to an older revision. Synchronous: use it from a
    synchronous fixture.
    """
    name = f"labs_scratch_{uuid.uuid4().hex[:10]}"
    admin_dsn = to_asyncpg_dsn(servers.database_url)

    async def execute(statement: str) -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    url = (
        Settings(_env_file=None, database_url=servers.database_url)
        .sqlalchemy_url.set(database=name)
        .render_as_string(hide_password=False)
    )
    try:
        if revision is not None:
            upgrade_database(url, revision)
        yield url
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class ServeProcess:
    """A real `labs-analytics serve` in a child process, on a free port."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that hands ``settings`` to a child `labs-analytics` process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        REDIS_KEY_PREFIX=settings.redis_key_prefix,
        FLUSH_INTERVAL_MS=str(settings.flush_interval_ms),
        KEY_CACHE_REFRESH_SECONDS=str(settings.key_cache_refresh_seconds),
        RECLAIM_IDLE_MS=str(settings.reclaim_idle_ms),
        RETRY_BACKOFF_INITIAL_MS=str(settings.retry_backoff_initial_ms),
        RETRY_BACKOFF_MAX_MS=str(settings.retry_backoff_max_ms),
        SPOOL_DIR=settings.spool_dir,
    )
    env.update(extra)
    return env


def cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("labs-analytics")), *args]


def run_cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`labs-analytics *args`, as a user runs it, with ``settings``; its output captured."""
    return subprocess.run(
        cli(*args),
        env=cli_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def run_cli_async(
    settings: Settings, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``run_cli`` for an async test: the child runs while the event loop goes on."""
    return await asyncio.to_thread(run_cli, settings, *args, **env)


@contextlib.contextmanager
def serve_process(
    settings: Settings, log_dir: Path, *args: str, port: int | None = None, **env: str
) -> Iterator[ServeProcess]:
    """A real `labs-analytics serve`, ready (it answered /healthz); on a free port
    unless ``port`` is given (so a client can be pointed at it before it starts).

    Blocking while it starts and stops: from an async test,
    ``async with in_a_thread(serve_process(...))``.
    """
    port = port or free_port()
    log_path = log_dir / f"serve-{port}-{uuid.uuid4().hex[:6]}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            cli("serve", "--port", str(port), *args),
            env=cli_env(settings, **env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    running = ServeProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited {process.returncode}:\n{running.logs()}")
            try:
                if httpx.get(f"{running.base_url}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not start:\n{running.logs()}")
            time.sleep(0.05)
        yield running
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (after SIGCONT, in case a test left it stopped); SIGKILL if it hangs."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.asynccontextmanager
async def in_a_thread(manager: contextlib.AbstractContextManager[T]) -> AsyncIterator[T]:
    """A blocking context manager (a server started and stopped: ``serve_process``,
    ``gunicorn``…), entered and left in a thread, so an async test's event loop is
    never held up while it starts or stops."""
    stack = contextlib.ExitStack()
    entered = await asyncio.to_thread(stack.enter_context, manager)
    try:
        yield entered
    finally:
        await asyncio.to_thread(stack.close)


@dataclass
class ScriptRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_script(code: str, *, timeout: float = 60.0, **env: str) -> ScriptRun:
    """Run a small Python program that imports the SDK from src/, as a product would.

    Blocking: from an async test, call it through ``asyncio.to_thread``.
    """
    environment = {**os.environ, "PYTHONPATH": str(SDK / "src"), **env}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return ScriptRun(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


@dataclass
class Exchange:
    at: float  # monotonic, when the answer (or the error) came
    status: int | None
    retry_after: str | None
    error: str | None


class RecordingTransport(httpx.HTTPTransport):
    """The real transport, noting when each request ended and how (no faking)."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = super().handle_request(request)
        except Exception as exc:
            with self._lock:
                self.exchanges.append(Exchange(time.monotonic(), None, None, type(exc).__name__))
            raise
        with self._lock:
            self.exchanges.append(
                Exchange(
                    time.monotonic(),
                    response.status_code,
                    response.headers.get("retry-after"),
                    None,
                )
            )
        return response
