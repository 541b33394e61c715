"""``client.timed(name)``: performance and error tracking for a call or a block.

::

    @client.timed("report.build", kind="weekly")
    def build_report(...): ...            # or async def: awaited and timed

    with client.timed("import.rows") as span:
        span.properties["rows"] = import_rows()   # added to the event

    async with client.timed("search.query"): ...

Each call or block tracks one event with the given properties plus
``duration_ms`` (float, milliseconds), ``success`` (bool) and, when it raised,
``error_type`` (the exception's qualified name) and ``error_message`` (its
text, cut to 1000 characters). The exception propagates unchanged.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar, cast

P = ParamSpec("P")
R = TypeVar("R")
MAX_ERROR_MESSAGE = 1000
logger = logging.getLogger("labs_analytics_client")


class Tracker(Protocol):
    """What a span needs of its client: ``track()`` (both clients have it)."""

    def track(
        self, name: str, user: str | None = None, properties: dict[str, Any] | None = None
    ) -> str | None: ...


class Span:
    """One timed call or block; add to ``properties`` before it ends."""

    __slots__ = ("_ended", "_start", "_timed", "properties")

    def __init__(self, timed: Timed) -> None:
        self._timed = timed
        self.properties: dict[str, Any] = {}
        self._ended = False
        self._start = time.perf_counter()

    def end(self, exc: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        duration_ms = round((time.perf_counter() - self._start) * 1000, 3)
        timed = self._timed
        properties = {**timed.properties, **self.properties}
        properties["duration_ms"] = duration_ms
        properties["success"] = exc is None
        if exc is not None:
            properties["error_type"] = type(exc).__qualname__
            properties["error_message"] = str(exc)[:MAX_ERROR_MESSAGE]
        try:
            timed.client.track(timed.name, user=timed.user, properties=properties)
        except Exception:  # strict mode's InvalidEvent must not replace the caller's result
            if exc is None:
                raise
            logger.exception("analytics.timed_track_failed")


class Timed:
    """A decorator and a (sync or async) context manager; see the module docstring."""

    def __init__(
        self, client: Tracker, name: str, user: str | None, properties: dict[str, Any]
    ) -> None:
        self.client = client
        self.name = name
        self.user = user
        self.properties = properties
        self._spans: list[Span] = []

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(func):
            coroutine_function = func  # narrowed to a coroutine function

            @functools.wraps(func)
            async def timed_coroutine(*args: P.args, **kwargs: P.kwargs) -> Any:
                span = Span(self)
                try:
                    result = await coroutine_function(*args, **kwargs)
                except BaseException as exc:
                    span.end(exc)
                    raise
                span.end(None)
                return result

            return cast(Callable[P, R], timed_coroutine)

        @functools.wraps(func)
        def timed_function(*args: P.args, **kwargs: P.kwargs) -> R:
            span = Span(self)
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                span.end(exc)
                raise
            span.end(None)
            return result

        return timed_function

    # A ``with`` block: one span per entry (nested entries of one object stack up).

    def __enter__(self) -> Span:
        span = Span(self)
        self._spans.append(span)
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._spans.pop().end(exc)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
