"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from labs_analytics.api.dependencies import State

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_SECONDS = 1.0


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Ready to accept events",
    description="200 when events can be acknowledged: Redis answers, or the local spool is "
    "writable. PostgreSQL's state, the backlog and the limits are reported; PostgreSQL is not "
    "required (ingest works while it is down).",
    responses={503: {"description": "Neither Redis nor the spool can take events."}},
)
async def readyz(state: State) -> JSONResponse:
    redis_ok = await _within_timeout(state.redis.ping())
    postgres_ok = await check_postgres(state)
    spool = state.queue.spool
    spool_ok = spool is not None and spool.writable()
    settings = state.settings
    # Never negative, and recounted from the stream by the queue's maintenance;
    # None when Redis is down or the counter is not an integer.
    backlog = await _value_within_timeout(state.queue.backlog.read()) if redis_ok else None
    body: dict[str, Any] = {
        "status": "ready" if redis_ok or spool_ok else "unavailable",
        "redis": "up" if redis_ok else "down",
        "spool": {
            "enabled": spool is not None,
            "writable": spool_ok,
            "bytes": spool.total_bytes() if spool is not None else 0,
            "max_bytes": settings.spool_max_bytes,
        },
        "postgresql": "up" if postgres_ok else "down",
        "backlog": {"events": backlog, "max_events": settings.backlog_max_events},
        "redis_memory_ratio": state.queue.health.memory_ratio,
        "rate_limit_events_per_second": settings.rate_limit_events_per_second,
        "cached_keys": len(state.key_cache),
        "keys_source": state.key_cache.source,
    }
    return JSONResponse(body, status_code=200 if redis_ok or spool_ok else 503)


async def check_postgres(state: State) -> bool:
    async def ping() -> None:
        async with state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    return await _within_timeout(ping())


async def _within_timeout(awaitable: Any) -> bool:
    try:
        await asyncio.wait_for(awaitable, CHECK_TIMEOUT_SECONDS)
    except Exception:
        return False
    return True


async def _value_within_timeout(awaitable: Any) -> Any:
    try:
        return await asyncio.wait_for(awaitable, CHECK_TIMEOUT_SECONDS)
    except Exception:
        return None
