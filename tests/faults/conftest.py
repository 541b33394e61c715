"""Fault tests break the session's own embedded servers, and always mend them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from labs_analytics.embedded import EmbeddedPostgres, EmbeddedRedis
from labs_analytics.settings import Settings
from tests.faults.oracle import Oracle
from tests.faults.processes import Children
from tests.helpers import Servers, create_key


@pytest.fixture
def postgres_server(servers: Servers) -> Iterator[EmbeddedPostgres]:
    if servers.postgres is None:
        pytest.skip(
            "needs the embedded PostgreSQL (TEST_DATABASE_URL names a server we must not stop)"
        )
    try:
        yield servers.postgres
    finally:
        if not servers.postgres.is_running():
            servers.postgres.start()


@pytest.fixture
def redis_server(servers: Servers) -> Iterator[EmbeddedRedis]:
    if servers.redis is None:
        pytest.skip("needs the embedded Redis (TEST_REDIS_URL names a server we must not stop)")
    try:
        yield servers.redis
    finally:
        if not servers.redis.is_running():
            servers.redis.start()


@pytest.fixture
def children(tmp_path: Path, redis: Redis) -> Iterator[Children]:
    """Start flusher and serve processes; all are thawed, stopped and reaped after the
    test, before the test's Redis keys are deleted (a live flusher would recreate them)."""
    del redis
    started = Children(tmp_path)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
async def oracle(settings: Settings, db: asyncpg.Connection) -> Oracle:
    """An oracle holding an ingest key of its own product."""
    del db  # requested so the tables are emptied before the key is created
    return Oracle(key=await create_key(settings, product=Oracle.product))
