"""The read API's records: a user's summary, raw events, exports.

``GET /v1/users/{user}/summary``, ``GET /v1/events``, ``GET /v1/export``.
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["read"])
