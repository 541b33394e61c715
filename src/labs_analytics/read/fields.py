"""What a read request may name: event fields and properties, and how they reach SQL.

A field is ``name``, ``user``, ``prop:KEY`` or ``context:KEY``, where KEY is a
dotted path into the event's JSON (``prop:utm.source``). Only the column is
chosen from a closed list; the path is always a bind parameter (a ``text[]``
for ``#>`` / ``#>>``), so no key, however hostile, becomes SQL text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MAX_KEY_LENGTH = 256
MAX_PATH_DEPTH = 8
# A path segment: anything but a dot and control characters (keys are data).
_SEGMENT = re.compile(r"[^.\x00-\x1f]{1,128}")

Column = Literal["name", "user_id", "properties", "context"]


@dataclass(frozen=True, slots=True)
class FieldRef:
    """A parsed field: its column, and for JSON columns the path inside it."""

    text: str  # as the client wrote it: the key of the answer's columns
    column: Column
    path: tuple[str, ...] = ()

    @property
    def is_json(self) -> bool:
        return self.column in ("properties", "context")


def parse_field(text: str) -> FieldRef:
    """A field reference; ``ValueError`` says what is wrong with it."""
    if text == "name":
        return FieldRef(text, "name")
    if text == "user":
        return FieldRef(text, "user_id")
    prefix, separator, key = text.partition(":")
    if not separator or prefix not in ("prop", "context"):
        raise ValueError(f"unknown field {text[:80]!r}: use name, user, prop:KEY or context:KEY")
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"the key after {prefix}: must be 1 to {MAX_KEY_LENGTH} characters")
    path = tuple(key.split("."))
    if len(path) > MAX_PATH_DEPTH:
        raise ValueError(f"a key path has at most {MAX_PATH_DEPTH} dotted parts")
    if not all(_SEGMENT.fullmatch(part) for part in path):
        raise ValueError(
            "a key path's parts must be 1 to 128 characters, without control characters"
        )
    return FieldRef(text, "properties" if prefix == "prop" else "context", path)
