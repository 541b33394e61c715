"""The FastAPI app factory and its lifespan.

The lifespan builds every connection and background task, hands them to the
routes as one typed ``AppState``, and takes them down on shutdown. Nothing
connects at import time, and nothing here waits on PostgreSQL: if it is down
at start, ingest still runs and the flusher waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from pydantic.json_schema import models_json_schema
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Receive, Scope, Send

from labs_analytics import __version__
from labs_analytics.api import (
    analysis,
    health,
    ingest,
    legacy,
    live,
    metrics_route,
    pipeline,
    read,
    records,
    segment,
    shares,
)
from labs_analytics.api.errors import UnexpectedErrorMiddleware, install_error_handlers
from labs_analytics.api.fast_path import FastPathMiddleware
from labs_analytics.api.state import AppState
from labs_analytics.auth.cache import KeyCache
from labs_analytics.auth.platform import PlatformVerifier
from labs_analytics.auth.repository import KeyRepository
from labs_analytics.dashboard import routes as dashboard_routes
from labs_analytics.dashboard.sessions import DashboardSessions
from labs_analytics.events import EventBatchIn, EventIn
from labs_analytics.flusher import Flusher
from labs_analytics.flusher.flusher import default_consumer_name
from labs_analytics.ingest.service import IngestService
from labs_analytics.logs import get_logger
from labs_analytics.queue.connection import create_redis
from labs_analytics.queue.producer import StreamProducer
from labs_analytics.queue.service import EventQueue
from labs_analytics.queue.spool import Spool
from labs_analytics.read.service import ReadService, create_read_pool
from labs_analytics.settings import Settings
from labs_analytics.storage.database import create_copy_pool, create_engine

log = get_logger(__name__)

CORS_PATH_PREFIX = "/v1/"
# The routes the fast path answers (api.fast_path); each also has its
# documented FastAPI route, which answers the same when the fast path is off.
FAST_ROUTES = (ingest.FAST_ROUTE, *segment.FAST_ROUTES, *legacy.FAST_ROUTES)


class ApiPathsCORSMiddleware:
    """CORS for the public API (`/v1/…`) only.

    Health, readiness and metrics describe the deployment, not a product: no
    web page, whatever its origin, may read them from a visitor's browser.
    """

    def __init__(self, app: ASGIApp, /, **cors: Any) -> None:
        self.app = app
        self.cors = CORSMiddleware(app, **cors)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(CORS_PATH_PREFIX):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # FastAPI with /docs and /redoc served from the package's own copies of
    # Swagger UI and ReDoc (fastapi-offline), not from a CDN: they load offline.
    app = FastAPIOffline(
        # No redirects: a 307 to `/v1/events` would be built from the client's Host header.
        redirect_slashes=False,
        title="Labs Analytics",
        version=__version__,
        description="Record product analytics events. Send them to `POST /v1/events` with an "
        "API key; they are acknowledged once durable and land in PostgreSQL exactly once.",
        lifespan=_lifespan,
        # We export Prometheus metrics (/metrics), not OpenTelemetry; FastAPI's
        # native telemetry would check for providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    install_error_handlers(app)
    # The layers, innermost first (each add_middleware wraps what is there):
    # 1. the fast path, innermost, so every middleware below and any added
    #    later see its requests too; it answers FAST_ROUTES itself.
    if settings.fast_path:
        app.add_middleware(FastPathMiddleware, routes=FAST_ROUTES)
    # 2. CORS, for the public API only.
    if settings.cors_origins:
        app.add_middleware(
            ApiPathsCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["POST", "GET", "OPTIONS"],
            # X-Write-Key and AnonymousId: what Segment's browser clients send.
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Content-Encoding",
                "X-Write-Key",
                "AnonymousId",
            ],
            max_age=600,
        )
    # 3. one answer and one log line for a bug, whichever path raised it.
    app.add_middleware(UnexpectedErrorMiddleware)
    app.include_router(ingest.router)
    app.include_router(segment.router)
    app.include_router(legacy.router)
    app.include_router(read.router)
    app.include_router(analysis.router)
    app.include_router(records.router)
    app.include_router(live.router)
    app.include_router(pipeline.router)
    app.include_router(shares.router)
    app.include_router(dashboard_routes.router)
    app.mount("/dashboard/static", dashboard_routes.static_files(), name="dashboard-static")
    app.include_router(health.router)
    app.include_router(metrics_route.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    # The ingest route parses its raw body itself (bounded read, gzip), so the
    # event schemas are added to the document by hand.
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, definitions = models_json_schema(
            [(EventIn, "validation"), (EventBatchIn, "validation")],
            ref_template="#/components/schemas/{model}",
        )
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(definitions.get("$defs", {}))
        components.setdefault("securitySchemes", {})["HTTPBearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: `Authorization: Bearer lak_…`",
        }
        app.openapi_schema = schema
    return app.openapi_schema


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    redis = create_redis(settings.redis_url, timeout_seconds=settings.redis_timeout_seconds)
    engine = create_engine(settings.database_url)
    key_cache = KeyCache(
        KeyRepository(engine).load_active,
        refresh_seconds=settings.key_cache_refresh_seconds,
        redis=redis,
        mirror_key=f"{settings.redis_key_prefix}keys",
    )
    await key_cache.refresh()
    await _warn_if_stream_can_be_evicted(redis)

    producer = StreamProducer(
        redis,
        stream_key=settings.stream_key,
        backlog_key=settings.backlog_key,
        backlog_max_events=settings.backlog_max_events,
    )
    spool = (
        Spool(
            Path(settings.spool_dir),
            max_bytes=settings.spool_max_bytes,
            segment_bytes=settings.spool_segment_bytes,
        )
        if settings.spool_dir
        else None
    )
    queue = EventQueue(
        producer=producer,
        redis=redis,
        spool=spool,
        memory_max_ratio=settings.redis_memory_max_ratio,
    )

    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(_supervise("key_cache", key_cache.run, stop)),
        asyncio.create_task(_supervise("queue", queue.run, stop)),
    ]
    platform = PlatformVerifier(
        settings.platform_jwks_url,
        settings.platform_subjects,
        leeway_seconds=settings.platform_jwt_leeway_seconds,
        refresh_seconds=settings.platform_jwks_refresh_seconds,
        min_refetch_seconds=settings.platform_jwks_min_refetch_seconds,
        retry_after_seconds=settings.retry_after_seconds,
    )
    if platform.configured:
        tasks.append(asyncio.create_task(_supervise("platform_keys", platform.run, stop)))
    flusher: Flusher | None = None
    flusher_redis = None
    pool = None
    if settings.run_flusher:
        # Its own client: blocking reads must not share the API's short timeout.
        flusher_redis = create_redis(
            settings.redis_url,
            timeout_seconds=settings.redis_timeout_seconds + settings.flush_interval_ms / 1000,
        )
        consumer = default_consumer_name()
        pool = await create_copy_pool(
            settings.database_url, application_name=f"labs-analytics serve {consumer}"
        )
        flusher = Flusher(redis=flusher_redis, pool=pool, settings=settings, consumer_name=consumer)
        tasks.append(asyncio.create_task(_supervise("flusher", flusher.run, stop)))

    read_pool = await create_read_pool(settings)  # min_size 0: connects on first use
    app.state.labs = AppState(
        settings=settings,
        redis=redis,
        engine=engine,
        key_cache=key_cache,
        queue=queue,
        ingest=IngestService(queue, settings),
        flusher=flusher,
        reads=ReadService(read_pool, settings),
        platform=platform,
        dashboard=DashboardSessions(
            redis,
            key_cache,
            prefix=settings.redis_key_prefix,
            session_seconds=settings.dashboard_session_seconds,
        ),
    )
    # Everything built so far lives as long as the process: move it out of
    # the collector's reach, so full collections stay short (they showed up
    # as the ingest latency tail).
    gc.collect()
    gc.freeze()
    log.info(
        "service.started",
        flusher=flusher.name if flusher else None,
        cached_keys=len(key_cache),
        keys_source=key_cache.source,
    )
    try:
        yield
    finally:
        # The flusher finishes its current step; an uncommitted batch stays
        # pending in Redis and is reclaimed, so stopping never loses events.
        stop.set()
        _done, pending = await asyncio.wait(tasks, timeout=settings.shutdown_timeout_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if spool is not None:
            await spool.seal()  # the next process (or this one restarted) replays it
        await read_pool.close()
        if pool is not None:
            await pool.close()
        if flusher_redis is not None:
            await flusher_redis.aclose()
        await engine.dispose()
        await producer.aclose()
        await redis.aclose()
        log.info("service.stopped")


async def _supervise(
    name: str, run: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event
) -> None:
    """Keep a background loop alive: a bug in one iteration is logged, not fatal."""
    delay = 1.0
    while not stop.is_set():
        try:
            await run(stop)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error(
                "task.crashed",
                task=name,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=True,
                restart_in_s=delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 30.0)


async def _warn_if_stream_can_be_evicted(redis: Any) -> None:
    try:
        policy = (await redis.config_get("maxmemory-policy")).get("maxmemory-policy")
    except RedisError:
        return  # unreachable now, or CONFIG disabled (managed Redis): nothing to check
    if policy not in (None, "noeviction"):
        log.error(
            "redis.eviction_risk",
            maxmemory_policy=policy,
            hint="set maxmemory-policy noeviction: eviction could drop queued events",
        )
