"""The one event every web integration records per request (ASGI, Django, Flask)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from labs_analytics_client._core import BaseClient

Request = TypeVar("Request")


def track_request(
    client: BaseClient,
    event_name: str,
    *,
    request: Request,
    method: str | None,
    route: str | None,
    status_code: int,
    start: float,
    error: BaseException | None,
    user: Callable[[Request], str | None] | None,
) -> None:
    """Track ``http.request`` (or ``event_name``): method, route template, status, duration."""
    properties: dict[str, Any] = {
        "method": method,
        "route": route,
        "status_code": status_code,
        "duration_ms": round((time.perf_counter() - start) * 1000, 3),
    }
    if error is not None:
        properties["error_type"] = type(error).__qualname__
    user_id = None
    if user is not None:
        try:
            user_id = user(request)
        except Exception:  # analytics must never take a request down
            user_id = None
    client.track(event_name, user=user_id, properties=properties)
