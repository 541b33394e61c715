"""Request dependencies: the app state, and the check of an API key and its scope.

Routes take the state through the ``State`` alias. The ingest route, the hot
path, calls ``authorize`` directly rather than through a dependency: FastAPI's
dependency resolution cost more CPU per request than everything else the route
does (see BENCHMARKS.md). The read side will wrap ``authorize`` in an
``Annotated`` dependency.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from labs_analytics.api.state import AppState
from labs_analytics.auth.keys import ApiKey, Scope
from labs_analytics.errors import Forbidden, Unauthenticated


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
