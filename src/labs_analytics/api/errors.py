"""One JSON error shape for everything the API answers with a 4xx or 5xx."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

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


async def _app_error(_request: Request, exc: Exception) -> JsonErrorResponse:
    assert isinstance(exc, AppError)
    metrics.REQUESTS_REJECTED.labels(exc.code).inc()
    return JsonErrorResponse(exc.to_body(), status_code=exc.status_code, headers=exc.headers)


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


async def _unexpected(_request: Request, exc: Exception) -> JsonErrorResponse:
    log.error("request.unhandled_error", error=f"{type(exc).__name__}: {exc}", exc_info=True)
    return JsonErrorResponse(_body("internal_error", "an unexpected error occurred"), 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
