"""POST /v1/events."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.routing import Route

from labs_analytics.api.dependencies import authorize
from labs_analytics.api.errors import ErrorBody
from labs_analytics.api.state import AppState
from labs_analytics.auth.keys import Scope
from labs_analytics.events import IngestResponse
from labs_analytics.ingest.body import read_body

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
    "/v1/events",
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
    # The hot path: no FastAPI dependencies, a pre-rendered response, and
    # served through `lean_route` below. FastAPI's per-request machinery cost
    # more than the work itself (BENCHMARKS.md).
    state: AppState = request.app.state.labs
    key = await authorize(state, request.headers.get("authorization"), Scope.INGEST)
    raw = await read_body(request, limit=state.settings.max_body_bytes)
    ids = await state.ingest.accept(raw, key)
    return Response(
        orjson.dumps({"accepted": len(ids), "ids": ids}),
        status_code=202,
        media_type="application/json",
    )


# The same endpoint as a plain Starlette route, placed before the documented
# FastAPI one: it skips FastAPI's per-request parameter solving (cookies,
# query, headers), which this endpoint does not use. The FastAPI route stays
# for the OpenAPI document, which describes exactly this behaviour.
lean_route = Route("/v1/events", ingest_events, methods=["POST"])
