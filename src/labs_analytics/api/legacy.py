"""`POST /analytics` and `/analytics/`: the Penn Labs legacy analytics API, unchanged.

django-labs-accounts' client posts here with a Platform access token (see
``auth.platform``); the body and its mapping are in ``ingest.legacy``. Both
paths answer (no redirect: a client posting to one must not be sent to the
other), on the fast path with a documented FastAPI twin, and keep the ingest
guarantees: 200 only once the events are durable (Redis, or the spool when
Redis is away), a rate limit per token subject.

Answers: 200 ``{"message": "Data stored successfully!"}`` as the legacy engine
gave; errors ``{"detail": "...", "error": "<code>"}`` (``detail``, as the
legacy engine's FastAPI errors had it).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from starlette.types import Receive, Scope

from labs_analytics import metrics
from labs_analytics.api.fast_path import FastResponse, FastRoute, framework_endpoint
from labs_analytics.api.state import AppState
from labs_analytics.auth.keys import ApiKey
from labs_analytics.auth.keys import Scope as KeyScope
from labs_analytics.auth.platform import PlatformClient
from labs_analytics.errors import AppError, Forbidden
from labs_analytics.events import now
from labs_analytics.ingest import legacy
from labs_analytics.ingest.body import IngestHeaders, read_body
from labs_analytics.ingest.limits import RequestMeter

PATHS = ("/analytics", "/analytics/")
MAX_BODY_BYTES = 1024 * 1024


def error_body(exc: AppError) -> FastResponse:
    metrics.REQUESTS_REJECTED.labels(exc.code).inc()
    body: dict[str, Any] = {"detail": exc.message, "error": exc.code}
    if exc.details:
        body["details"] = exc.details
    headers = tuple((name.lower().encode(), value.encode()) for name, value in exc.headers.items())
    return FastResponse(exc.status_code, orjson.dumps(body), headers)


def _subject_key(client: PlatformClient, product: str) -> ApiKey:
    """The token's subject as the ingest service's caller: its rate limit is the
    deployment's default, counted per subject and product."""
    return ApiKey(
        key_id=f"platform:{client.subject}:{product}",
        product=product,
        scopes=frozenset({KeyScope.INGEST}),
        key_hash="",
    )


async def accept(state: AppState, scope: Scope, receive: Receive) -> bytes:
    headers = IngestHeaders.from_scope(scope["headers"])
    client = await state.platform.verify(headers.authorization)
    ingest = state.ingest
    raw = await read_body(receive, headers, limit=MAX_BODY_BYTES, meter=RequestMeter())
    body = legacy.parse_body(raw, ingest.limits)
    product = legacy.product_of(body)
    if product not in client.products:  # before any work on the data
        raise Forbidden(
            f"this token's subject may write {', '.join(sorted(client.products))}, "
            f"not {product} (product {body.product})"
        )
    records = legacy.to_records(body, subject=client.subject, received_at=now())
    key = _subject_key(client, product)
    left = ingest.limited_keys.seconds_left(key.key_id)
    if left is not None:
        raise ingest.rate_limited(key, left)
    await ingest.enqueue(records, key)
    return legacy.ANSWER


async def _fast(state: AppState, scope: Scope, receive: Receive) -> FastResponse:
    return FastResponse(200, await accept(state, scope, receive))


FAST_ROUTES = tuple(FastRoute("POST", path, _fast, render_error=error_body) for path in PATHS)

router = APIRouter(tags=["legacy"])

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {"detail": {"type": "string"}, "error": {"type": "string"}},
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": '`{"message": "Data stored successfully!"}`: every data point is durable.',
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    **{
        status: {"description": text, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
        for status, text in (
            (400, "Not JSON."),
            (401, "No token, or not a valid, unexpired Platform access token."),
            (403, "The token's subject may not write this product."),
            (413, "Body over 1 MiB."),
            (422, "A field is invalid (`details` names it); nothing was stored."),
            (429, "Over the rate limit; retry after `Retry-After` seconds."),
            (503, "Nothing could be made durable, or Platform's keys are not known yet; retry."),
        )
    },
}


for _path in PATHS:
    router.add_api_route(
        _path,
        framework_endpoint(accept, error_body),
        methods=["POST"],
        status_code=200,
        responses=_RESPONSES,
        summary="Penn Labs legacy analytics (django-labs-accounts)",
        description='`{"product": <0-10>, "pennkey": str | null, "timestamp": <unix seconds>, '
        '"data": [{"key": str, "value": str}, ...]}` with `Authorization: Bearer <Platform '
        "access token>`. Each data point is one event; see the README's mapping.",
        include_in_schema=_path == "/analytics/",
        name=f"legacy{_path.replace('/', '_')}",
    )
