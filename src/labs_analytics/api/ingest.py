"""POST /v1/events.

Two ways in, one behaviour: ``serve_ingest`` answers server-to-server requests
straight from the ASGI app (see ``api.app.LabsAnalyticsApp``), and the
documented FastAPI route answers the rest (browsers, through CORS).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.types import Receive, Scope, Send

from labs_analytics.api.dependencies import authorize
from labs_analytics.api.errors import ErrorBody, app_error_body, unexpected_error_body
from labs_analytics.api.state import AppState
from labs_analytics.auth.keys import Scope as KeyScope
from labs_analytics.errors import AppError
from labs_analytics.events import IngestResponse
from labs_analytics.ingest.body import IngestHeaders, read_body

INGEST_PATH = "/v1/events"

router = APIRouter(tags=["ingest"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Body is not valid JSON or not valid gzip."},
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
        "description": "Invalid events; `details` names the index and "
        "field of each problem. Nothing of the request was queued.",
    },
    503: {
        "model": ErrorBody,
        "description": "The queue cannot take events right now; nothing "
        "was acknowledged. Retry after `Retry-After` seconds.",
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
    # Serves the requests `serve_ingest` leaves to the framework: those from
    # browsers, which need the CORS middleware.
    headers = IngestHeaders.from_scope(request.scope["headers"])
    body = await ingest(request.app.state.labs, headers, request.receive)
    return Response(body, status_code=202, media_type="application/json")


async def ingest(state: AppState, headers: IngestHeaders, receive: Receive) -> bytes:
    """Authorize, read, validate and queue one request; the 202 body, or an AppError."""
    key = await authorize(state, headers.authorization, KeyScope.INGEST)
    raw = await read_body(receive, headers, limit=state.settings.max_body_bytes)
    ids = await state.ingest.accept(raw, key)
    return orjson.dumps({"accepted": len(ids), "ids": ids})


def takes_fast_path(scope: Scope) -> IngestHeaders | None:
    """The headers of a request ``serve_ingest`` answers; None for anything else.

    Requests with an ``Origin`` come from browsers: they go through the
    framework and its CORS middleware.
    """
    if (
        scope["type"] != "http"
        or scope["path"] != INGEST_PATH
        or scope["method"] != "POST"
        or scope.get("root_path")
    ):
        return None
    headers = IngestHeaders.from_scope(scope["headers"])
    return None if headers.origin is not None else headers


async def serve_ingest(
    state: AppState, headers: IngestHeaders, receive: Receive, send: Send
) -> None:
    """POST /v1/events as a bare ASGI handler: the hot path.

    The framework's per-request layers (middleware, routing, exception
    handlers, Request objects) cost more CPU than the work of ingest itself
    (BENCHMARKS.md). This answers exactly as the documented route and the
    error handlers would: the same bodies, status codes and headers.
    """
    response_headers = [(b"content-type", b"application/json")]
    try:
        body = await ingest(state, headers, receive)
        status = 202
    except AppError as exc:
        body, status = app_error_body(exc), exc.status_code
        response_headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    except Exception as exc:
        body, status = unexpected_error_body(exc), 500
    response_headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})
