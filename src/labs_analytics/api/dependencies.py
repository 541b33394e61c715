"""Request dependencies: the app state and the authenticated key.

Routes declare what they need with the ``Annotated`` aliases at the bottom
(``ReadKey``), and stay free of auth logic. The ingest route, the hot path,
calls ``authorize`` directly instead: FastAPI's dependency resolution cost
more CPU per request than everything else the route does (see BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from labs_analytics.api.state import AppState
from labs_analytics.auth.keys import ApiKey, Scope
from labs_analytics.errors import Forbidden, Unauthenticated

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer lak_…`")


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


def require_scope(scope: Scope) -> object:
    async def check(
        state: State,
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiKey:
        return await authorize(state, request.headers.get("authorization"), scope)

    return Depends(check)


IngestKey = Annotated[ApiKey, require_scope(Scope.INGEST)]
ReadKey = Annotated[ApiKey, require_scope(Scope.READ)]
