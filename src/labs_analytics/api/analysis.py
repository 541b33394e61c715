"""The read API's analyses: ``POST /v1/funnels`` and ``POST /v1/retention``."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["read"])
