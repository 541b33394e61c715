"""``scope()``: a user and properties for every event tracked inside a block.

The scope lives in a ``contextvars`` variable, so it follows the code that set
it: an asyncio task inherits the scope of the code that created it (a copy: a
scope the task opens stays in the task), a new thread starts with none. To
carry it into a thread pool, submit ``contextvars.copy_context().run`` with
the function. It applies to every client in the process.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any


@dataclass(frozen=True, slots=True)
class ScopeData:
    """What the innermost open scope adds to each event (nested scopes already merged)."""

    user: str | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)


_CURRENT: contextvars.ContextVar[ScopeData | None] = contextvars.ContextVar(
    "labs_analytics_scope", default=None
)


def current_scope() -> ScopeData | None:
    return _CURRENT.get()


class Scope:
    """``with scope(user=…, properties={…}):`` (or ``async with``): see the module docstring.

    Nested scopes merge: an inner ``user`` replaces the outer one, inner
    properties are laid over the outer ones. ``track()``'s own arguments win
    over the scope, which wins over the client's ``super_properties``.
    """

    def __init__(
        self, user: str | None = None, properties: Mapping[str, Any] | None = None
    ) -> None:
        self._user = user
        self._properties = dict(properties) if properties else {}
        self._tokens: list[contextvars.Token[ScopeData | None]] = []

    def __enter__(self) -> ScopeData:
        outer = _CURRENT.get()
        if outer is None:
            data = ScopeData(self._user, self._properties)
        else:
            data = ScopeData(
                self._user if self._user is not None else outer.user,
                {**outer.properties, **self._properties} if self._properties else outer.properties,
            )
        # A stack: the same Scope object may be entered again while open.
        self._tokens.append(_CURRENT.set(data))
        return data

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token = self._tokens.pop()
        try:
            _CURRENT.reset(token)
        except ValueError:
            # Closed in another context than the one it was opened in: a
            # framework ran the opening code in a copy of the context and
            # copied the changes back (asgiref's sync_to_async, as Django
            # under ASGI does for a middleware's process_view). Put back what
            # the scope replaced, here.
            _CURRENT.set(None if token.old_value is contextvars.Token.MISSING else token.old_value)

    async def __aenter__(self) -> ScopeData:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def scope(user: str | None = None, properties: Mapping[str, Any] | None = None) -> Scope:
    """A user and properties for every event tracked in the block (any client)."""
    return Scope(user, properties)


def apply_scope(
    scoped: ScopeData | None,
    super_properties: Mapping[str, Any] | None,
    user: object,
    properties: object,
) -> tuple[object, object]:
    """``track()``'s user and properties over the scope's, over ``super_properties``."""
    if user is None and scoped is not None:
        user = scoped.user
    if properties is not None and not isinstance(properties, Mapping):
        return user, properties  # not a mapping: the encoder refuses it as given
    merged: dict[str, Any] = dict(super_properties) if super_properties else {}
    if scoped is not None:
        merged.update(scoped.properties)
    if properties:
        merged.update(properties)
    return user, merged
