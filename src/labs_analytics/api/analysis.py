"""The read API's analyses: ``POST /v1/funnels`` and ``POST /v1/retention``.

Keys and products as for ``/v1/query``: a ``read`` (or ``admin``) key reads its
own product, an ``admin`` key may name another; authentication comes before
the body is checked. The definitions (which events pair up, windows, nulls)
are in ``read/funnels.py`` and ``read/retention.py``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from labs_analytics.api.dependencies import State
from labs_analytics.api.errors import ErrorBody
from labs_analytics.api.read import ReadKey
from labs_analytics.read.funnels import FunnelRequest, run_funnel
from labs_analytics.read.retention import RetentionRequest, run_retention

router = APIRouter(tags=["read"])


class FunnelStep(BaseModel):
    step: int = Field(description="1 for the first step.")
    name: str
    users: int = Field(description="Users who reached this step (exact).")
    conversion_from_first: float | None = Field(
        description="users / users of step 1 (null when step 1 has none)."
    )
    conversion_from_previous: float | None = Field(
        description="users / users of the step before (step 1: itself; null when it has none)."
    )
    median_seconds_from_previous: float | int | None = Field(
        description="Median seconds between the previous step and this one over the users "
        "who reached it; null for step 1 and when nobody reached it."
    )


class FunnelGroup(BaseModel):
    value: str | None = Field(description="The breakdown value (text; null: absent).")
    steps: list[FunnelStep]


class FunnelMeta(BaseModel):
    date_range: list[str] = Field(description="The range as resolved: [start, end) instants.")
    window_seconds: int
    breakdown: str | None
    breakdown_groups: int | None = Field(
        description="How many breakdown values there are, before `breakdown_limit`."
    )
    took_ms: float


class FunnelResponse(BaseModel):
    steps: list[FunnelStep]
    breakdown: list[FunnelGroup] | None = Field(
        description="Per breakdown value, most users at step 1 first; null without breakdown."
    )
    meta: FunnelMeta


class RetentionCohort(BaseModel):
    cohort: str = Field(description="The first local day of the cohort's period.")
    size: int = Field(description="Users whose first start event in the range is in it.")
    users: list[int | None] = Field(
        description="Offsets 0..N: users who returned in that period; null: not begun yet."
    )
    percent: list[float | None] = Field(description="100 * users / size, per offset.")


class RetentionMeta(BaseModel):
    date_range: list[str] = Field(description="The range as resolved: [start, end) instants.")
    period: str
    periods: int
    as_of: str = Field(description="The moment the answer was computed: later periods are null.")
    took_ms: float


class RetentionResponse(BaseModel):
    cohorts: list[RetentionCohort] = Field(
        description="Oldest first; cohorts without users left out."
    )
    meta: RetentionMeta


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, unknown or revoked API key."},
    403: {
        "model": ErrorBody,
        "description": "The key lacks the `read` scope, or names another product without `admin`.",
    },
    422: {
        "model": ErrorBody,
        "description": "A field of the request is invalid (named); for retention also a range "
        "holding more than 1,000 cohorts.",
    },
    429: {
        "model": ErrorBody,
        "description": "The key started more queries per second than allowed.",
        "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
    },
    503: {
        "model": ErrorBody,
        "description": "`query_timeout`: the query ran past the limit and was cancelled; "
        "`read_busy`: every read connection is in use; `database_unavailable`.",
    },
}
_SECURITY: dict[str, Any] = {"security": [{"HTTPBearer": []}]}


@router.post(
    "/v1/funnels",
    response_model=FunnelResponse,
    responses=ERRORS,
    summary="Users through ordered steps within a conversion window",
    description="Each user enters with their earliest step-1 event in the range; each next "
    "step is their earliest matching event after the previous step and within the window "
    "of step 1 (possibly after the range ends). Events without a user are left out. Exact.",
    openapi_extra=_SECURITY,
)
async def funnels(body: FunnelRequest, key: ReadKey, state: State) -> dict[str, Any]:
    return await run_funnel(state.reads, key, body)


@router.post(
    "/v1/retention",
    response_model=RetentionResponse,
    responses=ERRORS,
    summary="Cohorts by first start event, and who returned in each later period",
    description="A user's cohort is the local period of their first `start_event` in the "
    "range; offset k counts the cohort's users with a `return_event` after it in the period "
    "k later. Offsets not begun yet are null. Exact.",
    openapi_extra=_SECURITY,
)
async def retention(body: RetentionRequest, key: ReadKey, state: State) -> dict[str, Any]:
    return await run_retention(state.reads, key, body)
