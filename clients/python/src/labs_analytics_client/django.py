"""``AnalyticsMiddleware`` for Django: one ``http.request`` event per request.

::

    # settings.py
    # first in the list, so that it times the rest
    MIDDLEWARE = ["labs_analytics_client.django.AnalyticsMiddleware", ...]
    LABS_ANALYTICS = {
        "api_key": "lak_…",                          # or LABS_ANALYTICS_API_KEY
        "base_url": "https://analytics.example.org",  # and any other AnalyticsClient option
        "user": "myproject.analytics.user_id",        # optional: request -> user id
        "exclude_routes": ["/healthz/"],
    }

Each request tracks ``http.request`` (or ``event_name``) with ``method``,
``route``, ``status_code``, ``duration_ms`` and, when a view raised and Django
answered 500, ``error_type``. ``route`` is the URL pattern that matched, with
the prefixes of ``include()``s joined in and a leading ``/``
(``/api/clubs/<int:club_id>/``; a ``re_path`` gives its regex, without
``^``): Django's
``request.resolver_match.route``, never the raw path. ``None`` when no
pattern matched (a 404 from the resolver).

``LABS_ANALYTICS`` holds the middleware's own keys (``client``,
``event_name``, ``exclude_routes``, ``user``) and, unless ``client`` is given,
the options of the ``AnalyticsClient`` made once per process for it.
``client`` and ``user`` may be objects or dotted paths. A subclass may instead
pass ``client=`` (and the other keys) to ``__init__``.

The user: ``user(request)`` is called once per request, in ``process_view``,
right before the view (every middleware's request phase has run, so
``request.user`` is set), and the view runs inside ``scope(user=…)``: a
``track()`` in the view, or in code it calls, gets that user without
``user=``. The ``http.request`` event gets the same value (when no view was
reached, as for a 404 from the resolver, the function is called at the end
instead). A function that raises never breaks the request: the user is
``None``, and the first failure is logged (``analytics.user_function_failed``).

Draining: the client is an ordinary ``AnalyticsClient``, so the SDK's exit
hook delivers what is queued when the process ends (a gunicorn sync worker
leaves through ``sys.exit`` on ``SIGTERM``, running it); after a ``fork()``
(``gunicorn --preload``) each worker starts with a fresh queue and thread.

The middleware is synchronous; under ASGI, Django adapts it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase
from django.utils.module_loading import import_string

from labs_analytics_client._client import AnalyticsClient
from labs_analytics_client._core import BaseClient
from labs_analytics_client._request_event import UserOf, track_request
from labs_analytics_client._scope import Scope

__all__ = ["AnalyticsMiddleware", "settings_client"]

SETTING = "LABS_ANALYTICS"
_MIDDLEWARE_KEYS = frozenset({"client", "event_name", "exclude_routes", "user"})
# Where process_exception leaves the view's exception for __call__ to read.
_ERROR_ATTRIBUTE = "_labs_analytics_error"
# Where process_view leaves the user and the scope it opened.
_VIEW_ATTRIBUTE = "_labs_analytics_view"

_client_lock = threading.Lock()
_settings_client: AnalyticsClient | None = None


def _resolve(value: Any) -> Any:
    return import_string(value) if isinstance(value, str) else value


def _configuration() -> Mapping[str, Any]:
    config = getattr(settings, SETTING, {})
    if not isinstance(config, Mapping):
        raise ImproperlyConfigured(f"settings.{SETTING} must be a dict")
    return config


def settings_client() -> BaseClient:
    """The client ``settings.LABS_ANALYTICS`` describes: its ``client``, or one made once."""
    global _settings_client
    config = _configuration()
    options = {key: value for key, value in config.items() if key not in _MIDDLEWARE_KEYS}
    if config.get("client") is not None:
        if options:
            raise ImproperlyConfigured(
                f"settings.{SETTING}: give either 'client' or client options, not both "
                f"(got {sorted(options)})"
            )
        client = _resolve(config["client"])
        if not isinstance(client, BaseClient):
            raise ImproperlyConfigured(f"settings.{SETTING}['client'] is not an analytics client")
        return client
    # One client per process, however many handlers Django builds (tests make several).
    with _client_lock:
        if _settings_client is None:
            try:
                _settings_client = AnalyticsClient(**options)
            except (TypeError, ValueError) as exc:
                raise ImproperlyConfigured(f"settings.{SETTING}: {exc}") from exc
        return _settings_client


@dataclass
class _ViewScope:
    user: str | None
    scope: Scope


class AnalyticsMiddleware:
    """Django middleware tracking one event per request; see the module docstring."""

    def __init__(
        self,
        get_response: Callable[[HttpRequest], HttpResponseBase],
        *,
        client: BaseClient | None = None,
        event_name: str | None = None,
        exclude_routes: Collection[str] | None = None,
        user: Callable[[HttpRequest], str | None] | None = None,
    ) -> None:
        self.get_response = get_response
        config = _configuration()
        self.client = client if client is not None else settings_client()
        self.event_name: str = event_name or config.get("event_name") or "http.request"
        self.exclude_routes = frozenset(
            exclude_routes if exclude_routes is not None else config.get("exclude_routes", ())
        )
        self.user: Callable[[HttpRequest], str | None] | None = (
            user if user is not None else _resolve(config.get("user"))
        )
        self._user_of: UserOf[HttpRequest] = UserOf(self.user)

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        start = time.perf_counter()
        try:
            response = self.get_response(request)
        except BaseException as exc:
            # Only with DEBUG_PROPAGATE_EXCEPTIONS (or a test client that re-raises):
            # otherwise Django has already turned the exception into a response.
            self._close_scope(request)
            self._track(request, 500, start, exc)
            raise
        self._close_scope(request)
        self._track(request, response.status_code, start, None)
        return response

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> None:
        # Called right before the view, once every middleware's request phase
        # ran (authentication included). The scope stays open until __call__
        # gets the response back: the view, its exception handling, the
        # rendering of a TemplateResponse. Returning None lets the view run.
        if self.user is None or _route(request) in self.exclude_routes:
            return
        user = self._user_of(request)
        opened = Scope(user=user)
        opened.__enter__()
        setattr(request, _VIEW_ATTRIBUTE, _ViewScope(user, opened))

    def _close_scope(self, request: HttpRequest) -> None:
        view = getattr(request, _VIEW_ATTRIBUTE, None)
        if isinstance(view, _ViewScope):
            view.scope.__exit__(None, None, None)

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        # Called for an exception a view raised; Django then answers (a 500,
        # unless it is Http404, PermissionDenied…). Returning None lets it.
        setattr(request, _ERROR_ATTRIBUTE, exception)

    def _track(
        self,
        request: HttpRequest,
        status_code: int,
        start: float,
        error: BaseException | None,
    ) -> None:
        route = _route(request)
        if route in self.exclude_routes:
            return
        if error is None and status_code >= 500:
            error = getattr(request, _ERROR_ATTRIBUTE, None)
        view = getattr(request, _VIEW_ATTRIBUTE, None)
        # The user process_view got, or (no view was reached) asked for now: once either way.
        user = view.user if isinstance(view, _ViewScope) else self._user_of(request)
        track_request(
            self.client,
            self.event_name,
            method=request.method,
            route=route,
            status_code=status_code,
            start=start,
            error=error,
            user=user,
        )


def _route(request: HttpRequest) -> str | None:
    """The URL pattern that matched, prefixes joined; None if none did."""
    match = getattr(request, "resolver_match", None)
    pattern = getattr(match, "route", None)
    # Django joins include() prefixes; a re_path's leading "^" is dropped so
    # that every route reads like the path it matched.
    return f"/{pattern.removeprefix('^')}" if isinstance(pattern, str) else None
