"""``AnalyticsMiddleware``: one event per HTTP request of a Starlette or FastAPI app.

::

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(AnalyticsMiddleware, client=analytics)

Each request tracks ``http.request`` (or ``event_name``) with ``method``,
``route`` (the template that matched, e.g. ``/clubs/{club_id}``: what
Starlette's router leaves in ``scope["route"]``, never the raw path, so ids do
not explode the number of distinct values; ``None`` when no route matched),
``status_code``, ``duration_ms`` and, when the app raised, ``error_type``
(the status is then 500, as the server error middleware will answer).

It is plain ASGI: it imports nothing from Starlette and works with either
client (``track()`` is a plain call on both). ``user`` may be a function of the
ASGI scope returning the user id (e.g. from ``scope["state"]`` or a header).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labs_analytics.client._core import BaseClient

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AnalyticsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        client: BaseClient,
        event_name: str = "http.request",
        exclude_routes: Collection[str] = (),
        user: Callable[[Scope], str | None] | None = None,
    ) -> None:
        self.app = app
        self.client = client
        self.event_name = event_name
        self.exclude_routes = frozenset(exclude_routes)
        self.user = user

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_code = 500  # if the app raises before answering, that is what the client gets

        async def send_and_watch(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = int(message["status"])
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_and_watch)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._track(scope, status_code, start, error)

    def _track(
        self, scope: Scope, status_code: int, start: float, error: BaseException | None
    ) -> None:
        # The router put the matched route into this same scope while routing.
        route = getattr(scope.get("route"), "path", None)
        if route in self.exclude_routes:
            return
        properties: dict[str, Any] = {
            "method": scope.get("method"),
            "route": route,
            "status_code": status_code,
            "duration_ms": round((time.perf_counter() - start) * 1000, 3),
        }
        if error is not None:
            properties["error_type"] = type(error).__qualname__
        user = None
        if self.user is not None:
            try:
                user = self.user(scope)
            except Exception:
                user = None
        self.client.track(self.event_name, user=user, properties=properties)
