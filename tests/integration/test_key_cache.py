"""The key cache's reload rules, against the real key table.

Reads of the table can be held open after they ran, to interleave a key's
creation with a reload; a failing reload is a real one, against a port
where nothing listens.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from labs_analytics.auth.cache import KeyCache
from labs_analytics.auth.keys import ApiKey
from labs_analytics.auth.repository import KeyRepository
from labs_analytics.embedded import free_port
from labs_analytics.settings import Settings
from labs_analytics.storage.database import create_engine
from tests.helpers import create_key, wait_for


class KeyTable:
    """The real ``api_keys`` table, read through the repository the service uses."""

    def __init__(self, engine: AsyncEngine, unreachable: AsyncEngine) -> None:
        self._repository = KeyRepository(engine)
        self._unreachable = KeyRepository(unreachable)
        self.reads = 0
        self.hold: asyncio.Event | None = None  # set: finished reads return
        self.down = False

    async def load(self) -> list[ApiKey]:
        repository = self._unreachable if self.down else self._repository
        keys = await repository.load_active()
        self.reads += 1
        if self.hold is not None:
            await self.hold.wait()
        return keys


@pytest.fixture
async def table(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[KeyTable]:
    del db  # requested so the tables are emptied first
    engine = create_engine(settings.database_url)
    unreachable = create_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    try:
        yield KeyTable(engine, unreachable)
    finally:
        await engine.dispose()
        await unreachable.dispose()


async def test_refresh_does_not_join_a_reload_that_started_before_it(
    table: KeyTable, settings: Settings
) -> None:
    cache = KeyCache(table.load, refresh_seconds=60)
    table.hold = asyncio.Event()
    in_flight = asyncio.ensure_future(cache.refresh())

    async def read_once() -> bool:  # that reload has read the table, still without the key
        return table.reads == 1

    await wait_for(read_once, what="the first reload to read the table")
    token = await create_key(settings)

    refreshed = asyncio.ensure_future(cache.refresh())

    async def refresh_waiting() -> bool:  # started, and waiting on the reload in flight
        return inspect.getcoroutinestate(refreshed.get_coro()) == inspect.CORO_SUSPENDED

    await wait_for(refresh_waiting, what="the second refresh() to wait")
    table.hold.set()
    assert await in_flight is True
    assert await refreshed is True

    assert table.reads == 2
    assert await cache.lookup(token) is not None


async def test_an_unknown_key_triggers_a_reload_so_a_new_key_works_at_once(
    table: KeyTable, settings: Settings
) -> None:
    cache = KeyCache(table.load, refresh_seconds=60)
    await cache.refresh()
    token = await create_key(settings, product="clubs")

    key = await cache.lookup(token)

    assert key is not None
    assert key.product == "clubs"
    assert table.reads == 2


async def test_a_failed_reload_keeps_the_last_known_keys(
    table: KeyTable, settings: Settings
) -> None:
    cache = KeyCache(table.load, refresh_seconds=60)
    token = await create_key(settings)
    assert await cache.refresh() is True

    table.down = True
    assert await cache.refresh() is False

    assert await cache.lookup(token) is not None
    assert cache.source == "postgresql"


async def test_a_wrong_secret_for_a_known_key_id_is_refused(
    table: KeyTable, settings: Settings
) -> None:
    cache = KeyCache(table.load, refresh_seconds=60)
    token = await create_key(settings)
    await cache.refresh()
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")

    assert await cache.lookup(forged) is None
