"""The fast path is a declared layer: innermost, matched by a registry, errors in one place."""

from __future__ import annotations

import logging

import orjson
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from labs_analytics.api import legacy, segment
from labs_analytics.api.app import FAST_ROUTES, create_app
from labs_analytics.api.errors import UnexpectedErrorMiddleware
from labs_analytics.api.fast_path import FastPathMiddleware, FastResponse, FastRoute
from labs_analytics.api.ingest import INGEST_PATH
from labs_analytics.api.state import AppState
from labs_analytics.settings import Settings

SETTINGS = Settings(_env_file=None, cors_origins=["https://clubs.example.edu"])


def test_the_fast_path_is_the_innermost_middleware() -> None:
    # Every middleware outside the fast path sees its requests; one inside it
    # (between it and the router) would be skipped by every fast route. If
    # this fails, a middleware was added where the fast path bypasses it.
    layers = [middleware.cls for middleware in create_app(SETTINGS).user_middleware]
    assert layers[-1] is FastPathMiddleware, layers
    assert layers.count(FastPathMiddleware) == 1
    # and the one place for 500s is outside everything of ours
    assert layers[0] is UnexpectedErrorMiddleware, layers


def test_without_the_fast_path_there_is_no_such_layer() -> None:
    app = create_app(Settings(_env_file=None, fast_path=False))
    assert FastPathMiddleware not in [middleware.cls for middleware in app.user_middleware]


def test_ingest_and_the_compatibility_routes_are_registered_fast_routes() -> None:
    registered = [(route.method, route.path) for route in FAST_ROUTES]
    paths = [INGEST_PATH, *segment.BATCH_PATHS, *segment.MESSAGE_PATHS, *legacy.PATHS]
    assert registered == [("POST", path) for path in paths]


async def _nothing(state: AppState, scope: Scope, receive: Receive) -> FastResponse:
    return FastResponse(200, b"{}")


def _http(method: str, path: str, root_path: str = "") -> Scope:
    return {"type": "http", "method": method, "path": path, "root_path": root_path}


def test_routes_are_matched_by_method_and_path_under_any_root_path() -> None:
    route = FastRoute("POST", "/v1/events", _nothing)
    layer = FastPathMiddleware(Starlette(), routes=[route])

    assert layer.match(_http("POST", "/v1/events")) is route
    assert layer.match(_http("POST", "/analytics/v1/events", root_path="/analytics")) is route
    assert layer.match(_http("POST", "/v1/events", root_path="/analytics")) is route
    assert layer.match(_http("GET", "/v1/events")) is None
    assert layer.match(_http("POST", "/v1/events/")) is None
    assert layer.match(_http("POST", "/other/v1/events", root_path="/analytics")) is None
    assert layer.match({"type": "websocket", "path": "/v1/events"}) is None
    assert layer.match({"type": "lifespan"}) is None


def test_two_routes_for_one_method_and_path_are_refused() -> None:
    twice = [FastRoute("POST", "/v1/x", _nothing), FastRoute("POST", "/v1/x", _nothing)]
    with pytest.raises(ValueError, match="two fast routes"):
        FastPathMiddleware(Starlette(), routes=twice)


def _broken(request: object) -> None:
    raise RuntimeError("a bug")


async def _call(app: Starlette, path: str) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "app": app,
    }
    await app(scope, receive, send)  # never raises: the server would log it again
    return sent


async def test_a_bug_is_one_json_500_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    app = Starlette(
        routes=[Route("/broken", _broken)], middleware=[Middleware(UnexpectedErrorMiddleware)]
    )
    with caplog.at_level(logging.ERROR):
        sent = await _call(app, "/broken")

    start, body = sent
    assert start["status"] == 500
    assert (b"content-type", b"application/json") in start["headers"]
    assert orjson.loads(body["body"]) == {
        "error": "internal_error",
        "message": "an unexpected error occurred",
        "details": [],
    }
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert [record.getMessage() for record in errors] == ["request.unhandled_error"]


async def test_a_bug_after_the_answer_began_sends_nothing_more() -> None:
    async def half_answer(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("a bug mid-answer")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start" and sent:
            raise RuntimeError("the server refuses a second start")
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    await UnexpectedErrorMiddleware(half_answer)({"type": "http"}, receive, send)
    assert [message["status"] for message in sent] == [200]
