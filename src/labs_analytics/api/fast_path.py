"""The fast path: a few hot routes answered before the framework's layers.

FastAPI's per-request machinery (routing, dependency resolution, Request
objects, exception middleware) costs more CPU than ingest itself does
(BENCHMARKS.md). Routes registered here are answered by a bare ASGI handler
instead; everything else, and every route when the fast path is off
(``FAST_PATH=false``), takes the framework.

It is a plain ASGI middleware, installed by ``create_app`` as the innermost
one: every middleware added to the app wraps it and so sees fast-path
requests too (``tests/unit/test_fast_path.py`` fails otherwise). A fast route
must answer exactly as its documented FastAPI route would, errors included
(``tests/integration/test_ingest_paths.py`` compares them). ``AppError``\\ s
are rendered by the route (a compatibility route may have its own error
shape); anything else propagates to ``UnexpectedErrorMiddleware``, the one
place a 500 is logged and answered, for both paths.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from labs_analytics.api.errors import app_error_body
from labs_analytics.api.state import AppState
from labs_analytics.errors import AppError

JSON = b"application/json"


@dataclass(frozen=True, slots=True)
class FastResponse:
    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    media_type: bytes = JSON


def json_error(exc: AppError) -> FastResponse:
    """The API's JSON error body, as the framework's ``AppError`` handler answers it."""
    headers = tuple((name.lower().encode(), value.encode()) for name, value in exc.headers.items())
    return FastResponse(exc.status_code, app_error_body(exc), headers)


FastHandler = Callable[[AppState, Scope, Receive], Awaitable[FastResponse]]


@dataclass(frozen=True, slots=True)
class FastRoute:
    """One method and path answered by ``handle``; ``AppError``\\ s by ``render_error``."""

    method: str
    path: str
    handle: FastHandler
    render_error: Callable[[AppError], FastResponse] = field(default=json_error)


# A route's work: the 200's JSON body, or an AppError.
Accept = Callable[[AppState, Scope, Receive], Awaitable[bytes]]


def framework_endpoint(
    accept: Accept, render_error: Callable[[AppError], FastResponse]
) -> Callable[[Request], Awaitable[Response]]:
    """The same work as a FastAPI endpoint, answering exactly as the fast route does:
    what OpenAPI documents, and what serves when the fast path is off."""

    async def endpoint(request: Request) -> Response:
        try:
            body = await accept(request.app.state.labs, request.scope, request.receive)
        except AppError as exc:
            error = render_error(exc)
            return Response(
                error.body,
                status_code=error.status,
                headers={name.decode(): value.decode() for name, value in error.headers},
                media_type=error.media_type.decode(),
            )
        return Response(body, status_code=200, media_type=JSON.decode())

    return endpoint


class FastPathMiddleware:
    """Answers the registered routes itself; passes everything else on."""

    def __init__(self, app: ASGIApp, *, routes: Iterable[FastRoute]) -> None:
        self.app = app
        self.routes: dict[tuple[str, str], FastRoute] = {}
        for route in routes:
            key = (route.method, route.path)
            if key in self.routes:
                raise ValueError(f"two fast routes for {route.method} {route.path}")
            self.routes[key] = route

    def match(self, scope: Scope) -> FastRoute | None:
        if scope["type"] != "http":
            return None
        path: str = scope["path"]
        # Behind a proxy (--root-path) the path includes the root path; the
        # framework's router strips it the same way.
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        return self.routes.get((scope["method"], path))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.match(scope)
        # No state before the lifespan has run: the framework answers (and fails) as usual.
        state: AppState | None = getattr(scope["app"].state, "labs", None) if route else None
        if route is None or state is None:
            await self.app(scope, receive, send)
            return
        try:
            response = await route.handle(state, scope, receive)
        except AppError as exc:
            response = route.render_error(exc)
        body = response.body
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (b"content-type", response.media_type),
                    *response.headers,
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
