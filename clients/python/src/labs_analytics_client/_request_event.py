"""The one event every web integration records per request (ASGI, Django, Flask)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from labs_analytics_client._core import BaseClient

logger = logging.getLogger("labs_analytics_client")

Request = TypeVar("Request")


class UserOf(Generic[Request]):
    """An integration's ``user`` function of the request, made safe to call.

    Analytics must never take a request down: when the function raises, the
    user is ``None`` and the request goes on. The first failure is logged
    (``analytics.user_function_failed``, with its traceback), later ones not,
    so a broken function cannot flood the logs.
    """

    def __init__(self, function: Callable[[Request], str | None] | None) -> None:
        self.function = function
        self._warned = False

    def __call__(self, request: Request) -> str | None:
        if self.function is None:
            return None
        try:
            return self.function(request)
        except Exception:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "analytics.user_function_failed function=%s: the request is tracked "
                    "without a user (logged once)",
                    getattr(self.function, "__qualname__", repr(self.function)),
                    exc_info=True,
                )
            return None


def track_request(
    client: BaseClient,
    event_name: str,
    *,
    method: str | None,
    route: str | None,
    status_code: int,
    start: float,
    error: BaseException | None,
    user: str | None,
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
    client.track(event_name, user=user, properties=properties)
