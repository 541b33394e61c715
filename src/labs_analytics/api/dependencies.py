"""Request dependencies: the app state and the authenticated key.

Routes declare what they need with the ``Annotated`` aliases at the bottom
(``IngestKey``), and stay free of auth logic.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from labs_analytics.api.state import AppState
from labs_analytics.auth.keys import ApiKey, Scope
from labs_analytics.errors import Forbidden, Unauthenticated

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer lak_…`")


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.labs
    return state


State = Annotated[AppState, Depends(get_state)]


async def authenticate(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated("missing API key: send `Authorization: Bearer <key>`")
    key = await state.key_cache.lookup(credentials.credentials)
    if key is None:
        raise Unauthenticated("unknown or revoked API key")
    return key


def require_scope(scope: Scope) -> object:
    async def check(key: Annotated[ApiKey, Depends(authenticate)]) -> ApiKey:
        if not key.allows(scope):
            raise Forbidden(f"this key lacks the `{scope}` scope")
        return key

    return Depends(check)


IngestKey = Annotated[ApiKey, require_scope(Scope.INGEST)]
ReadKey = Annotated[ApiKey, require_scope(Scope.READ)]
