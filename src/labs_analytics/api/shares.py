"""Read-only share links for the dashboard: ``/v1/shares`` (``admin`` keys).

A link opens the dashboard for one product, read-only, until it expires or is
revoked; its token is shown once, when it is created (dashboard/sessions.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.exceptions import RedisError

from labs_analytics.api.dependencies import SessionsUnavailable, State
from labs_analytics.api.errors import ErrorBody
from labs_analytics.api.read import AdminKey
from labs_analytics.auth.keys import InvalidKeyField, check_product
from labs_analytics.dashboard.sessions import ShareLink
from labs_analytics.errors import AppError

router = APIRouter(tags=["dashboard"])
T = TypeVar("T")
SHARE_PATH = "/dashboard/share/"


class ShareNotFound(AppError):
    status_code = 404
    code = "not_found"


class InvalidShare(AppError):
    status_code = 422
    code = "invalid_request"


async def _in_redis(operation: Awaitable[T]) -> T:
    try:
        return await operation
    except (RedisError, OSError) as exc:
        raise SessionsUnavailable("share links are kept in Redis, which is unavailable") from exc


class ShareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product: str | None = Field(
        default=None, max_length=64, description="The product shown; default: the key's own."
    )
    expires_in_days: float = Field(
        default=7, gt=0, description="At most `DASHBOARD_SHARE_MAX_DAYS` (90 by default)."
    )

    @field_validator("product")
    @classmethod
    def _product(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                check_product(value)
            except InvalidKeyField as exc:
                raise ValueError(exc.message) from None
        return value


class Share(BaseModel):
    share_id: str
    product: str
    created_by: str = Field(description="The public id of the admin key that created it.")
    created_at: dt.datetime
    expires_at: dt.datetime


class NewShare(Share):
    url: str = Field(description="The link to hand out; shown only now.")


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, unknown or revoked API key."},
    403: {"model": ErrorBody, "description": "The key lacks the `admin` scope."},
    503: {"model": ErrorBody, "description": "Redis, which keeps the links, is unavailable."},
}
_SECURITY: dict[str, Any] = {"security": [{"HTTPBearer": []}]}


def _public(share: ShareLink) -> dict[str, Any]:
    return {
        "share_id": share.share_id,
        "product": share.product,
        "created_by": share.created_by,
        "created_at": dt.datetime.fromtimestamp(share.created_at, dt.UTC),
        "expires_at": dt.datetime.fromtimestamp(share.expires_at, dt.UTC),
    }


@router.post(
    "/v1/shares",
    status_code=201,
    response_model=NewShare,
    responses={**_ERRORS, 422: {"model": ErrorBody, "description": "A field is invalid."}},
    summary="Create a read-only dashboard link for one product",
    openapi_extra=_SECURITY,
)
async def create_share(
    body: ShareRequest, key: AdminKey, state: State, request: Request
) -> dict[str, Any]:
    max_days = state.settings.dashboard_share_max_days
    if body.expires_in_days > max_days:
        raise InvalidShare(
            "the request is invalid",
            details=[{"field": "body.expires_in_days", "message": f"at most {max_days} days"}],
        )
    token, share = await _in_redis(
        state.dashboard.create_share(
            product=body.product or key.product,
            expires_in_seconds=max(1, int(body.expires_in_days * 86400)),
            created_by=key.key_id,
        )
    )
    base = str(request.base_url).rstrip("/")
    return {**_public(share), "url": f"{base}{SHARE_PATH}{token}"}


@router.get(
    "/v1/shares",
    response_model=list[Share],
    responses=_ERRORS,
    summary="Active share links, soonest to expire first",
    openapi_extra=_SECURITY,
)
async def list_shares(
    key: AdminKey,
    state: State,
    product: Annotated[str | None, Query(max_length=64, description="Only this product's.")] = None,
) -> list[dict[str, Any]]:
    del key
    return [_public(share) for share in await _in_redis(state.dashboard.list_shares(product))]


@router.delete(
    "/v1/shares/{share_id}",
    status_code=204,
    responses={**_ERRORS, 404: {"model": ErrorBody, "description": "No such active link."}},
    summary="Revoke a share link: its viewers lose access at their next request",
    openapi_extra=_SECURITY,
)
async def revoke_share(
    share_id: Annotated[str, Path(max_length=64)], key: AdminKey, state: State
) -> Response:
    del key
    if await _in_redis(state.dashboard.revoke_share(share_id)) is None:
        raise ShareNotFound(f"no active share link {share_id!r}")
    return Response(status_code=204)
