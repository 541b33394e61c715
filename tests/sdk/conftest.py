"""One real `labs-analytics serve` shared by the SDK tests that need no special set-up.

Tests that stop, kill, restart or reconfigure a server start their own. Each
test uses a product of its own and a fresh key; the ``db`` fixture empties the
tables first.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from labs_analytics.settings import Settings
from tests.helpers import ServeProcess, Servers, serve_process


@pytest.fixture(scope="session")
def sdk_settings(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        _env_file=None,
        database_url=servers.database_url,
        redis_url=servers.redis_url,
        redis_key_prefix=f"sdk-{uuid.uuid4().hex[:8]}:",
        flush_interval_ms=50,
        key_cache_refresh_seconds=0.25,
        reclaim_idle_ms=500,
        retry_backoff_initial_ms=20,
        retry_backoff_max_ms=300,
        redis_timeout_seconds=1.0,
        retry_after_seconds=1,
        spool_dir=str(tmp_path_factory.mktemp("sdk-spool")),
    )


@pytest.fixture(scope="session")
def shared_server(
    sdk_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    with serve_process(sdk_settings, tmp_path_factory.mktemp("sdk-serve")) as server:
        yield server
