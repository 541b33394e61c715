"""Fault tests break the session's own embedded servers, and always mend them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labs_analytics.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.helpers import Servers


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
