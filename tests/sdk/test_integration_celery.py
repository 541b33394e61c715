"""The Celery signal handlers in a real worker: the prefork pool, Redis as the broker."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis
from celery import Celery

from labs_analytics.settings import Settings
from tests.helpers import (
    ServeProcess,
    Servers,
    count_events,
    create_key,
    event_rows,
    new_product,
    wait_for_events,
)
from tests.sdk.apps.celery_config import celery_config
from tests.sdk.frameworks import app_env, child

TASKS = "tests.sdk.apps.celery_app"
BROKER_DB = 5  # the service uses the URL's own database; the broker keeps to another


@pytest.fixture
def broker(servers: Servers) -> Iterator[tuple[str, str]]:
    """(Redis URL, key prefix) for one test's broker and results; its keys deleted after."""
    url = urlunsplit(urlsplit(servers.redis_url)._replace(path=f"/{BROKER_DB}"))
    prefix = f"celery-test-{uuid.uuid4().hex[:8]}:"
    yield url, prefix
    with redis.Redis.from_url(url) as connection:
        for key in connection.scan_iter(match=f"{prefix}*"):
            connection.delete(key)


def task_events(stored: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Each stored ``celery.task`` as (task, state, success, retries, error_type), sorted."""
    assert {row["name"] for row in stored} == {"celery.task"}
    for row in stored:
        assert row["properties"]["duration_ms"] >= 0
    return sorted(
        (
            (
                row["properties"]["task"].removeprefix(f"{TASKS}."),
                row["properties"]["state"],
                row["properties"]["success"],
                row["properties"]["retries"],
                row["properties"].get("error_type"),
            )
            for row in stored
        ),
        key=repr,
    )


async def test_every_task_run_is_stored_once_when_the_prefork_worker_shuts_down_warm(
    shared_server: ServeProcess,
    sdk_settings: Settings,
    db: asyncpg.Connection,
    broker: tuple[str, str],
    tmp_path: Path,
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    redis_url, prefix = broker
    env = app_env(
        key, shared_server.base_url, CELERY_TEST_REDIS_URL=redis_url, CELERY_TEST_KEY_PREFIX=prefix
    )
    worker_args = [
        *(sys.executable, "-m", "celery", "-A", TASKS, "worker"),
        *("--pool=prefork", "--concurrency=2", "--loglevel=INFO"),
        *("--without-gossip", "--without-mingle", "--without-heartbeat"),
    ]
    producer = Celery("producer", set_as_current=False)
    producer.conf.update(celery_config(redis_url, prefix))
    try:
        with child(worker_args, env, tmp_path / "worker.log") as worker:
            results = [
                *(producer.send_task(f"{TASKS}.add", args=(i, i)) for i in range(4)),
                *(producer.send_task(f"{TASKS}.import_rows", args=(i,)) for i in range(3)),
                *(producer.send_task(f"{TASKS}.flaky", args=(i,)) for i in range(2)),
            ]
            outcomes = await asyncio.to_thread(
                lambda: [result.get(timeout=60, propagate=False) for result in results]
            )
            assert outcomes[:4] == [0, 2, 4, 6], worker.logs()
            assert [type(outcome).__name__ for outcome in outcomes[4:7]] == ["ImportFailed"] * 3
            assert outcomes[7:] == [0, 1]
            # An hour's flush interval: nothing was sent yet, the drain at shutdown must do it.
            assert await count_events(db, product) == 0
            assert await asyncio.to_thread(worker.terminate) == 0, worker.logs()
    finally:
        producer.close()

    await wait_for_events(db, 11, product=product)
    stored = await event_rows(db, product)
    assert len({row["event_id"] for row in stored}) == len(stored) == 11
    expected = [
        *[("add", "SUCCESS", True, 0, None)] * 4,
        *[("import_rows", "FAILURE", False, 0, "ImportFailed")] * 3,
        *[("flaky", "RETRY", False, 0, "TimeoutError")] * 2,
        *[("flaky", "SUCCESS", True, 1, None)] * 2,
    ]
    assert task_events(stored) == sorted(expected, key=repr)
