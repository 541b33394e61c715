"""``LabsAnalytics``, a Flask extension: one ``http.request`` event per request.

::

    from flask import Flask
    from labs_analytics_client import AnalyticsClient
    from labs_analytics_client.flask import LabsAnalytics

    analytics = AnalyticsClient("lak_…", base_url="https://analytics.example.org")
    app = Flask(__name__)
    LabsAnalytics(app, client=analytics, exclude_routes={"/healthz"})

    # or the factory pattern, the client made from app.config["LABS_ANALYTICS"]
    # (AnalyticsClient's options: {"api_key": …, "base_url": …}):
    tracking = LabsAnalytics()
    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["LABS_ANALYTICS"] = {"base_url": "https://analytics.example.org"}
        tracking.init_app(app)
        return app

Each request tracks ``http.request`` (or ``event_name``) with ``method``,
``route`` (the URL rule that matched, blueprint prefix included, e.g.
``/clubs/<int:club_id>``: ``request.url_rule.rule``, never the raw path;
``None`` when no rule matched), ``status_code`` (of the response Flask sent,
error handlers included), ``duration_ms`` and, when a view raised an exception
no error handler answered (Flask then sends a 500), ``error_type``.

The timing starts in a ``before_request`` function placed first, the status is
read in ``after_request`` (Flask runs it for the 500 of an unhandled exception
too), and the event is tracked in ``teardown_request``, which always runs and
is handed that exception.

``user`` may be a function of the request returning the user id. It is called
once per request, right before the view (after every ``before_request``
function, so what they set, ``g.user`` say, is there), and the view runs
inside ``scope(user=…)``: a ``track()`` in the view, or in code it calls, gets
that user without ``user=``. The ``http.request`` event gets the same value
(when no view was reached, a ``before_request`` function having answered, the
function is called at the end instead). A function that raises never breaks
the request: the user is ``None``, and the first failure is logged
(``analytics.user_function_failed``). The scope is opened by wrapping the
app's ``dispatch_request``, the one call Flask makes around the view alone.

Draining: the client is an ordinary ``AnalyticsClient``, so the SDK's exit hook
delivers what is queued when the process ends (a gunicorn sync worker leaves
through ``sys.exit`` on ``SIGTERM``, running it).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from flask import Flask, Request, Response, current_app, request

from labs_analytics_client._client import AnalyticsClient
from labs_analytics_client._core import BaseClient
from labs_analytics_client._request_event import UserOf, track_request
from labs_analytics_client._scope import Scope

__all__ = ["LabsAnalytics"]

CONFIG_KEY = "LABS_ANALYTICS"
EXTENSION_KEY = "labs_analytics"
# Per-request marks, kept in the WSGI environ: it lives exactly as long as the request.
_START = "labs_analytics.start"
_STATUS = "labs_analytics.status_code"
_USER = "labs_analytics.user"  # (user,): the user function's value, once it was called


class LabsAnalytics:
    """The Flask extension; see the module docstring."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        client: BaseClient | None = None,
        event_name: str = "http.request",
        exclude_routes: Collection[str] = (),
        user: Callable[[Request], str | None] | None = None,
    ) -> None:
        self.client = client
        self.event_name = event_name
        self.exclude_routes = frozenset(exclude_routes)
        self.user = user
        self._user_of: UserOf[Request] = UserOf(user)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        client = self.client
        if client is None:
            options = app.config.get(CONFIG_KEY, {})
            if not isinstance(options, Mapping):
                raise TypeError(f"app.config[{CONFIG_KEY!r}] must be a dict of client options")
            client = AnalyticsClient(**options)
        # One extension object may serve several apps, each with its own client.
        app.extensions[EXTENSION_KEY] = client
        # First, so that the time of the other before_request functions counts.
        app.before_request_funcs.setdefault(None, []).insert(0, self._start)
        app.after_request(self._note_status)
        app.teardown_request(self._track)
        if self.user is not None:
            # An instance attribute over the method, as app.wsgi_app is wrapped.
            app.dispatch_request = functools.partial(  # type: ignore[method-assign]
                self._dispatch_in_scope, app.dispatch_request
            )

    def _start(self) -> None:
        request.environ[_START] = time.perf_counter()

    def _dispatch_in_scope(self, dispatch: Callable[[], Any]) -> Any:
        # Every before_request function has run; the view (or the routing
        # error, a 404) comes next.
        rule = request.url_rule
        if rule is not None and rule.rule in self.exclude_routes:
            return dispatch()
        user = self._user_of(request)
        request.environ[_USER] = (user,)
        with Scope(user=user):
            return dispatch()

    def _note_status(self, response: Response) -> Response:
        request.environ[_STATUS] = response.status_code
        return response

    def _track(self, error: BaseException | None) -> None:
        start = request.environ.get(_START)
        if start is None:  # a request context no request was dispatched in
            return
        rule = request.url_rule
        route = rule.rule if rule is not None else None
        if route in self.exclude_routes:
            return
        # No status noted: the exception propagated (PROPAGATE_EXCEPTIONS) and
        # the server will answer 500.
        client: BaseClient = current_app.extensions[EXTENSION_KEY]
        # The value the view's scope had, or (no view was reached) asked for now.
        noted = request.environ.get(_USER)
        track_request(
            client,
            self.event_name,
            method=request.method,
            route=route,
            status_code=request.environ.get(_STATUS, 500),
            start=start,
            error=error,
            user=noted[0] if noted is not None else self._user_of(request),
        )
