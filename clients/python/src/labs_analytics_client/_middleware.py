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

In a mounted application (``app.mount("/sub", sub)``, ``Mount``), ``route``
keeps the mount's path: ``/sub/things/{thing_id}``, and ``exclude_routes``
matches that full template. A ``root_path`` the server was given (a proxy's
prefix, ``uvicorn --root-path``) is not part of it: only what routing added
below this middleware is.

At the ASGI ``lifespan`` shutdown it delivers what its client has queued
(``flush()``, waiting at most ``shutdown_timeout``; the sync client's in a
thread, so the loop is not blocked), after the application's own shutdown ran
(whatever that tracked goes too) and before the server is told the shutdown
is complete: uvicorn then ends the process without running ``atexit`` hooks.
The client stays open (a test client may start the app again); a client the
application closed itself is left alone.

It is plain ASGI: it imports nothing from Starlette and works with either
client (``track()`` is a plain call on both). ``user`` may be a function of the
ASGI scope returning the user id (e.g. from ``scope["state"]`` or a header),
called once the app answered; one that raises leaves the event without a user
(the first failure is logged, ``analytics.user_function_failed``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

from labs_analytics_client._async_client import AsyncAnalyticsClient
from labs_analytics_client._client import AnalyticsClient
from labs_analytics_client._request_event import UserOf, track_request

if TYPE_CHECKING:
    from labs_analytics_client._core import BaseClient

logger = logging.getLogger("labs_analytics_client")

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
        self._user_of: UserOf[Scope] = UserOf(user)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Routing rewrites root_path (and app) in this scope as it enters mounts:
        # what they were here tells a mount's prefix from the server's root_path.
        root_path = scope.get("root_path", "")
        app = scope.get("app")
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
            self._track(scope, _route_template(scope, root_path, app), status_code, start, error)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_after_flush(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self._flush_at_shutdown()
            await send(message)

        await self.app(scope, receive, send_after_flush)

    async def _flush_at_shutdown(self) -> None:
        client = self.client
        if client.is_closed or not client.enabled:
            return  # closed by the application's own shutdown: delivered or reported there
        try:
            if isinstance(client, AsyncAnalyticsClient):
                pending = await client.flush()
            elif isinstance(client, AnalyticsClient):
                pending = await asyncio.get_running_loop().run_in_executor(None, client.flush)
            else:
                return
        except Exception:
            logger.exception("analytics.shutdown_flush_failed")
            return
        if pending:
            logger.warning(
                "analytics.shutdown_flush_incomplete pending=%d: events still undelivered "
                "after shutdown_timeout when the server shut down",
                pending,
            )

    def _track(
        self,
        scope: Scope,
        route: str | None,
        status_code: int,
        start: float,
        error: BaseException | None,
    ) -> None:
        if route in self.exclude_routes:
            return
        track_request(
            self.client,
            self.event_name,
            method=scope.get("method"),
            route=route,
            status_code=status_code,
            start=start,
            error=error,
            user=self._user_of(scope),
        )


def _route_template(scope: Scope, root_path: str, app: object) -> str | None:
    """The template of the matched route, with the paths of the mounts above it.

    The router leaves the matched route in this same scope, and each mount
    adds the path it matched to ``root_path``. That path is concrete
    (``/orgs/42``), so the mounts' own templates are found again by matching
    it against the routes of the application this middleware wraps.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    inner_root_path = scope.get("root_path", "")
    if inner_root_path == root_path or not inner_root_path.startswith(root_path):
        return None if path is None else str(path)  # not mounted below this middleware
    prefix, last_mount = _mount_template(
        inner_root_path[len(root_path) :], getattr(app, "routes", ())
    )
    if route is last_mount or (route is None and last_mount is not None and not last_mount.routes):
        return prefix  # a mounted app with no routes of its own (static files)
    return None if path is None else prefix + str(path)


def _mount_template(mounted: str, routes: Iterable[Any]) -> tuple[str, Any]:
    """Turn the concrete path the mounts matched back into their templates."""
    template, last = "", None
    while mounted:
        for route in routes:
            regex = getattr(route, "path_regex", None)
            if regex is None or not hasattr(route, "routes"):
                continue  # not a mount
            match = regex.match(mounted + "/")
            rest = match.groupdict().get("path") if match else None
            if rest is None:
                continue
            template += str(route.path)
            mounted = mounted[len(mounted) - len(rest) :]
            routes, last = route.routes, route
            break
        else:  # not found (a mount made another way): keep what was matched
            return template + mounted, None
    return template, last
