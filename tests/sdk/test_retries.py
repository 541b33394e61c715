"""Forced, real retries: a server that is not there yet, frozen, killed, full or strict."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from labs_analytics.embedded import free_port
from labs_analytics.settings import Settings
from labs_analytics_client import AnalyticsClient, DeliveryError, RequestRejected
from tests.helpers import (
    RecordingTransport,
    ServeProcess,
    cli,
    cli_env,
    create_key,
    duplicated_ids,
    event_rows,
    in_a_thread,
    new_product,
    serve_process,
    stop_process,
    wait_for,
    wait_for_events,
)


async def retried_more_than(client: AnalyticsClient, before: int, *, what: str) -> None:
    """Wait until the client has counted a retry beyond ``before``."""

    async def retried() -> bool:
        return client.stats().retried > before

    await wait_for(retried, what=what)


async def test_events_tracked_while_the_server_is_down_arrive_once_it_is_up(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    product = new_product()
    key = await create_key(settings, product=product)
    port = free_port()  # nothing listens here yet
    client = AnalyticsClient(
        key, base_url=f"http://127.0.0.1:{port}", flush_interval=0.05, retry_backoff_max=0.5
    )
    ids = [client.track("page.view", properties={"i": i}) for i in range(500)]
    await retried_more_than(client, 0, what="a refused connection, retried")
    refused = client.stats()
    assert refused.sent == 0
    assert refused.retried >= 1
    assert refused.failed == 0
    try:
        async with in_a_thread(serve_process(settings, tmp_path, port=port)):
            assert client.flush(timeout=15) == 0
            stats = client.stats()
            await wait_for_events(db, 500, product=product)
    finally:
        client.close()
    assert stats.sent == 500
    assert stats.failed == 0
    assert sorted(str(row["event_id"]) for row in await event_rows(db, product)) == sorted(
        i for i in ids if i is not None
    )
    assert await duplicated_ids(db) == []


async def test_every_event_is_stored_once_across_a_frozen_and_a_killed_server(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """Requests time out against a SIGSTOPped server (which then answers them late),
    and die with a SIGKILLed one: the client resends those batches, and the server
    keeps one row per event."""
    product = new_product()
    key = await create_key(settings, product=product)
    port = free_port()
    client = AnalyticsClient(
        key,
        base_url=f"http://127.0.0.1:{port}",
        batch_size=50,
        flush_interval=0.02,
        timeout=0.4,
        retry_backoff_max=0.3,
    )
    ids: list[str | None] = []

    def produce() -> None:
        for i in range(3000):
            ids.append(client.track("api.call", properties={"i": i}))
            if i % 100 == 0:
                time.sleep(0.1)  # ~3 s of steady traffic

    producer = threading.Thread(target=produce)
    try:
        async with in_a_thread(serve_process(settings, tmp_path, port=port)) as first:
            producer.start()

            async def delivering() -> bool:
                return client.stats().sent > 0

            await wait_for(delivering, what="the first batches delivered")
            first.process.send_signal(signal.SIGSTOP)  # frozen: accepts, answers nothing
            # Frozen until a request timed out and was given up on (to be resent).
            await retried_more_than(
                client, client.stats().retried, what="a request to the frozen server timed out"
            )
            sent = client.stats().sent
            first.process.send_signal(signal.SIGCONT)  # answers the requests we gave up on

            async def answering_again() -> bool:
                # The queued requests are read first; answers to new ones come after.
                return client.stats().sent > sent

            await wait_for(answering_again, what="the thawed server to answer again")
            first.process.kill()  # SIGKILL mid-traffic
            await asyncio.to_thread(first.process.wait)
            # Down until the client noticed: its requests in flight died with the server.
            await retried_more_than(
                client, client.stats().retried, what="the client to retry after the kill"
            )
        async with in_a_thread(serve_process(settings, tmp_path, port=port)):
            await asyncio.to_thread(producer.join)
            assert client.flush(timeout=30) == 0
            stats = client.stats()
            await wait_for_events(db, 3000, product=product)
    finally:
        client.close()

    assert None not in ids
    assert stats.retried >= 1
    assert stats.failed == 0
    assert stats.sent == 3000
    stored = await event_rows(db, product)
    assert len(stored) == 3000
    # The server really received some events twice (a batch it had taken, resent
    # after the client timed out) and its transaction log counted them as duplicates.
    assert await db.fetchval("SELECT sum(duplicates) FROM ingest_batches") > 0
    assert sorted(str(row["event_id"]) for row in stored) == sorted(str(i) for i in ids)
    assert await duplicated_ids(db) == []


@pytest.fixture(scope="module")
def strict_server(
    sdk_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    """A server with small limits: 20 kB bodies, 2 kB properties."""
    with serve_process(
        sdk_settings,
        tmp_path_factory.mktemp("strict-serve"),
        MAX_BODY_BYTES="20000",
        MAX_PROPERTIES_BYTES="2000",
    ) as server:
        yield server


async def test_a_batch_over_the_body_limit_is_halved_until_it_fits(
    strict_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    transport = RecordingTransport()
    with AnalyticsClient(
        key, base_url=strict_server.base_url, gzip=False, transport=transport
    ) as client:
        for i in range(200):  # ~420 bytes each: 100 of them are ~42 kB, over the 20 kB limit
            client.track("report.row", properties={"i": i, "text": "x" * 360})
        assert client.flush(timeout=15) == 0
        stats = client.stats()

    statuses = [exchange.status for exchange in transport.exchanges]
    assert statuses.count(413) >= 2  # 100 → 50 → 25
    assert stats.sent == 200
    assert stats.failed == 0
    assert stats.batches == 8
    await wait_for_events(db, 200, product=product)
    assert sorted(row["properties"]["i"] for row in await event_rows(db, product)) == list(
        range(200)
    )
    assert await duplicated_ids(db) == []


async def test_a_422_drops_only_the_events_it_names(
    strict_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    errors: list[DeliveryError] = []
    with AnalyticsClient(key, base_url=strict_server.base_url, on_error=errors.append) as client:
        ids = [
            # 3 kB of properties: within the SDK's 32 KiB, over this server's 2 kB
            client.track(
                "form.submit", properties={"i": i, "text": "y" * (3000 if i % 10 == 3 else 10)}
            )
            for i in range(30)
        ]
        assert client.flush(timeout=10) == 0
        stats = client.stats()

    too_big = {ids[i] for i in range(30) if i % 10 == 3}
    (error,) = errors
    assert isinstance(error, RequestRejected)
    assert error.status_code == 422
    assert set(error.event_ids) == too_big
    assert stats.failed_by_reason == {"rejected": 3}
    assert stats.sent == 27
    await wait_for_events(db, 27, product=product)
    assert {str(row["event_id"]) for row in await event_rows(db, product)} == set(ids) - too_big


async def test_503_with_retry_after_is_retried_until_the_backlog_drains(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    product = new_product()
    key = await create_key(settings, product=product)
    transport = RecordingTransport()
    overloaded = dict(BACKLOG_MAX_EVENTS="150", RETRY_AFTER_SECONDS="1")
    async with in_a_thread(
        serve_process(settings, tmp_path, "--no-flusher", **overloaded)
    ) as server:
        # One request at a time: the backlog then admits exactly the first batch,
        # and each exchange after a 503 is that batch's retry.
        client = AnalyticsClient(
            key, base_url=server.base_url, transport=transport, max_retry_time=60, max_in_flight=1
        )
        for i in range(400):
            client.track("checkout.step", properties={"i": i})
        await retried_more_than(client, 1, what="two 503s, retried")
        assert client.stats().sent == 100  # the first batch fit under the backlog limit
        flusher = await asyncio.to_thread(
            subprocess.Popen,
            cli("flusher"),
            env=cli_env(settings, **overloaded),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert client.flush(timeout=30) == 0
            stats = client.stats()
            client.close()
            await wait_for_events(db, 400, product=product)
        finally:
            await asyncio.to_thread(stop_process, flusher)

    exchanges = transport.exchanges
    assert any(exchange.status == 503 for exchange in exchanges)
    for before, after in itertools.pairwise(exchanges):
        if before.status == 503:
            assert before.retry_after == "1"
            assert after.at - before.at >= 0.95
    assert stats.sent == 400
    assert stats.failed == 0
    assert len(await event_rows(db, product)) == 400
    assert await duplicated_ids(db) == []
