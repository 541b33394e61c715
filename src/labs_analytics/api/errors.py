"""One JSON error shape for everything the API answers with a 4xx or 5xx."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from labs_analytics import metrics
from labs_analytics.errors import AppError
from labs_analytics.logs import get_logger

log = get_logger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 406: "not_acceptable"}


class ErrorBody(BaseModel):
    error: str = Field(description="A stable, machine-readable code.", examples=["invalid_events"])
    message: str = Field(description="What is wrong, for a person.")
    details: list[dict[str, Any]] = Field(
        default_factory=list,
        description="For invalid events: one item per problem, with `index` (the event's "
        "position in the request), `field`, `message` and `type`.",
    )


class JsonErrorResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"error": code, "message": message, "details": details or []}


def app_error_body(exc: AppError) -> bytes:
    """The JSON body for a client error, counted as a rejected request."""
    metrics.REQUESTS_REJECTED.labels(exc.code).inc()
    return orjson.dumps(exc.to_body())


def unexpected_error_body(exc: Exception) -> bytes:
    """The 500 body for a bug of ours, logged with its traceback (call it in the except)."""
    log.error("request.unhandled_error", error=f"{type(exc).__name__}: {exc}", exc_info=True)
    return orjson.dumps(_body("internal_error", "an unexpected error occurred"))


async def _app_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    return Response(
        app_error_body(exc),
        status_code=exc.status_code,
        headers=exc.headers,
        media_type="application/json",
    )


async def _request_validation(_request: Request, exc: Exception) -> JsonErrorResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"], "type": err["type"]}
        for err in exc.errors()
    ]
    return JsonErrorResponse(_body("invalid_request", "the request is invalid", details), 422)


async def _http_error(_request: Request, exc: Exception) -> JsonErrorResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return JsonErrorResponse(
        _body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


def install_error_handlers(app: FastAPI) -> None:
    """The framework's answers to the errors a client causes (4xx, and our 503s)."""
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_error)


class UnexpectedErrorMiddleware:
    """The one place a bug becomes a 500: logged once, the same JSON body on every path.

    Installed as the outermost of the app's own middleware, so it sees what
    the fast path and the framework's routes raise alike. (An ``Exception``
    handler on the app would answer too, but Starlette re-raises after it, so
    the server logs the same traceback a second time.) If the answer had
    already begun, nothing more can be sent: the error is logged and the
    server ends the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            if scope["type"] != "http":
                raise
            body = unexpected_error_body(exc)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            with contextlib.suppress(Exception):  # the answer had begun: nothing to add
                await send({"type": "http.response.start", "status": 500, "headers": headers})
                await send({"type": "http.response.body", "body": body})
