"""The in-process key cache that ingest authenticates against.

Ingest never waits on PostgreSQL for a known key: lookups read a dict that a
background task reloads every ``refresh_seconds``. While PostgreSQL is down the
last known set stays valid; a revoked key stops working within one refresh.

Each successful reload also writes the key hashes to Redis, so a process that
starts while PostgreSQL is down still knows the keys. An unknown key id
waits (at most a second) for a reload that started after it arrived, so a key
created a moment ago works at once; such reloads are shared and rate limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from labs_analytics.auth.keys import ApiKey, Scope, is_valid_rate_limit, key_id_of, matches
from labs_analytics.logs import get_logger

log = get_logger(__name__)

KeyLoader = Callable[[], Awaitable[list[ApiKey]]]

ON_MISS_MIN_GAP_SECONDS = 0.25
ON_MISS_TIMEOUT_SECONDS = 1.0


class KeyCache:
    def __init__(
        self,
        load: KeyLoader,
        *,
        refresh_seconds: float,
        redis: Redis | None = None,
        mirror_key: str = "la:keys",
    ) -> None:
        self._load = load
        self._refresh_seconds = refresh_seconds
        self._redis = redis
        self._mirror_key = mirror_key
        self._keys: dict[str, ApiKey] = {}
        self._reloading: asyncio.Task[bool] | None = None
        self._reload_started = -ON_MISS_MIN_GAP_SECONDS
        self._reported_bad_rates: set[str] = set()  # key ids already logged
        self.last_success: float | None = None
        self.source: str = "empty"

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key_id: str) -> ApiKey | None:
        """The active key with this public id (a dashboard session checks it is still active)."""
        return self._keys.get(key_id)

    async def lookup(self, token: str) -> ApiKey | None:
        key_id = key_id_of(token)
        if key_id is None:
            return None
        key = self._keys.get(key_id)
        if key is None:
            # Perhaps created a moment ago: wait (briefly) for a reload that
            # started after this request arrived.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._reload_since(time.monotonic()), ON_MISS_TIMEOUT_SECONDS
                )
            key = self._keys.get(key_id)
        if key is None or not matches(token, key):
            return None
        return key

    async def refresh(self) -> bool:
        """Reload from PostgreSQL; on failure keep what we have (or load the Redis mirror).

        The reload this waits for started after the call: joining one already
        in flight could return a set read before a key created a moment ago.
        """
        since = time.monotonic()
        while True:
            task = self._start_reload()
            started = self._reload_started
            ok = await asyncio.shield(task)
            if started >= since:
                return ok

    async def _reload_since(self, since: float) -> None:
        """Wait for a reload that started at or after ``since``.

        Reloads are single flight and at least ``ON_MISS_MIN_GAP_SECONDS``
        apart, so a flood of unknown keys costs PostgreSQL a few tiny queries
        a second, whatever the request rate.
        """
        while True:
            task = self._reloading
            if task is not None and not task.done():
                await asyncio.shield(task)
                if self._reload_started >= since:
                    return
                continue
            wait = self._reload_started + ON_MISS_MIN_GAP_SECONDS - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            await asyncio.shield(self._start_reload())
            return

    def _start_reload(self) -> asyncio.Task[bool]:
        if self._reloading is None or self._reloading.done():
            self._reload_started = time.monotonic()
            self._reloading = asyncio.ensure_future(self._do_refresh())
        return self._reloading

    async def _do_refresh(self) -> bool:
        try:
            keys = await self._load()
        except Exception as exc:  # PostgreSQL down or not migrated: keep the last known set
            log.warning(
                "keys.refresh_failed",
                error=f"{type(exc).__name__}: {exc}",
                cached_keys=len(self._keys),
                source=self.source,
            )
            if not self._keys:
                await self._load_mirror()
            return False
        self._keys = self._usable(keys)
        self.last_success = time.monotonic()
        self.source = "postgresql"
        await self._write_mirror(list(self._keys.values()))
        return True

    def _usable(self, keys: Iterable[ApiKey]) -> dict[str, ApiKey]:
        """The keys by id, each with a rate the token bucket can use.

        A rate stored before the database checked it (or edited by hand) made
        the shared rate-limit script fail for every key in the same call. Such
        a key gets the deployment's default instead, and is reported once per
        process, by its public id only: never the key or its hash.
        """
        usable: dict[str, ApiKey] = {}
        for key in keys:
            rate = key.rate_limit_per_second
            if rate is not None and not is_valid_rate_limit(rate):
                if key.key_id not in self._reported_bad_rates:
                    self._reported_bad_rates.add(key.key_id)
                    log.error(
                        "keys.invalid_rate_limit",
                        key_id=key.key_id,
                        product=key.product,
                        rate_limit_per_second=repr(rate),
                        using="the deployment's default rate",
                    )
                key = dataclasses.replace(key, rate_limit_per_second=None)
            usable[key.key_id] = key
        return usable

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.refresh()
            try:
                await asyncio.wait_for(stop.wait(), self._refresh_seconds)
            except TimeoutError:
                pass

    async def _write_mirror(self, keys: list[ApiKey]) -> None:
        if self._redis is None:
            return
        payload = orjson.dumps(
            [
                [k.key_id, k.product, sorted(k.scopes), k.key_hash, k.rate_limit_per_second]
                for k in keys
            ]
        )
        try:
            await self._redis.set(self._mirror_key, payload)
        except RedisError as exc:
            log.warning("keys.mirror_write_failed", error=repr(exc))

    async def _load_mirror(self) -> None:
        if self._redis is None:
            return
        try:
            raw = await self._redis.get(self._mirror_key)
        except RedisError as exc:
            log.warning("keys.mirror_read_failed", error=repr(exc))
            return
        if not raw:
            return
        try:
            rows = orjson.loads(raw)
            keys = [
                ApiKey(
                    key_id=r[0],
                    product=r[1],
                    scopes=frozenset(Scope(s) for s in r[2]),
                    key_hash=r[3],
                    rate_limit_per_second=r[4] if len(r) > 4 else None,
                )
                for r in rows
            ]
        except (ValueError, TypeError, IndexError) as exc:
            log.error("keys.mirror_unreadable", error=repr(exc))
            return
        self._keys = self._usable(keys)
        self.source = "redis-mirror"
        log.warning("keys.loaded_from_mirror", cached_keys=len(keys))
