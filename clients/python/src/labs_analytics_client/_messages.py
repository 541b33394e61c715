"""Segment's other message types, as the events the service stores for them.

``identify``, ``alias``, ``group``, ``page`` and ``screen`` are ``track()``
calls whose event is the one the server's Segment-compatible routes store for
such a message (the README's mapping table): the same ``name``, the traits or
properties as ``properties``, and ``context.$segment`` naming the type and
what has no column of its own (``groupId``, ``previousId``, a page's ``name``
and ``category``). So rows are alike whichever way a message came in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SELF_DESCRIPTION = "$segment"
EVENT_NAMES = {
    "identify": "identify",
    "alias": "alias",
    "group": "group",
    "page": "page.view",
    "screen": "screen.view",
}


def message_context(
    kind: str,
    context: Mapping[str, Any] | None,
    user: str | None,
    **fields: Any,
) -> dict[str, Any]:
    """The caller's context, with ``$segment`` describing the message."""
    about: dict[str, Any] = {"type": kind}
    if user is not None:
        about["userId"] = user
    about.update({name: value for name, value in fields.items() if value is not None})
    return {**(context or {}), SELF_DESCRIPTION: about}
