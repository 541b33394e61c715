"""Python values as JSON values: the encoder's ``default`` hook, and the lenient walk.

``to_json`` is the JSON encoder's ``default`` hook: it runs only for a value
the encoder cannot write by itself, so an event made of plain JSON types never
reaches it. It knows the few types with one obvious JSON form (``datetime``,
``date``, ``time``, ``UUID``, ``Decimal``, ``Enum``, sets) and refuses the rest
with ``TypeError``; in strict mode that refusal drops the event (or raises).

``jsonable`` is the lenient path, taken only once the encoder has refused a
value: it rebuilds the object as plain JSON values, converting what it can
(dataclasses and Pydantic models become objects, tuples lists, ``bytes`` text
or ``{"$base64": …}``) and writing anything else as its ``repr()``, noting the
path of each such value (``properties.user.avatar``) for the client's warning.
The result is then encoded and checked like any event: the contract's limits
(size, depth, NUL, finite numbers, 64-bit integers) still refuse it.

The SDK imports nothing beyond the standard library here: a Pydantic model is
recognised by its ``model_dump`` method, never by importing Pydantic.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import uuid
from collections.abc import Mapping
from typing import Any

# The key of the one-key object that stands for bytes that are not UTF-8.
BASE64_KEY = "$base64"


def to_json(value: object) -> object:
    """The few non-JSON types that have one obvious JSON form (the encoder's ``default``)."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():  # refused like float("nan"): one rule, one reason
            raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
        return float(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _lenient_json(value: object) -> object:
    """What only lenient mode converts: dataclasses, Pydantic models, bytes."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            # Tagged, not a bare base64 string: a reader can tell it from text
            # that merely looks like base64 ("deadbeef"), and decode it exactly.
            return {BASE64_KEY: base64.b64encode(raw).decode("ascii")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # One level only (not dataclasses.asdict, which deep-copies every value):
        # the walk converts the fields in turn, with their own paths.
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    model_dump = getattr(type(value), "model_dump", None)
    if callable(model_dump) and not isinstance(value, type):
        try:
            # mode="json" honours the model's own JSON serializers.
            return model_dump(value, mode="json")
        except Exception:  # a field Pydantic cannot write as JSON: our walk will
            return model_dump(value)
    return to_json(value)


def _repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:  # a broken __repr__ must not lose the event
        return object.__repr__(value)


def jsonable(
    value: object, path: str, *, max_depth: int, converted: list[tuple[str, str]]
) -> object:
    """``value`` as plain JSON values; each ``repr()`` fallback appends ``(path, type)``.

    Raises ``ValueError`` past ``max_depth`` levels (which also ends a cycle)
    or for a value no conversion may change (a non-finite ``Decimal``).
    """
    return _walk(value, path, 0, max_depth, converted)


def _walk(
    value: object, path: str, depth: int, max_depth: int, converted: list[tuple[str, str]]
) -> object:
    if depth > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    if value is None or isinstance(value, str | int | float):  # bool is an int
        return value
    if isinstance(value, Mapping):
        out: dict[Any, object] = {}
        for key, item in value.items():
            if not (key is None or isinstance(key, str | int | float)):
                key = _key(key, path, converted)
            out[key] = _walk(item, f"{path}.{key}", depth + 1, max_depth, converted)
        return out
    if isinstance(value, list | tuple):
        return [
            _walk(item, f"{path}[{index}]", depth + 1, max_depth, converted)
            for index, item in enumerate(value)
        ]
    try:
        plain = _lenient_json(value)
    except TypeError:
        converted.append((path, type(value).__name__))
        return _repr(value)
    # The converted form may hold more to convert (a dataclass's fields); it
    # stands where the value stood, at the same depth.
    return _walk(plain, path, depth, max_depth, converted)


def _key(key: object, path: str, converted: list[tuple[str, str]]) -> object:
    """An object key JSON cannot carry: its JSON form if that is a string, else its repr()."""
    try:
        plain = _lenient_json(key)
    except TypeError:
        plain = None
    if isinstance(plain, str | int | float) and not isinstance(plain, bool):
        return plain
    converted.append((f"{path}.<key {type(key).__name__}>", type(key).__name__))
    return _repr(key)
