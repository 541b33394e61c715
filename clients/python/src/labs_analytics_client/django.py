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
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase
from django.utils.module_loading import import_string

from labs_analytics_client._client import AnalyticsClient
from labs_analytics_client._core import BaseClient
from labs_analytics_client._request_event import track_request

__all__ = ["AnalyticsMiddleware", "settings_client"]

SETTING = "LABS_ANALYTICS"
_MIDDLEWARE_KEYS = frozenset({"client", "event_name", "exclude_routes", "user"})
# Where process_exception leaves the view's exception for __call__ to read.
_ERROR_ATTRIBUTE = "_labs_analytics_error"

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

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        start = time.perf_counter()
        try:
            response = self.get_response(request)
        except BaseException as exc:
            # Only with DEBUG_PROPAGATE_EXCEPTIONS (or a test client that re-raises):
            # otherwise Django has already turned the exception into a response.
            self._track(request, 500, start, exc)
            raise
        self._track(request, response.status_code, start, None)
        return response

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
        match = getattr(request, "resolver_match", None)
        pattern = getattr(match, "route", None)
        # Django joins include() prefixes; a re_path's leading "^" is dropped so
        # that every route reads like the path it matched.
        route = f"/{pattern.removeprefix('^')}" if isinstance(pattern, str) else None
        if route in self.exclude_routes:
            return
        if error is None and status_code >= 500:
            error = getattr(request, _ERROR_ATTRIBUTE, None)
        track_request(
            self.client,
            self.event_name,
            request=request,
            method=request.method,
            route=route,
            status_code=status_code,
            start=start,
            error=error,
            user=self.user,
        )
