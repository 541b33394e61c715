"""The key cache's reload rules, with an in-memory key source standing in for the table.

The PostgreSQL and Redis sides are covered by the integration and fault tests;
these pin down the ordering guarantees, which are hard to hit on purpose there.
"""

from __future__ import annotations

import asyncio

from labs_analytics.auth.cache import KeyCache
from labs_analytics.auth.keys import ApiKey, Scope, generate_key


class KeySource:
    """A key table whose reads can be held open, to interleave a write with a reload."""

    def __init__(self) -> None:
        self.keys: list[ApiKey] = []
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.failing = False

    def add(self, product: str = "demo") -> str:
        new = generate_key()
        self.keys.append(ApiKey(new.key_id, product, frozenset({Scope.INGEST}), new.key_hash))
        return new.plaintext

    async def load(self) -> list[ApiKey]:
        self.reads += 1
        snapshot = list(self.keys)  # what a query started now would see
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise ConnectionRefusedError("the table is unreachable")
        return snapshot


async def test_refresh_does_not_join_a_reload_that_started_before_it() -> None:
    source = KeySource()
    cache = KeyCache(source.load, refresh_seconds=60)
    source.gate = asyncio.Event()
    in_flight = asyncio.ensure_future(cache.refresh())  # reads the table while it is empty
    await asyncio.sleep(0)
    token = source.add()  # created while that read is still open

    refreshed = asyncio.ensure_future(cache.refresh())
    await asyncio.sleep(0)
    source.gate.set()
    assert await in_flight is True
    assert await refreshed is True

    assert source.reads == 2
    assert await cache.lookup(token) is not None


async def test_an_unknown_key_triggers_a_reload_so_a_new_key_works_at_once() -> None:
    source = KeySource()
    cache = KeyCache(source.load, refresh_seconds=60)
    await cache.refresh()
    token = source.add()

    key = await cache.lookup(token)

    assert key is not None
    assert key.product == "demo"
    assert source.reads == 2


async def test_a_failed_reload_keeps_the_last_known_keys() -> None:
    source = KeySource()
    cache = KeyCache(source.load, refresh_seconds=60)
    token = source.add()
    assert await cache.refresh() is True

    source.failing = True
    assert await cache.refresh() is False

    assert await cache.lookup(token) is not None
    assert cache.source == "postgresql"


async def test_a_wrong_secret_for_a_known_key_id_is_refused() -> None:
    source = KeySource()
    cache = KeyCache(source.load, refresh_seconds=60)
    token = source.add()
    await cache.refresh()
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")

    assert await cache.lookup(forged) is None
