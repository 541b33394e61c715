"""Segment-compatible routes: `POST /v1/batch`, `/v1/track`, … (see ``ingest.segment``).

A client built for Segment's HTTP API works against us by changing its host.
Every route is on the fast path (``FAST_ROUTES``) and has a documented
FastAPI twin for the OpenAPI document and for ``FAST_PATH=false``; both call
``accept``, and both answer errors in Segment's shape,
``{"success": false, "code": …, "message": …}`` (segment-analytics-python
retries, eleven times, any error body without a ``code``).

The write key is one of our ingest keys, taken from the first of: HTTP Basic
(the username), ``Authorization: Bearer``, ``X-Write-Key``, the body's
``writeKey``. A key in a header is checked before the body is read; the
body's only after (bounded as every body is).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.types import Receive, Scope

from labs_analytics import metrics
from labs_analytics.api.dependencies import authorize
from labs_analytics.api.fast_path import FastResponse, FastRoute, framework_endpoint
from labs_analytics.api.state import AppState
from labs_analytics.auth.keys import ApiKey
from labs_analytics.auth.keys import Scope as KeyScope
from labs_analytics.errors import AppError, MalformedBody, Unauthenticated
from labs_analytics.events import now
from labs_analytics.ingest import segment
from labs_analytics.ingest.body import IngestHeaders, read_body
from labs_analytics.ingest.limits import RequestMeter

BATCH_PATHS = ("/v1/batch", "/v1/import", "/v1/b")
MESSAGE_PATHS = {f"/v1/{kind}": kind for kind in segment.MESSAGE_TYPES} | {
    f"/v1/{short}": kind for short, kind in segment.SHORT_TYPES.items()
}
# The OpenAPI document lists the long forms; the aliases answer the same.
DOCUMENTED_PATHS = frozenset({"/v1/batch", *(f"/v1/{kind}" for kind in segment.MESSAGE_TYPES)})


class InvalidMessages(AppError):
    """Every message of the request was refused (one of several would not be)."""

    status_code = 400
    code = "invalid_messages"


def error_body(exc: AppError) -> FastResponse:
    """Segment's error shape, counted as a rejected request like the API's own."""
    metrics.REQUESTS_REJECTED.labels(exc.code).inc()
    body: dict[str, Any] = {"success": False, "code": exc.code, "message": exc.message}
    if exc.details:
        body["errors"] = exc.details
    headers = tuple((name.lower().encode(), value.encode()) for name, value in exc.headers.items())
    return FastResponse(exc.status_code, orjson.dumps(body), headers)


async def accept(state: AppState, scope: Scope, receive: Receive, route_type: str | None) -> bytes:
    """Authorize, read, map and queue one request; the 200 body, or an AppError."""
    headers = IngestHeaders.from_scope(scope["headers"])
    header_key = _header_write_key(headers.authorization, scope["headers"])
    ingest = state.ingest
    key = await _authorize(state, header_key) if header_key is not None else None
    if key is not None:
        _refuse_if_limited(state, key)
    meter = RequestMeter()
    try:
        raw = await read_body(receive, headers, limit=segment.MAX_BODY_BYTES, meter=meter)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedBody(f"body is not valid JSON: {exc}") from exc
    except AppError:
        if key is not None:
            await ingest.charge_refused_work(key, meter)
        raise
    if key is None:
        key = await _authorize(state, segment.write_key_of(data))
        _refuse_if_limited(state, key)
    try:
        messages, shared_context = segment.messages_of(data, route_type)
        meter.events = len(messages)
        mapped = segment.map_messages(
            messages,
            shared_context,
            product=key.product,
            received_at=now(),
            limits=ingest.limits,
            raw=raw,
            route_type=route_type,
            sent_at=data.get("sentAt"),
        )
        if not mapped.records:
            raise InvalidMessages(
                "no message of the request could be accepted",
                details=[r.as_json() for r in mapped.refusals[: segment.MAX_LISTED_REFUSALS]],
            )
    except (segment.NotAMessage, InvalidMessages) as exc:
        await ingest.charge_refused_work(key, meter)
        if isinstance(exc, InvalidMessages):
            raise
        raise MalformedBody(str(exc)) from exc
    # In parts no larger than a native request: a key's token bucket holds at
    # least that many. Ids are deterministic (messageId), so when a later part
    # is refused and the client resends everything, the earlier parts are
    # stored once.
    step = ingest.max_events_per_append
    for start in range(0, len(mapped.records), step):
        await ingest.enqueue(mapped.records[start : start + step], key)
    return segment.success_body(mapped)


def _header_write_key(
    authorization: str | None, raw_headers: list[tuple[bytes, bytes]]
) -> str | None:
    """The key in the headers: Basic's username, else a Bearer token, else X-Write-Key."""
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise Unauthenticated("the Basic credentials are not valid base64") from None
            return decoded.partition(":")[0]
        if scheme == "bearer":
            return credentials.strip()
    for name, value in raw_headers:
        if name == b"x-write-key":
            return value.decode("latin-1").strip()
    return None


async def _authorize(state: AppState, write_key: str | None) -> ApiKey:
    if not write_key:
        raise Unauthenticated(
            "missing write key: send it as the Basic username, a Bearer token, "
            "X-Write-Key or the body's writeKey"
        )
    return await authorize(state, f"Bearer {write_key}", KeyScope.INGEST)


def _refuse_if_limited(state: AppState, key: ApiKey) -> None:
    left = state.ingest.limited_keys.seconds_left(key.key_id)
    if left is not None:
        refusal = state.ingest.rate_limited(key, left)
        refusal.headers["Connection"] = "close"
        raise refusal


# --- the routes -------------------------------------------------------------------


def _fast_handler(route_type: str | None) -> Any:
    async def handle(state: AppState, scope: Scope, receive: Receive) -> FastResponse:
        return FastResponse(200, await accept(state, scope, receive, route_type))

    return handle


FAST_ROUTES = tuple(
    FastRoute("POST", path, _fast_handler(None), render_error=error_body) for path in BATCH_PATHS
) + tuple(
    FastRoute("POST", path, _fast_handler(kind), render_error=error_body)
    for path, kind in MESSAGE_PATHS.items()
)

router = APIRouter(tags=["segment"])

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "success": {"type": "boolean", "const": False},
        "code": {"type": "string"},
        "message": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": '`{"success": true}`; when some messages of a batch were refused, '
        "also `accepted`, `refused` and `refusals` (index, messageId, field, message) — "
        "the others are queued.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    **{
        status: {"description": text, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
        for status, text in (
            (400, "Not JSON, not a message or batch, or every message refused."),
            (401, "No write key, or one we do not know."),
            (403, "The key lacks the `ingest` scope."),
            (413, f"Body over {segment.MAX_BODY_BYTES // (1024 * 1024)} MiB (decompressed)."),
            (415, "Content-Encoding other than gzip."),
            (429, "The key's rate limit; retry after `Retry-After` seconds."),
            (503, "The queue cannot take events now: nothing was accepted; retry."),
        )
    },
}


def _documented_route(path: str, route_type: str | None) -> None:
    async def accept_this_type(state: AppState, scope: Scope, receive: Receive) -> bytes:
        return await accept(state, scope, receive, route_type)

    what = "a batch of Segment messages" if route_type is None else f"one `{route_type}` message"
    router.add_api_route(
        path,
        framework_endpoint(accept_this_type, error_body),
        methods=["POST"],
        status_code=200,
        responses=_RESPONSES,
        summary=f"Segment-compatible: {what}",
        description="Segment's HTTP tracking API: JSON or text/plain, gzip optional. "
        "The write key is an ingest key (Basic username, Bearer, X-Write-Key or the body's "
        "`writeKey`). See the README's mapping table.",
        include_in_schema=path in DOCUMENTED_PATHS,
        name=f"segment_{path.rsplit('/', 1)[-1]}",
    )


for _path in BATCH_PATHS:
    _documented_route(_path, None)
for _path, _kind in MESSAGE_PATHS.items():
    _documented_route(_path, _kind)
