"""A reference for the read API, in plain Python over the stored rows.

It shares no code with ``labs_analytics.read``: ranges, filters, groups,
metrics and order are worked out here from the rows as fetched, the slow and
obvious way, so a test can hold every answer of ``POST /v1/query`` to it.
Explicit date ranges (``[YYYY-MM-DD, YYYY-MM-DD]``) only.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

MISSING = object()
_FRACTIONS = {
    "p50": Decimal("0.5"),
    "p90": Decimal("0.9"),
    "p95": Decimal("0.95"),
    "p99": Decimal("0.99"),
}


def _field_value(row: Mapping[str, Any], field: str) -> Any:
    if field == "name":
        return row["name"]
    if field == "user":
        return row["user_id"] if row["user_id"] is not None else MISSING
    prefix, _, key = field.partition(":")
    node: Any = row["properties"] if prefix == "prop" else (row["context"] or {})
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_text(value: Any) -> str | None:
    """What PostgreSQL's ``#>>`` gives: strings bare, JSON null as NULL."""
    if value is MISSING or value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    raise AssertionError(f"the reference does not render {value!r} as text")


def _json_equal(stored: Any, wanted: Any) -> bool:
    if stored is MISSING:
        return False
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return isinstance(stored, bool) and isinstance(wanted, bool) and stored == wanted
    if _is_number(stored) and _is_number(wanted):
        return Decimal(str(stored)) == Decimal(str(wanted))
    return type(stored) is type(wanted) and stored == wanted


def _plain_text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _matches(row: Mapping[str, Any], flt: list[Any]) -> bool:
    operator, field, *rest = flt
    values = rest[0] if rest else []
    json_field = field.startswith(("prop:", "context:"))
    stored = _field_value(row, field)
    if operator == "exists":
        return stored is not MISSING
    if operator in ("is", "is_not"):
        if json_field:
            hit = any(_json_equal(stored, value) for value in values)
        else:
            hit = stored is not MISSING and stored in [_plain_text(v) for v in values]
        return hit if operator == "is" else not hit
    if operator == "contains":
        text = _as_text(stored) if json_field else (None if stored is MISSING else stored)
        return text is not None and any(value in text for value in values)
    (value,) = values
    if json_field:
        if not _is_number(stored):
            return False
        left, right = Decimal(str(stored)), Decimal(str(value))
    else:
        if stored is MISSING:
            return False
        left, right = stored, _plain_text(value)
    return {
        "gt": left > right,
        "gte": left >= right,
        "lt": left < right,
        "lte": left <= right,
    }[operator]


def _bucket(moment: dt.datetime, granularity: str, zone: ZoneInfo) -> dt.datetime:
    local = moment.astimezone(zone).replace(tzinfo=None)
    hour = local.replace(minute=0, second=0, microsecond=0)
    if granularity == "hour":
        return hour
    day = hour.replace(hour=0)
    if granularity == "day":
        return day
    if granularity == "week":
        return day - dt.timedelta(days=day.weekday())
    return day.replace(day=1)


def _label(bucket: dt.datetime, granularity: str) -> str:
    return bucket.strftime("%Y-%m-%dT%H:00" if granularity == "hour" else "%Y-%m-%d")


def _metric(rows: list[Mapping[str, Any]], metric: str) -> Any:
    if metric == "events":
        return len(rows)
    if metric == "users":
        return len({row["user_id"] for row in rows if row["user_id"] is not None})
    kind, _, field = metric.partition(":")
    if not field.startswith(("prop:", "context:")):
        field = f"prop:{field}"
    numbers = sorted(
        Decimal(str(value)) for row in rows if _is_number(value := _field_value(row, field))
    )
    if not numbers:
        return None
    if kind == "sum":
        result = sum(numbers, Decimal(0))
    elif kind == "avg":
        result = sum(numbers, Decimal(0)) / len(numbers)
    elif kind == "min":
        result = numbers[0]
    elif kind == "max":
        result = numbers[-1]
    else:  # nearest rank, as percentile_disc
        rank = math.ceil(_FRACTIONS[kind] * len(numbers))
        result = numbers[max(rank, 1) - 1]
    return int(result) if result == result.to_integral_value() else float(result)


def _next(bucket: dt.datetime, granularity: str) -> dt.datetime:
    if granularity == "hour":
        return bucket + dt.timedelta(hours=1)
    if granularity == "day":
        return bucket + dt.timedelta(days=1)
    if granularity == "week":
        return bucket + dt.timedelta(weeks=1)
    return (bucket.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, "") if value is None else (1, value)


def reference_query(
    rows: Iterable[Mapping[str, Any]], request: Mapping[str, Any], product: str
) -> tuple[list[dict[str, Any]], int]:
    """``(results, total_rows)`` as ``POST /v1/query`` must answer ``request``."""
    zone = ZoneInfo(request.get("timezone", "UTC"))
    first_day, last_day = (dt.date.fromisoformat(day) for day in request["date_range"])
    start = dt.datetime.combine(first_day, dt.time(), tzinfo=zone)
    end = dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    dimensions: list[str] = request.get("dimensions", [])
    metrics: list[str] = request["metrics"]
    chosen = [
        row
        for row in rows
        if row["product"] == product
        and start <= row["timestamp"] < end
        and all(_matches(row, flt) for flt in request.get("filters", []))
    ]

    def key_of(row: Mapping[str, Any]) -> tuple[Any, ...]:
        values = []
        for dimension in dimensions:
            if dimension.startswith("time:"):
                values.append(_bucket(row["timestamp"], dimension[5:], zone))
            else:
                value = _field_value(row, dimension)
                if dimension.startswith(("prop:", "context:")):
                    values.append(_as_text(value))
                else:
                    values.append(None if value is MISSING else value)
        return tuple(values)

    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in chosen:
        groups.setdefault(key_of(row), []).append(row)
    if not dimensions:
        groups = {(): chosen}
    time_only = len(dimensions) == 1 and dimensions[0].startswith("time:")
    if time_only:
        granularity = dimensions[0][5:]
        bucket = _bucket(start, granularity, zone)
        last = _bucket(end - dt.timedelta(microseconds=1), granularity, zone)
        while bucket <= last:
            groups.setdefault((bucket,), [])
            bucket = _next(bucket, granularity)
    answer = [
        (key, [_metric(members, metric) for metric in metrics]) for key, members in groups.items()
    ]
    for index in reversed(range(len(dimensions))):
        answer.sort(key=lambda item, i=index: _sort_key(item[0][i]))
    order_by = request.get("order_by")
    if not order_by:
        time_dims = [d for d in dimensions if d.startswith("time:")]
        order_by = [[time_dims[0], "asc"]] if time_dims else [[metrics[0], "desc"]]
    for name, direction in reversed(order_by):
        if name in metrics:
            position = metrics.index(name)
            present = [item for item in answer if item[1][position] is not None]
            absent = [item for item in answer if item[1][position] is None]
            present.sort(key=lambda item, p=position: item[1][p], reverse=direction == "desc")
            answer = present + absent  # NULLS LAST either way
        else:
            position = dimensions.index(name)
            present = [item for item in answer if item[0][position] is not None]
            absent = [item for item in answer if item[0][position] is None]
            present.sort(key=lambda item, p=position: item[0][p], reverse=direction == "desc")
            answer = present + absent
    total = len(answer)
    offset, limit = request.get("offset", 0), request.get("limit", 100)
    results = []
    for key, values in answer[offset : offset + limit]:
        shown = [
            _label(value, dimension[5:]) if dimension.startswith("time:") else value
            for dimension, value in zip(dimensions, key, strict=True)
        ]
        results.append({"dimensions": shown, "metrics": values})
    return results, total
