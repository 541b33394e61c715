"""GET /metrics, in the Prometheus text format."""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from redis.exceptions import RedisError

from labs_analytics import metrics
from labs_analytics.api.dependencies import State
from labs_analytics.api.errors import ErrorBody
from labs_analytics.api.health import check_postgres
from labs_analytics.errors import Unauthenticated

router = APIRouter(tags=["health"])

STATE_TIMEOUT_SECONDS = 1.0


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    description="Open unless `METRICS_TOKEN` is set; then send it as a bearer token.",
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format."},
        401: {"model": ErrorBody, "description": "METRICS_TOKEN is set and was not sent."},
    },
)
async def get_metrics(state: State, request: Request) -> Response:
    _check_metrics_token(state.settings.metrics_token, request.headers.get("authorization"))
    await _refresh_shared_gauges(state)
    body, content_type = metrics.render()
    return Response(content=body, media_type=content_type)


def _check_metrics_token(expected: str, authorization: str | None) -> None:
    """With METRICS_TOKEN set, only a scraper presenting it may read the metrics."""
    if not expected:
        return
    scheme, _, token = (authorization or "").partition(" ")
    given = token.strip().encode() if scheme.lower() == "bearer" else b""
    if not hmac.compare_digest(given, expected.encode()):
        raise Unauthenticated("GET /metrics requires `Authorization: Bearer <METRICS_TOKEN>`")


async def _refresh_shared_gauges(state: State) -> None:
    """Backlog, pending and oldest entry are shared state: read them at scrape time."""
    settings = state.settings
    metrics.POSTGRES_UP.set(1 if await check_postgres(state) else 0)
    try:
        async with asyncio.timeout(STATE_TIMEOUT_SECONDS):
            backlog = await state.queue.backlog.read()  # None: not an integer
            oldest: Any = await state.redis.xrange(settings.stream_key, count=1)
            try:
                pending: Any = await state.redis.xpending(
                    settings.stream_key, settings.consumer_group
                )
            except RedisError:  # no group yet
                pending = {"pending": 0}
    except (RedisError, OSError, TimeoutError):
        metrics.REDIS_UP.set(0)
        return
    metrics.REDIS_UP.set(1)
    if backlog is not None:
        metrics.BACKLOG_EVENTS.set(backlog)
    metrics.PENDING_ENTRIES.set(int(pending["pending"]))
    metrics.OLDEST_ENTRY_AGE.set(_age_seconds(oldest[0][0]) if oldest else 0)


def _age_seconds(entry_id: bytes | str) -> float:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    created_ms = int(text.split("-", 1)[0])
    return max(0.0, time.time() - created_ms / 1000)
