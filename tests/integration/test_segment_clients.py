"""The real Segment and RudderStack Python libraries, pointed at a real `serve`.

Nothing in them is changed but the host: segment-analytics-python (its write
key as Basic auth and in the body) and rudder-sdk-python (Basic auth, gzip).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg
import httpx
import pytest
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from labs_analytics.embedded import free_port
from labs_analytics.ingest.segment import MESSAGE_ID_NAMESPACE
from labs_analytics.settings import Settings
from tests.helpers import (
    ServeProcess,
    Servers,
    create_key,
    event_rows,
    fast_settings,
    in_a_thread,
    new_product,
    serve_process,
    wait_for_drained_stream,
    wait_for_events,
)


class AnalyticsClient(Protocol):
    def track(self, *args: Any, **kwargs: Any) -> Any: ...
    def identify(self, *args: Any, **kwargs: Any) -> Any: ...
    def page(self, *args: Any, **kwargs: Any) -> Any: ...
    def flush(self) -> None: ...
    def shutdown(self) -> None: ...


LIBRARIES = ("segment", "rudder")


def make_client(
    library: str, key: str, host: str, errors: list[Any], *, max_retries: int = 3
) -> AnalyticsClient:
    def on_error(error: Any, batch: Any) -> None:
        errors.append(error)

    if library == "segment":
        return SegmentClient(
            write_key=key,
            host=host,
            on_error=on_error,
            upload_interval=0.05,
            max_retries=max_retries,
        )
    return RudderClient(
        write_key=key, host=host, on_error=on_error, upload_interval=0.05, max_retries=max_retries
    )


def _track(client: AnalyticsClient, ids: list[str], when: datetime) -> None:
    """One `track` per id, a second apart from ``when`` (a Segment-style free-text name)."""
    for n, message_id in enumerate(ids):
        client.track(
            user_id=f"u_{n % 5}",
            event="Club Searched",
            properties={"q": "chess club", "n": n},
            message_id=message_id,
            timestamp=when + timedelta(seconds=n),
        )


@pytest.fixture(scope="module")
def client_settings(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return fast_settings(
        servers, prefix="segment", spool_dir=tmp_path_factory.mktemp("segment-spool")
    )


@pytest.fixture(scope="module")
def server(
    client_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    """One `serve` for the module: the libraries talk to a real process."""
    with serve_process(client_settings, tmp_path_factory.mktemp("segment-serve")) as running:
        yield running


async def _rejected(base_url: str, reason: str) -> float:
    text = (await asyncio.to_thread(httpx.get, f"{base_url}/metrics")).text
    match = re.search(
        rf'^labs_ingest_rejected_total{{reason="{reason}"}} ([0-9.e+]+)$', text, re.MULTILINE
    )
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("library", LIBRARIES)
async def test_events_from_the_library_land_once_with_the_mapping(
    server: ServeProcess, client_settings: Settings, db: asyncpg.Connection, library: str
) -> None:
    product = new_product()
    key = await create_key(client_settings, product)
    errors: list[Any] = []
    client = make_client(library, key, server.base_url, errors)
    ids = [str(uuid.uuid4()) for _ in range(30)]
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)

    def send() -> None:
        _track(client, ids, when)
        client.identify(user_id="u_0", traits={"school": "SEAS"}, message_id="identify-1")
        client.page(user_id="u_1", name="Home", properties={"path": "/"}, message_id="page-1")
        client.flush()
        # The same messages again, as a client resends them after a lost answer
        # (same messageId, same timestamp): stored once.
        _track(client, ids[:10], when)
        client.flush()
        client.shutdown()

    await asyncio.to_thread(send)
    assert errors == []
    await wait_for_events(db, 32, product=product)
    await wait_for_drained_stream(client_settings)  # the resent ten flushed too
    rows = await event_rows(db, product)
    assert len(rows) == 32
    tracked = [row for row in rows if row["name"] == "Club Searched"]
    assert sorted(str(row["event_id"]) for row in tracked) == sorted(ids)
    first = next(row for row in tracked if str(row["event_id"]) == ids[0])
    assert first["properties"] == {"q": "chess club", "n": 0}
    assert first["user_id"] == "u_0"
    assert first["timestamp"] == when
    assert first["context"]["library"]["name"]  # the library's own context, kept
    assert first["context"]["$segment"]["messageId"] == ids[0]
    identify = next(row for row in rows if row["name"] == "identify")
    assert identify["properties"] == {"school": "SEAS"}
    assert identify["event_id"] == uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{product}\nidentify-1")
    page = next(row for row in rows if row["name"] == "page.view")
    assert page["context"]["$segment"]["name"] == "Home"


@pytest.mark.parametrize("library", LIBRARIES)
async def test_a_bad_key_is_one_refused_request_not_a_retry_storm(
    server: ServeProcess, library: str
) -> None:
    before = await _rejected(server.base_url, "unauthenticated")
    errors: list[Any] = []
    client = make_client(library, "lak_not_a_key", server.base_url, errors)

    def send() -> None:
        client.track(user_id="u", event="Lost", message_id=str(uuid.uuid4()))
        client.flush()
        client.shutdown()

    await asyncio.to_thread(send)
    assert len(errors) == 1
    assert "401" in str(errors[0]) or getattr(errors[0], "status", None) == 401
    # One request reached us: the 401's body has a `code`, so no retries.
    assert await _rejected(server.base_url, "unauthenticated") - before == 1


@pytest.mark.parametrize("library", LIBRARIES)
async def test_a_server_restarted_in_the_middle_loses_and_doubles_nothing(
    client_settings: Settings,
    db: asyncpg.Connection,
    tmp_path_factory: pytest.TempPathFactory,
    library: str,
) -> None:
    """Half the messages sent, the server stopped (SIGTERM) while the client
    keeps tracking, and started again on the same port: the library's own
    retries deliver the rest, and every message lands once."""
    product = new_product()
    key = await create_key(client_settings, product)
    port = free_port()
    log_dir = tmp_path_factory.mktemp(f"restart-{library}")
    errors: list[Any] = []
    ids = [str(uuid.uuid4()) for _ in range(40)]
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    async with in_a_thread(serve_process(client_settings, log_dir, port=port)) as first:
        # Retries enough to outlast a server start on a busy machine (the
        # libraries back off 0.5, 1, 2, 4 s… between them).
        client = make_client(library, key, first.base_url, errors, max_retries=10)
        await asyncio.to_thread(lambda: (_track(client, ids[:20], when), client.flush()))
    # Down now: the next messages find nothing listening until the new server is up.
    sending = asyncio.create_task(
        asyncio.to_thread(
            lambda: (_track(client, ids[20:], when), client.flush(), client.shutdown())
        )
    )
    await asyncio.sleep(0.3)
    async with in_a_thread(serve_process(client_settings, log_dir, port=port)):
        await sending
        await wait_for_events(db, len(ids), product=product)
    await wait_for_drained_stream(client_settings)
    assert errors == []
    rows = await event_rows(db, product)
    assert sorted(str(row["event_id"]) for row in rows) == sorted(ids)


@pytest.mark.parametrize("library", LIBRARIES)
async def test_a_rate_limited_key_is_slowed_down_and_every_message_lands_once(
    server: ServeProcess, client_settings: Settings, db: asyncpg.Connection, library: str
) -> None:
    """100 events/s: 1,300 messages sent at once outrun the key's bucket, are
    answered 429 with Retry-After part way, and the library waits and sends
    them again."""
    product = new_product()
    key = await create_key(client_settings, product, rate_limit_per_second=100)
    before = await _rejected(server.base_url, "rate_limited")
    errors: list[Any] = []
    client = make_client(library, key, server.base_url, errors, max_retries=10)
    ids = [str(uuid.uuid4()) for _ in range(1_300)]
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    await asyncio.to_thread(lambda: (_track(client, ids, when), client.flush(), client.shutdown()))
    assert await _rejected(server.base_url, "rate_limited") > before
    assert errors == []
    await wait_for_events(db, len(ids), product=product)
    await wait_for_drained_stream(client_settings)
    rows = await event_rows(db, product)
    assert sorted(str(row["event_id"]) for row in rows) == sorted(ids)


async def test_an_oversized_message_from_rudderstack_is_refused_alone(
    server: ServeProcess, client_settings: Settings, db: asyncpg.Connection
) -> None:
    """rudder-sdk-python lets a message reach 4 MiB; ours stop at 32 KB. The
    one too big is refused inside an answer of 200, the others land, and the
    library reports no error (so it does not send the batch again)."""
    product = new_product()
    key = await create_key(client_settings, product)
    errors: list[Any] = []
    client = make_client("rudder", key, server.base_url, errors)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    big = str(uuid.uuid4())
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)

    def send() -> None:
        _track(client, ids[:2], when)
        client.track(user_id="u", event="Upload", properties={"blob": "x" * 40_000}, message_id=big)
        _track(client, ids[2:], when + timedelta(minutes=1))
        client.flush()
        client.shutdown()

    await asyncio.to_thread(send)
    assert errors == []
    await wait_for_events(db, len(ids), product=product)
    await wait_for_drained_stream(client_settings)
    rows = await event_rows(db, product)
    assert sorted(str(row["event_id"]) for row in rows) == sorted(ids)
