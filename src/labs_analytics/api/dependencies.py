"""Request dependencies: the app state, and the check of an API key and its scope.

Routes take the state through the ``State`` alias. The ingest route, the hot
path, calls ``authorize`` directly rather than through a dependency: FastAPI's
dependency resolution cost more CPU per request than everything else the route
does (see BENCHMARKS.md). The read side wraps ``authorize_reader``, which
also takes the dashboard's session cookie, in an ``Annotated`` dependency.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from redis.exceptions import RedisError

from labs_analytics.api.state import AppState
from labs_analytics.auth.keys import ApiKey, Scope
from labs_analytics.dashboard.sessions import CSRF_HEADER, SESSION_COOKIE
from labs_analytics.errors import AppError, Forbidden, Unauthenticated


class SessionsUnavailable(AppError):
    status_code = 503
    code = "sessions_unavailable"


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs a plain `def` dependency in a thread pool,
    # a thread hop per request for a dict lookup.
    state: AppState = request.app.state.labs
    return state


State = Annotated[AppState, Depends(get_state)]


async def authorize(state: AppState, authorization: str | None, scope: Scope) -> ApiKey:
    """The key named by an ``Authorization: Bearer`` header, if it may use ``scope``."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("missing API key: send `Authorization: Bearer <key>`")
    key = await state.key_cache.lookup(token.strip())
    if key is None:
        raise Unauthenticated("unknown or revoked API key")
    if not key.allows(scope):
        raise Forbidden(f"this key lacks the `{scope}` scope")
    return key


async def authorize_reader(state: AppState, request: Request, scope: Scope) -> ApiKey:
    """A read route's caller: an ``Authorization: Bearer`` key, or a dashboard session.

    A session (the HttpOnly cookie the dashboard's sign-in sets) must send its
    CSRF token in ``X-CSRF-Token`` with every request but GET and HEAD, which
    change nothing; a header wins over a cookie.
    """
    authorization = request.headers.get("authorization")
    token = request.cookies.get(SESSION_COOKIE)
    if authorization is not None or token is None:
        return await authorize(state, authorization, scope)
    try:
        viewer = await state.dashboard.resolve(token)
    except (RedisError, OSError) as exc:
        raise SessionsUnavailable(
            "dashboard sessions are kept in Redis, which is unavailable; "
            "send the key as `Authorization: Bearer <key>` meanwhile"
        ) from exc
    if viewer is None:
        raise Unauthenticated("the dashboard session has expired or was ended: sign in again")
    if request.method not in ("GET", "HEAD"):
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), viewer.session.csrf.encode()):
            raise Forbidden(f"a dashboard session must send its `{CSRF_HEADER}`")
    if not viewer.key.allows(scope):
        raise Forbidden(f"this session lacks the `{scope}` scope")
    return viewer.key
