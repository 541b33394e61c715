"""One real `labs-analytics serve` shared by the SDK tests that need no special set-up.

Tests that stop, kill, restart or reconfigure a server start their own. Each
test uses a product of its own and a fresh key; the ``db`` fixture empties the
tables first.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labs_analytics.settings import Settings
from tests.helpers import ServeProcess, Servers, fast_settings, serve_process


@pytest.fixture(scope="session")
def sdk_settings(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return fast_settings(
        servers, prefix="sdk", spool_dir=tmp_path_factory.mktemp("sdk-spool"), retry_after_seconds=1
    )


@pytest.fixture(scope="session")
def shared_server(
    sdk_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    with serve_process(sdk_settings, tmp_path_factory.mktemp("sdk-serve")) as server:
        yield server
