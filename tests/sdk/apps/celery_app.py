"""A Celery app whose tasks succeed, fail, or retry once; tracked by the SDK.

The client is made here, at import, in the worker's main process: the prefork
pool's processes inherit it through fork(). Its key and URL come from
LABS_ANALYTICS_API_KEY and LABS_ANALYTICS_URL; its flush interval is an hour,
so what the server stores was delivered by the drain at shutdown.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from labs_analytics_client import AnalyticsClient
from labs_analytics_client.celery import track_tasks
from tests.sdk.apps.celery_config import celery_config

app = Celery("labs_test")
app.conf.update(
    celery_config(os.environ["CELERY_TEST_REDIS_URL"], os.environ["CELERY_TEST_KEY_PREFIX"])
)
analytics = AnalyticsClient(flush_interval=3600)
track_tasks(analytics)


class ImportFailed(Exception):
    pass


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def import_rows(n: int) -> None:
    raise ImportFailed(f"row {n} is invalid")


@app.task(bind=True, max_retries=1)
def flaky(self: Any, n: int) -> int:
    if self.request.retries == 0:
        raise self.retry(exc=TimeoutError("the upstream timed out"), countdown=0)
    return n
