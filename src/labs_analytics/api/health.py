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
    description="200 when Redis answers (events can be acknowledged). PostgreSQL's state is "
    "reported but not required: ingest works while it is down.",
    responses={503: {"description": "Redis is unreachable: ingest would answer 503."}},
)
async def readyz(state: State) -> JSONResponse:
    redis_ok = await _check(state.redis.ping())
    postgres_ok = await _check(_ping_postgres(state))
    body: dict[str, Any] = {
        "status": "ready" if redis_ok else "unavailable",
        "redis": "up" if redis_ok else "down",
        "postgresql": "up" if postgres_ok else "down",
        "cached_keys": len(state.key_cache),
        "keys_source": state.key_cache.source,
    }
    return JSONResponse(body, status_code=200 if redis_ok else 503)


async def _ping_postgres(state: State) -> None:
    async with state.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _check(awaitable: Any) -> bool:
    try:
        await asyncio.wait_for(awaitable, CHECK_TIMEOUT_SECONDS)
    except Exception:
        return False
    return True
