"""The errors a client can cause or meet, as types.

Services raise these; one handler in ``api.app`` turns every one of them into
the same JSON shape::

    {"error": "<code>", "message": "<what is wrong>", "details": [...]}

AppError
├── MalformedBody          400  not JSON, not gzip, not the expected shape
├── Unauthenticated        401  no key, or a key we do not know
├── Forbidden              403  key lacks the scope, or names another product
├── PayloadTooLarge        413  body or batch over the limit
├── UnsupportedEncoding    415  a Content-Encoding other than gzip or identity
├── InvalidEvents          422  events failed validation (details name index and field)
├── RateLimitExceeded      429  the key sent more events, or more refused work, than its
│                               rate allows (Retry-After set)
├── QueueError             500  Redis refused this request's events with an error that is
│                               not an outage (a script error, a misconfigured key)
└── QueueUnavailable       503  the events cannot be made durable, or the backlog is
                                too long (Retry-After set)
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    status_code: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def to_body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "details": self.details}


class MalformedBody(AppError):
    status_code = 400
    code = "malformed_body"


class Unauthenticated(AppError):
    status_code = 401
    code = "unauthenticated"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedEncoding(AppError):
    status_code = 415
    code = "unsupported_encoding"


class InvalidEvents(AppError):
    status_code = 422
    code = "invalid_events"


class RateLimitExceeded(AppError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_seconds: int, limit_per_second: float) -> None:
        super().__init__(
            message,
            details=[{"limit_events_per_second": limit_per_second}],
            headers={"Retry-After": str(retry_after_seconds)},
        )


class QueueError(AppError):
    status_code = 500
    code = "queue_error"


class QueueUnavailable(AppError):
    status_code = 503
    code = "queue_unavailable"

    def __init__(self, message: str, *, retry_after_seconds: int, code: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_seconds)})
        if code is not None:
            self.code = code
