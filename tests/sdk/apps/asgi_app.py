"""A FastAPI app with ``AnalyticsMiddleware``, for uvicorn (``--workers`` too).

The client takes its key and URL from LABS_ANALYTICS_API_KEY and
LABS_ANALYTICS_URL and is made at import, in each worker (uvicorn's workers
are spawned processes that import the app themselves). It is the async client,
or the sync one with ``LABS_TEST_CLIENT=sync``. Its flush interval is an hour
and a batch holds 1000 events: what the server stores was delivered by the
middleware's flush at the lifespan shutdown, not by the timer or a full batch.
The user is the ``X-User`` header.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, Response

from labs_analytics_client import AnalyticsClient, AnalyticsMiddleware, AsyncAnalyticsClient
from tests.sdk.apps.served_by import served_by

analytics = (
    AnalyticsClient(flush_interval=3600, batch_size=1000)
    if os.environ.get("LABS_TEST_CLIENT") == "sync"
    else AsyncAnalyticsClient(flush_interval=3600, batch_size=1000)
)


def user_of(scope: dict[str, Any]) -> str | None:
    value = dict(scope["headers"]).get(b"x-user")
    return None if value is None else str(value.decode())


app = FastAPI()
app.add_middleware(AnalyticsMiddleware, client=analytics, exclude_routes={"/healthz"}, user=user_of)


@app.get("/healthz")
async def healthz(response: Response) -> str:
    response.headers.update(served_by())
    return "ok"


@app.get("/api/clubs/{club_id}")
async def club(club_id: int, response: Response) -> dict[str, int]:
    response.headers.update(served_by())
    return {"club": club_id}
