"""GET /metrics, in the Prometheus text format."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response

from labs_analytics import metrics
from labs_analytics.api.dependencies import State
from labs_analytics.api.errors import ErrorBody
from labs_analytics.api.health import check_postgres
from labs_analytics.api.pipeline import read_stream_state
from labs_analytics.errors import Unauthenticated

router = APIRouter(tags=["health"])


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
    metrics.POSTGRES_UP.set(1 if await check_postgres(state) else 0)
    stream = await read_stream_state(state)
    if stream is None:
        metrics.REDIS_UP.set(0)
        return
    metrics.REDIS_UP.set(1)
    if stream.backlog is not None:
        metrics.BACKLOG_EVENTS.set(stream.backlog)
    metrics.PENDING_ENTRIES.set(stream.pending)
    metrics.OLDEST_ENTRY_AGE.set(stream.oldest_entry_age_seconds)
