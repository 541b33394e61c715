"""The measured requests, as data: what each asks, over which range.

Ranges are explicit whole UTC days ending today (the generated data ends at
the current UTC hour), so the rollups apply wherever the request allows.
Each probe is built from `Facts`, a few things read from the loaded data.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from .generate import FUNNEL, HTTP_REQUEST

TOP_PROPERTY = "prop:club_id"  # 600 values, Zipf-like: a breakdown of hundreds
RETENTION_START = "session.start"
ACTIVE_USERS = {"day": "DAU", "week": "WAU", "month": "MAU"}


@dataclass(frozen=True)
class Facts:
    product: str  # the product with the most events
    today: dt.date  # UTC: the last generated day
    popular_name: str  # the product's most frequent name after http.request
    user: str  # the product's user with the most events


@dataclass(frozen=True)
class Probe:
    key: str  # names it in targets.py and the report
    label: str
    method: Literal["GET", "POST"]
    path: str
    body: dict[str, Any] | None = None  # JSON, for POST
    params: tuple[tuple[str, str], ...] = ()  # the query string, for GET

    @property
    def has_rollup_path(self) -> bool:
        """/v1/query and the user summary read rollups; the others always read raw rows."""
        return self.path == "/v1/query" or self.is_user_summary

    @property
    def is_user_summary(self) -> bool:
        return self.path.endswith("/summary")


def days(facts: Facts, n: int) -> list[str]:
    """The ``n`` whole UTC days ending today, as /v1/query's ``[start, end]`` (end included)."""
    return [(facts.today - dt.timedelta(days=n - 1)).isoformat(), facts.today.isoformat()]


def probes(facts: Facts) -> tuple[Probe, ...]:
    d30, d90 = days(facts, 30), days(facts, 90)

    def active_users(granularity: str) -> Probe:
        return Probe(
            key=f"users_{granularity}",
            label=f"{ACTIVE_USERS[granularity]} over 90 days",
            method="POST",
            path="/v1/query",
            body={"metrics": ["users"], "dimensions": [f"time:{granularity}"], "date_range": d90},
        )

    return (
        Probe(
            key="series",
            label=f"30-day daily series of `{facts.popular_name}`",
            method="POST",
            path="/v1/query",
            body={
                "metrics": ["events"],
                "dimensions": ["time:day"],
                "filters": [["is", "name", [facts.popular_name]]],
                "date_range": d30,
            },
        ),
        active_users("day"),
        active_users("week"),
        active_users("month"),
        Probe(
            key="top_property",
            label=f"top 20 `{TOP_PROPERTY}` over 30 days",
            method="POST",
            path="/v1/query",
            body={
                "metrics": ["events"],
                "dimensions": [TOP_PROPERTY],
                "order_by": [["events", "desc"]],
                "limit": 20,
                "date_range": d30,
            },
        ),
        Probe(
            key="latency",
            label="p50/p95/p99 `duration_ms` by route over 7 days",
            method="POST",
            path="/v1/query",
            body={
                "metrics": ["p50:duration_ms", "p95:duration_ms", "p99:duration_ms"],
                "dimensions": ["prop:route"],
                "filters": [["is", "name", [HTTP_REQUEST]]],
                "date_range": days(facts, 7),
            },
        ),
        Probe(
            key="funnel",
            label=f"3-step funnel ({' → '.join(FUNNEL)}) over 30 days, 7-day window",
            method="POST",
            path="/v1/funnels",
            body={"steps": [{"name": name} for name in FUNNEL], "window": "7d", "date_range": d30},
        ),
        Probe(
            key="retention",
            label=f"8-week retention from `{RETENTION_START}`",
            method="POST",
            path="/v1/retention",
            body={
                "start_event": {"name": RETENTION_START},
                "period": "week",
                "periods": 8,
                "date_range": days(facts, 56),
            },
        ),
        Probe(
            key="user_summary",
            label="one user's year summary (the most active user, top `club_id`)",
            method="GET",
            path=f"/v1/users/{facts.user}/summary",
            params=(
                ("from", (facts.today - dt.timedelta(days=364)).isoformat()),
                ("to", facts.today.isoformat()),
                ("top", TOP_PROPERTY),
            ),
        ),
    )


def export_params(facts: Facts) -> tuple[tuple[str, str], ...]:
    """``GET /v1/export``: every event of the product over the 30 days, as NDJSON."""
    start, end = days(facts, 30)
    return (("format", "ndjson"), ("from", start), ("to", end))
