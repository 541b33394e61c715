"""The read API: ``POST /v1/query``.

A key with the ``read`` (or ``admin``) scope reads its own product; an
``admin`` key may name another (``product``). Authentication comes before the
body is checked, so a stranger learns nothing from a 422.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from labs_analytics.api.dependencies import State, authorize_reader
from labs_analytics.api.errors import ErrorBody
from labs_analytics.auth.keys import ApiKey, Scope
from labs_analytics.read.request import QueryRequest

router = APIRouter(tags=["read"])


async def read_key(state: State, request: Request) -> ApiKey:
    return await authorize_reader(state, request, Scope.READ)


async def admin_key(state: State, request: Request) -> ApiKey:
    return await authorize_reader(state, request, Scope.ADMIN)


ReadKey = Annotated[ApiKey, Depends(read_key)]
AdminKey = Annotated[ApiKey, Depends(admin_key)]


class QueryRow(BaseModel):
    dimensions: list[Any] = Field(description="One value per requested dimension, in order.")
    metrics: list[float | int | None] = Field(
        description="One value per requested metric, in order (null: no numeric value)."
    )


class QueryMeta(BaseModel):
    total_rows: int = Field(description="Rows of the whole answer, before limit and offset.")
    source: str = Field(description="`raw` (the events table) or `rollup`.")
    took_ms: float
    date_range: list[str] = Field(description="The range as resolved: [start, end) instants.")
    metrics: list[str]
    dimensions: list[str]


class QueryResponse(BaseModel):
    results: list[QueryRow]
    meta: QueryMeta


READ_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, unknown or revoked API key."},
    403: {
        "model": ErrorBody,
        "description": "The key lacks the `read` scope, or names another product without `admin`.",
    },
    422: {"model": ErrorBody, "description": "A field of the request is invalid (named)."},
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


@router.post(
    "/v1/query",
    response_model=QueryResponse,
    responses=READ_ERRORS,
    summary="Counts, unique users, aggregates and breakdowns",
    description="Exact: every number is what SQL over the stored events gives (each event "
    "stored once, retries included).",
    openapi_extra={"security": [{"HTTPBearer": []}]},
)
async def query(body: QueryRequest, key: ReadKey, state: State) -> dict[str, Any]:
    return await state.reads.query(key, body)
