"""sync_mode against a server that is down: each track() is bounded by shutdown_timeout."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from labs_analytics.settings import Settings
from labs_analytics_client import AnalyticsClient, DeliveryError, RetriesExhausted
from tests.helpers import (
    create_key,
    event_rows,
    in_a_thread,
    new_product,
    serve_process,
    wait_for_events,
)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: connections are refused


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        yield sock.getsockname()[1]


def _track_while_down(port: int) -> tuple[list[float], list[DeliveryError], AnalyticsClient]:
    errors: list[DeliveryError] = []
    client = AnalyticsClient(
        "lak_000000000000_unused",
        base_url=f"http://127.0.0.1:{port}",
        sync_mode=True,
        shutdown_timeout=1.0,
        on_error=errors.append,
    )
    took = []
    for i in range(3):
        started = time.monotonic()
        assert client.track("script.step", properties={"i": i}) is not None
        took.append(time.monotonic() - started)
    return took, errors, client


@pytest.mark.parametrize("down", ["closed_port", "black_hole"])
def test_sync_mode_gives_an_event_up_after_shutdown_timeout_when_the_server_is_down(
    down: str, request: pytest.FixtureRequest
) -> None:
    """Without the bound, each call retried for max_retry_time (120 s, ~31 attempts)."""
    port = request.getfixturevalue(down)
    took, errors, client = _track_while_down(port)
    stats = client.stats()
    client.close(timeout=0)
    # shutdown_timeout is 1 s: allow a loaded machine ten times that, far below 120 s.
    assert max(took) < 10, took
    assert len(errors) == 3
    assert all(isinstance(error, RetriesExhausted) for error in errors)
    assert [len(error.event_ids) for error in errors] == [1, 1, 1]
    assert stats.sent == 0
    assert stats.failed == 3
    assert stats.failed_by_reason == {"retries_exhausted": 3}
    assert stats.queued == stats.in_flight == 0


async def test_sync_mode_delivers_again_once_the_server_is_back(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path, closed_port: int
) -> None:
    product = new_product()
    key = await create_key(settings, product=product)
    errors: list[DeliveryError] = []
    client = AnalyticsClient(
        key,
        base_url=f"http://127.0.0.1:{closed_port}",
        sync_mode=True,
        shutdown_timeout=1.0,
        on_error=errors.append,
    )
    try:
        client.track("script.step", properties={"i": 0})  # given up: nothing listens
        async with in_a_thread(serve_process(settings, tmp_path, port=closed_port)):
            delivered = client.track("script.step", properties={"i": 1})
            stats = client.stats()
            await wait_for_events(db, 1, product=product)
    finally:
        client.close(timeout=0)
    assert len(errors) == 1
    assert (stats.sent, stats.failed) == (1, 1)
    assert [str(row["event_id"]) for row in await event_rows(db, product)] == [delivered]
