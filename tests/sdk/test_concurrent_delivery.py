"""Several batches in flight at once (``max_in_flight``), against the real service.

The transports here wrap the real ones: every request reaches the real server;
they only note how many are on the wire at once, or hold one back so batches
finish out of order.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import uuid
from collections.abc import Sequence

import asyncpg
import httpx

from labs_analytics.settings import Settings
from labs_analytics_client import AnalyticsClient, AsyncAnalyticsClient
from tests.helpers import (
    ServeProcess,
    create_key,
    duplicated_ids,
    event_rows,
    new_product,
    wait_for_events,
)

HOLD_LIMIT = 20.0  # seconds: a guard against a hang, never reached when the client is right


def event_ids_of(request: httpx.Request) -> list[str]:
    body = request.content
    if request.headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    return [event["event_id"] for event in json.loads(body)["events"]]


class OverlapTransport(httpx.HTTPTransport):
    """The real transport; the first ``gather`` requests wait for one another first.

    They only go on once ``gather`` requests are in the transport together,
    which happens only if the client really sends that many at once.
    """

    def __init__(self, gather: int) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._gate = threading.Barrier(gather, timeout=HOLD_LIMIT)
        self._arrived = 0
        self.in_flight = 0
        self.most_in_flight = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self._arrived += 1
            first_ones = self._arrived <= self._gate.parties
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if first_ones:
                self._gate.wait()
            return super().handle_request(request)
        finally:
            with self._lock:
                self.in_flight -= 1


class AsyncOverlapTransport(httpx.AsyncHTTPTransport):
    """``OverlapTransport`` for the asyncio client."""

    def __init__(self, gather: int) -> None:
        super().__init__()
        self._gather = gather
        self._all_here = asyncio.Event()
        self._arrived = 0
        self.in_flight = 0
        self.most_in_flight = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._arrived += 1
        first_ones = self._arrived <= self._gather
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self._arrived >= self._gather:
                self._all_here.set()
            if first_ones:
                async with asyncio.timeout(HOLD_LIMIT):
                    await self._all_here.wait()
            return await super().handle_async_request(request)
        finally:
            self.in_flight -= 1


class HoldFirstBatchTransport(httpx.HTTPTransport):
    """The real transport; the request carrying ``first_id`` waits until ``others``
    other requests were answered, so the oldest batch finishes last."""

    def __init__(self, first_id: str, others: int) -> None:
        super().__init__()
        self._first_id = first_id
        self._others = others
        self._lock = threading.Lock()
        self._answered_others = 0
        self._release = threading.Event()
        self.finished: list[Sequence[str]] = []  # event ids of each answered request, in order

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        ids = event_ids_of(request)
        held = self._first_id in ids
        if held:
            self._release.wait(HOLD_LIMIT)
        response = super().handle_request(request)
        with self._lock:
            self.finished.append(ids)
            if not held:
                self._answered_others += 1
                if self._answered_others >= self._others:
                    self._release.set()
        return response


async def test_the_sync_client_has_several_batches_in_flight_at_once(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    transport = OverlapTransport(gather=4)
    with AnalyticsClient(
        key, base_url=shared_server.base_url, transport=transport, flush_interval=60
    ) as client:
        ids = [client.track("feed.scroll", properties={"i": i}) for i in range(1000)]
        assert client.flush(timeout=60) == 0
        stats = client.stats()

    assert transport.most_in_flight == 4  # the default max_in_flight, and never more
    assert stats.sent == 1000
    assert stats.batches == 10
    assert (stats.failed, stats.dropped, stats.queued, stats.in_flight) == (0, 0, 0, 0)
    await wait_for_events(db, 1000, product=product)
    assert {str(row["event_id"]) for row in await event_rows(db, product)} == set(ids)
    assert await duplicated_ids(db) == []


async def test_the_async_client_has_several_batches_in_flight_at_once(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    transport = AsyncOverlapTransport(gather=3)
    async with AsyncAnalyticsClient(
        key,
        base_url=shared_server.base_url,
        transport=transport,
        max_in_flight=3,
        flush_interval=60,
    ) as client:
        ids = [client.track("feed.scroll", properties={"i": i}) for i in range(1000)]
        assert await client.flush(timeout=60) == 0
        stats = client.stats()

    assert transport.most_in_flight == 3  # max_in_flight, and never more
    assert stats.sent == 1000
    assert stats.batches == 10
    assert (stats.failed, stats.dropped, stats.queued, stats.in_flight) == (0, 0, 0, 0)
    await wait_for_events(db, 1000, product=product)
    assert {str(row["event_id"]) for row in await event_rows(db, product)} == set(ids)
    assert await duplicated_ids(db) == []


async def test_max_in_flight_1_sends_one_request_at_a_time(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    transport = OverlapTransport(gather=1)
    with AnalyticsClient(
        key, base_url=shared_server.base_url, transport=transport, max_in_flight=1
    ) as client:
        for i in range(500):
            client.track("feed.scroll", properties={"i": i})
        assert client.flush(timeout=60) == 0
    assert transport.most_in_flight == 1
    await wait_for_events(db, 500, product=product)


async def test_stats_are_exact_after_a_burst_from_many_threads(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    threads, per_thread = 20, 1000
    tracked: list[str | None] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)
    with AnalyticsClient(key, base_url=shared_server.base_url, shutdown_timeout=60) as client:

        def produce() -> None:
            start.wait()
            mine = [client.track("burst.event", properties={"i": i}) for i in range(per_thread)]
            with lock:
                tracked.extend(mine)

        producers = [threading.Thread(target=produce) for _ in range(threads)]
        for producer in producers:
            producer.start()
        for producer in producers:
            producer.join()
        assert client.flush(timeout=60) == 0
        stats = client.stats()

    accepted = {event_id for event_id in tracked if event_id is not None}
    # Every event is counted once: sent, or dropped by track() for a full queue.
    assert stats.sent == len(accepted)
    assert stats.dropped == threads * per_thread - len(accepted)
    assert stats.dropped_by_reason == ({"queue_full": stats.dropped} if stats.dropped else {})
    assert (stats.failed, stats.queued, stats.in_flight) == (0, 0, 0)
    await wait_for_events(db, len(accepted), product=product)
    assert {str(row["event_id"]) for row in await event_rows(db, product)} == accepted
    assert await duplicated_ids(db) == []


async def test_flush_waits_for_an_older_batch_that_finishes_after_newer_ones(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    first = str(uuid.uuid4())
    transport = HoldFirstBatchTransport(first, others=2)
    client = AnalyticsClient(
        key, base_url=shared_server.base_url, transport=transport, flush_interval=60
    )
    ids = [client.track("feed.scroll", properties={"i": 0}, event_id=first)]
    ids += [client.track("feed.scroll", properties={"i": i}) for i in range(1, 300)]

    assert client.flush(timeout=60) == 0
    stats = client.stats()
    finished = list(transport.finished)
    client.close()

    # The oldest batch was answered after two newer ones, and flush() waited for it.
    assert len(finished) == 3
    assert first in finished[-1]
    assert stats.sent == 300
    assert (stats.queued, stats.in_flight, stats.failed) == (0, 0, 0)
    await wait_for_events(db, 300, product=product)
    assert {str(row["event_id"]) for row in await event_rows(db, product)} == set(ids)
