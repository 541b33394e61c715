"""Running read queries: whose product, on which connections, for how long.

Reads have their own small asyncpg pool, separate from the flusher's COPY
connections and the ingest path, with every session read-only and every
statement bounded (``QUERY_TIMEOUT_SECONDS``, cancelled on the server when it
runs out); a key may start at most ``READ_RATE_LIMIT_PER_SECOND`` queries a
second. A burst of heavy queries waits for the pool (or is refused, 503)
instead of taking connections or CPU the pipeline needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from labs_analytics.auth.keys import ApiKey, Scope
from labs_analytics.errors import AppError, Forbidden, RateLimitExceeded
from labs_analytics.logs import get_logger
from labs_analytics.read.query import compile_query, has_real_start, shape_rows
from labs_analytics.read.request import QueryRequest
from labs_analytics.settings import Settings, to_asyncpg_dsn

log = get_logger(__name__)
POOL_WAIT_SECONDS = 5.0
# How a connection taken from the pool fails when its server is gone: closed
# under the statement, refused, or terminated by a shutdown (SQLSTATE 57P0x).
_CONNECTION_LOST = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    OSError,
)


class QueryTimeout(AppError):
    status_code = 503
    code = "query_timeout"


class ReadBusy(AppError):
    status_code = 503
    code = "read_busy"


class ReadUnavailable(AppError):
    status_code = 503
    code = "database_unavailable"


def create_read_pool(settings: Settings) -> asyncpg.Pool:
    """Read-only sessions whose statements the server cancels past the query timeout."""
    # The server-side limit is a backstop a little past the client's own.
    statement_timeout_ms = int((settings.query_timeout_seconds + 1) * 1000)
    return asyncpg.create_pool(
        to_asyncpg_dsn(settings.database_url),
        min_size=0,
        max_size=settings.read_pool_size,
        timeout=5.0,
        server_settings={
            "application_name": "labs-analytics read",
            "default_transaction_read_only": "on",
            "statement_timeout": str(statement_timeout_ms),
            # asyncpg prepares every statement; after five runs PostgreSQL may
            # switch to a generic plan, which cannot prune the daily partitions
            # by a range it does not know: a funnel went from 0.15 s to 7 s on
            # its sixth run (make bench-read). A plan per run costs milliseconds.
            "plan_cache_mode": "force_custom_plan",
            # Distinct-user counts and funnels sort per user: with the default
            # 4 MB they spilled to disk. Per sort, at most READ_POOL_SIZE at once.
            "work_mem": f"{settings.read_work_mem_mb}MB",
        },
    )


class _Buckets:
    """Queries per second per key, a token bucket each (per process)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key_id: str) -> float:
        """0 if the key may start a query now, else the seconds until it may."""
        now = time.monotonic()
        tokens, at = self._buckets.get(key_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self._buckets[key_id] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key_id] = (tokens - 1, now)
        if len(self._buckets) > 10_000:  # forget idle keys rather than grow without end
            self._buckets.pop(next(iter(self._buckets)))
        return 0.0


class ReadService:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._timeout = settings.query_timeout_seconds
        self._property_keys = frozenset(settings.rollup_properties)
        rate = settings.read_rate_limit_per_second
        self._limits = _Buckets(rate, max(1.0, rate * 2))

    def product_for(self, key: ApiKey, requested: str | None) -> str:
        """The product a key reads: its own; another only with the `admin` scope."""
        if requested is None or requested == key.product:
            return key.product
        if Scope.ADMIN not in key.scopes:
            raise Forbidden("only an admin key may read another product")
        return requested

    def admit(self, key: ApiKey) -> None:
        wait = self._limits.take(key.key_id)
        if wait:
            seconds = max(1, math.ceil(wait))
            raise RateLimitExceeded(
                f"this key may start {self._limits.rate:g} queries a second; retry in {seconds} s",
                retry_after_seconds=seconds,
                limit_per_second=self._limits.rate,
            )

    async def query(self, key: ApiKey, request: QueryRequest) -> dict[str, Any]:
        """``POST /v1/query`` for a key: its rate limit, then its product's answer."""
        self.admit(key)
        return await self.answer(self.product_for(key, request.product), request)

    async def answer(
        self, product: str, request: QueryRequest, *, use_rollups: bool = True
    ) -> dict[str, Any]:
        """The answer to ``request`` over ``product``'s events (no key: the CLI's way in).

        ``use_rollups``: false reads the raw events even where the rollups could
        answer (the same numbers; to compare the two).
        """
        started = time.monotonic()
        interval = request.interval(dt.datetime.now(dt.UTC))
        compiled = compile_query(
            request,
            product=product,
            interval=interval,
            fill_from=has_real_start(interval),
            use_rollups=use_rollups,
            property_keys=self._property_keys,
        )
        rows = await self.fetch(compiled.sql, compiled.args)
        results, total = shape_rows(compiled, rows)
        if not rows and request.offset:  # past the last row: count them from the first page
            first = compiled.first_page()
            _, total = shape_rows(first, await self.fetch(first.sql, first.args))
        took_ms = round((time.monotonic() - started) * 1000, 1)
        return {
            "results": results,
            "meta": {
                "total_rows": total,
                "source": compiled.source,
                "took_ms": took_ms,
                "date_range": [interval.start.isoformat(), interval.end.isoformat()],
                "metrics": request.metrics,
                "dimensions": request.dimensions,
            },
        }

    @property
    def property_keys(self) -> frozenset[str]:
        """The property keys rolled up (``ROLLUP_PROPERTIES``), as this process knows them."""
        return self._property_keys

    @property
    def timeout(self) -> float:
        """How long one statement may run (the client cancels it; the server too, a bit later)."""
        return self._timeout

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A read connection (read-only session), or ``ReadBusy`` / ``ReadUnavailable``.

        A statement that runs out of time raises ``QueryTimeout`` out of the block.
        """
        try:
            async with asyncio.timeout(POOL_WAIT_SECONDS):
                connection = await self._pool.acquire()
        except TimeoutError:
            raise ReadBusy("every read connection is busy; retry shortly") from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # InterfaceError: the pool is closing (the app shutting down).
            log.warning("read.database_unavailable", error=f"{type(exc).__name__}: {exc}")
            raise ReadUnavailable("the database is unavailable; retry later") from exc
        try:
            yield connection
        except (TimeoutError, asyncpg.QueryCanceledError):
            raise QueryTimeout(
                f"the query ran longer than {self._timeout:g} s and was cancelled; "
                "narrow its date range or filters"
            ) from None
        except _CONNECTION_LOST as exc:
            if isinstance(exc, asyncpg.InterfaceError) and not connection.is_closed():
                raise  # a misuse on a live connection (a bug): the 500 handler logs it
            # A pooled connection whose server went away since (a restart, a
            # failover): the next request gets a new one, or this same answer.
            log.warning("read.connection_lost", error=f"{type(exc).__name__}: {exc}")
            raise ReadUnavailable("the database is unavailable; retry later") from exc
        finally:
            try:
                await self._pool.release(connection)
            except _CONNECTION_LOST as exc:
                # Lost after the answer was read (the reset on release failed): the
                # pool has dropped it; the answer stands, or the error above does.
                log.warning("read.release_failed", error=f"{type(exc).__name__}: {exc}")

    async def fetch(self, sql: str, args: list[Any]) -> list[asyncpg.Record]:
        """Run one statement, bounded by the query timeout; its rows."""
        async with self.connection() as connection:
            rows: list[asyncpg.Record] = await connection.fetch(sql, *args, timeout=self._timeout)
            return rows
