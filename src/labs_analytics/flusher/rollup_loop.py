"""The rollup refresh beside the flushing, giving way to any flush that waits on it.

Every ``rollup_interval_seconds`` a flusher process rolls up the hours
flushed into since (``storage.rollups``; one process at a time, by an advisory
lock), on a connection of its own. A refresh holds the marks of the hours it
recomputes until it commits, and a flush of late events into one of those
hours waits for that commit (``storage.rollups`` says why): up to a minute
for a refresh of ``rollup_max_buckets`` hours of a busy product, while ingest
piles up behind that flusher. So while a refresh runs it is watched: once a
flush (any backend) waits on one of its locks, it is cancelled and rolled
back, its marks left for a later refresh. A flush waits at most about
``GIVE_WAY_CHECK_SECONDS``; the rollups, which reads never need to be
current, wait instead.

Reads are exact whether or not the refresh keeps up; a failure is logged and
tried again next interval: it never stops the flushing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg

from labs_analytics.flusher.backoff import sleep_unless_stopped
from labs_analytics.logs import get_logger
from labs_analytics.settings import Settings
from labs_analytics.storage.database import create_background_pool
from labs_analytics.storage.rollups import refresh_rollups

log = get_logger(__name__)

GIVE_WAY_CHECK_SECONDS = 0.5

# Is any backend waiting on a lock that the refresh's backend holds?
_BLOCKS_ANOTHER_SQL = """
SELECT EXISTS (
    SELECT 1
    FROM pg_stat_activity AS waiting, pg_stat_activity AS refresh
    WHERE refresh.application_name = $1
      AND waiting.wait_event_type = 'Lock'
      AND refresh.pid = ANY(pg_blocking_pids(waiting.pid))
)
"""


class RollupRefresher:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, consumer: str) -> None:
        """``pool``: the flusher's, for watching the refresh (never for running it)."""
        self.settings = settings
        self._watch_pool = pool
        self.application_name = f"labs-analytics rollups {consumer}"[:63]

    async def run(self, stop: asyncio.Event) -> None:
        pool = await create_background_pool(
            self.settings.database_url, application_name=self.application_name
        )
        try:
            while not await sleep_unless_stopped(stop, self.settings.rollup_interval_seconds):
                await self._refresh_marked(pool, stop)
        finally:
            await pool.close()

    async def _refresh_marked(self, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
        """Refreshes until no settled mark is left, one transaction each."""
        max_buckets = self.settings.rollup_max_buckets
        started = time.monotonic()
        buckets = 0
        try:
            while not stop.is_set():
                done = await self._refresh_giving_way(pool, max_buckets)
                if done is None:
                    log.info("rollups.gave_way", buckets_before=buckets)
                    return
                buckets += done
                if done < max_buckets:
                    break
        except Exception as exc:  # PostgreSQL away, a missing migration: next time
            log.error("rollups.failed", error=f"{type(exc).__name__}: {exc}")
            return
        if buckets:
            log.info(
                "rollups.refreshed", buckets=buckets, ms=round((time.monotonic() - started) * 1000)
            )

    async def _refresh_giving_way(self, pool: asyncpg.Pool, max_buckets: int) -> int | None:
        """One refresh; None if it was cancelled because a writer waited on it."""
        refresh = asyncio.create_task(
            refresh_rollups(
                pool,
                max_buckets=max_buckets,
                settle_seconds=self.settings.rollup_settle_seconds,
                # Another process refreshing: it does the work; no waiting on its lock.
                wait=False,
                property_keys=self.settings.rollup_properties,
            )
        )
        try:
            while True:
                done, _ = await asyncio.wait({refresh}, timeout=GIVE_WAY_CHECK_SECONDS)
                if done:
                    return refresh.result()
                if await self._blocks_another():
                    refresh.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await refresh
                    return None
        finally:
            if not refresh.done():  # this task cancelled (stop): the refresh with it
                refresh.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresh

    async def _blocks_another(self) -> bool:
        async with self._watch_pool.acquire() as conn:
            return bool(await conn.fetchval(_BLOCKS_ANOTHER_SQL, self.application_name))
