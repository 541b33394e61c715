"""POST /v1/events.

Two ways in, one behaviour: ``FAST_ROUTE`` is answered by the fast path
(``api.fast_path``) before the framework's layers, and the documented FastAPI
route is what the OpenAPI document describes and what answers when the fast
path is off. Both call ``ingest``.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.types import Receive, Scope

from labs_analytics.api.dependencies import authorize
from labs_analytics.api.errors import ErrorBody
from labs_analytics.api.fast_path import FastResponse, FastRoute
from labs_analytics.api.state import AppState
from labs_analytics.auth.keys import Scope as KeyScope
from labs_analytics.events import IngestResponse
from labs_analytics.ingest.body import MAX_GZIP_MEMBERS, IngestHeaders
from labs_analytics.ingest.problems import MAX_LISTED_PROBLEMS

INGEST_PATH = "/v1/events"

router = APIRouter(tags=["ingest"])

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before sending again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorBody,
        "description": "Body is not valid JSON, not valid gzip, or gzip of more than "
        f"{MAX_GZIP_MEMBERS} members.",
    },
    401: {"model": ErrorBody, "description": "Missing, unknown or revoked API key."},
    403: {
        "model": ErrorBody,
        "description": "Key lacks the `ingest` scope, or an event names another product.",
    },
    413: {
        "model": ErrorBody,
        "description": "Body over 1 MiB (after decompression) or more than 1000 events.",
    },
    415: {"model": ErrorBody, "description": "Content-Encoding other than gzip."},
    422: {
        "model": ErrorBody,
        "description": "Invalid events; nothing of the request was queued. `details` names "
        f"the index and field of the first {MAX_LISTED_PROBLEMS} problems; when there are more, "
        "a last item of type `too_many_problems` gives the totals (`problems`, "
        "`invalid_events`) and the index of every invalid event (`invalid_indexes`). Integers "
        "must lie in [-2^63, 2^64-1] (send larger ones as strings); timestamps are unix seconds "
        "or RFC 3339, from 1970-01-01T00:00:00Z to 24 h ahead.",
    },
    429: {
        "model": ErrorBody,
        "description": "The key sent more events per second than its rate, or more refused "
        "work: a refused request (400, 403 for another product, 413, 415, 422) costs "
        "max(1, its events, its KiB). Retry after `Retry-After` seconds; until then the key is "
        "refused without its body being read.",
        "headers": _RETRY_AFTER,
    },
    500: {
        "model": ErrorBody,
        "description": "An error of ours (`internal_error`), or the queue refused these events "
        "with an error that is not an outage (`queue_error`); nothing was acknowledged.",
    },
    503: {
        "model": ErrorBody,
        "description": "The queue cannot take events right now; nothing "
        "was acknowledged (`error`: `queue_unavailable` while the queue is down, "
        "`overloaded` while the backlog or Redis's memory is over its limit). Retry after "
        "`Retry-After` seconds.",
        "headers": _RETRY_AFTER,
    },
}

_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    {"$ref": "#/components/schemas/EventIn"},
                    {"$ref": "#/components/schemas/EventBatchIn"},
                ]
            },
            "examples": {
                "one": {
                    "value": {"name": "post.click", "user": "u_123", "properties": {"post_id": 42}}
                },
                "batch": {
                    "value": {
                        "events": [
                            {
                                "event_id": "0192f0c4-8c3a-7cc2-9a1e-3f6d2b1c4e5a",
                                "name": "page.view",
                                "timestamp": "2026-11-27T16:20:00Z",
                                "properties": {"path": "/clubs"},
                            },
                            {"name": "search", "user": "u_123", "properties": {"q": "chess"}},
                        ]
                    }
                },
            },
        }
    },
}


@router.post(
    INGEST_PATH,
    status_code=202,
    response_model=IngestResponse,
    responses=_ERRORS,
    summary="Record events",
    description='One event object, or `{"events": [...]}` with 1 to 1000 events. JSON, '
    "optionally `Content-Encoding: gzip`, at most 1 MiB decompressed. 202 means every event "
    "is durable in the queue; resending an event with the same `event_id` stores it once.",
    openapi_extra={"requestBody": _REQUEST_BODY, "security": [{"HTTPBearer": []}]},
)
async def ingest_events(request: Request) -> Response:
    headers = IngestHeaders.from_scope(request.scope["headers"])
    body = await ingest(request.app.state.labs, headers, request.receive)
    return Response(body, status_code=202, media_type="application/json")


async def ingest(state: AppState, headers: IngestHeaders, receive: Receive) -> bytes:
    """Authorize, read, validate and queue one request; the 202 body, or an AppError."""
    key = await authorize(state, headers.authorization, KeyScope.INGEST)
    ids = await state.ingest.accept(key, headers, receive)
    return orjson.dumps({"accepted": len(ids), "ids": ids})


async def _ingest_fast(state: AppState, scope: Scope, receive: Receive) -> FastResponse:
    body = await ingest(state, IngestHeaders.from_scope(scope["headers"]), receive)
    return FastResponse(202, body)


FAST_ROUTE = FastRoute("POST", INGEST_PATH, _ingest_fast)
