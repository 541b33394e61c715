"""SQL for the read side, built with every client value as a bind parameter.

``SqlBuilder`` hands out ``$1``, ``$2``, … for values; the only text that
goes into a statement is this module's own (column names from a closed list,
operators, function names). Property keys and values are always parameters:
JSON paths as ``text[]`` for ``#>`` / ``#>>``, compared values as ``jsonb``
or ``text``. The tests send hostile keys and values (quotes, ``)--``, JSON
path syntax, 10 kB keys) to hold it to that.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from labs_analytics.read.fields import FieldRef
from labs_analytics.read.request import Filter, FilterValue

_COLUMNS = {"name": "name", "user_id": "user_id", "properties": "properties", "context": "context"}


class SqlBuilder:
    """Collects bind parameters; ``param`` returns the placeholder for one."""

    def __init__(self) -> None:
        self.args: list[Any] = []

    def param(self, value: Any, cast: str | None = None) -> str:
        self.args.append(value)
        placeholder = f"${len(self.args)}"
        return f"{placeholder}::{cast}" if cast else placeholder

    # --- fields

    def text_of(self, field: FieldRef) -> str:
        """The field as text (a JSON string unquoted; numbers and booleans as JSON text)."""
        column = _COLUMNS[field.column]
        if not field.is_json:
            return column
        return f"({column} #>> {self.param(list(field.path), 'text[]')})"

    def json_of(self, field: FieldRef) -> str:
        column = _COLUMNS[field.column]
        return f"({column} #> {self.param(list(field.path), 'text[]')})"

    def number_of(self, field: FieldRef) -> str:
        """The field as an exact ``numeric`` where it is a JSON number, else NULL.

        NULLs are what aggregates skip: an event without the property, or with
        a string or an object there, does not count towards ``avg`` or ``p95``.
        """
        path = self.param(list(field.path), "text[]")
        column = _COLUMNS[field.column]
        return (
            f"(CASE WHEN jsonb_typeof({column} #> {path}) = 'number' "
            f"THEN ({column} #>> {path})::numeric END)"
        )

    # --- filters

    def condition(self, flt: Filter) -> str:
        field = flt.field
        operator = flt.operator
        if operator == "exists":
            if not field.is_json:
                return f"({_COLUMNS[field.column]} IS NOT NULL)"
            return f"({self.json_of(field)} IS NOT NULL)"
        if operator in ("is", "is_not"):
            if field.is_json:
                # JSON equality: 5 matches 5 and 5.0, "5" only "5".
                values = [json.dumps(value) for value in flt.values]
                test = f"{self.json_of(field)} = ANY({self.param(values, 'jsonb[]')})"
            else:
                values = [_as_text(value) for value in flt.values]
                test = f"{_COLUMNS[field.column]} = ANY({self.param(values, 'text[]')})"
            # is_not keeps events without the field, as "not this value" reads.
            return f"({test})" if operator == "is" else f"(({test}) IS NOT TRUE)"
        if operator == "contains":
            text = self.text_of(field)
            alternatives = " OR ".join(
                f"strpos({text}, {self.param(str(value))}) > 0" for value in flt.values
            )
            return f"({alternatives})"
        symbol = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[operator]
        (value,) = flt.values
        if field.is_json:
            return f"({self.number_of(field)} {symbol} {self.param(Decimal(str(value)))})"
        # Text compared byte by byte, the same on every server whatever its locale.
        column = _COLUMNS[field.column]
        return f'({column} COLLATE "C" {symbol} {self.param(_as_text(value))})'


def _as_text(value: FilterValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
