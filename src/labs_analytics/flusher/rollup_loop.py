"""The rollup refresh beside the flushing, yielding to it.

Every ``rollup_interval_seconds`` a flusher process rolls up the hours
flushed into since (``storage.rollups``; one process at a time, by an advisory
lock), on a connection of its own. Rolling up reads every event again and
writes about two rollup rows per event: in PostgreSQL, about as much work as
landing it (BENCHMARKS.md). Reads never need the rollups to be current (a
marked hour is read raw), ingest always needs the flushes, so the refresh
yields to them in two ways:

- **Behind.** While this process's flusher is behind (every batch full for a
  second: ingest at capacity), no refresh starts, and one running is
  cancelled and rolled back, its marks left for later. Rollups wait for the
  slack, and reads of the hours still marked stay raw (exact, slower) — but
  not for ever: once the oldest settled mark has waited
  ``rollup_max_defer_seconds``, the refresh runs anyway, behind or not.
- **Locks.** A refresh holds the marks of the hours it recomputes until it
  commits, and a flush of late events into one of those hours waits for that
  commit (``storage.rollups`` says why): up to a minute for a refresh of
  ``rollup_max_buckets`` hours of a busy product. So once a flush (any
  backend) waits on one of its locks, the refresh is cancelled likewise.

Both are checked every ``GIVE_WAY_CHECK_SECONDS`` while a refresh runs. A
refresh that gave way is work rolled back, so after one the next try waits
twice as long as the last (``next_wait``: up to ``MAX_BACKOFF_FACTOR``
intervals), until a refresh completes: under sustained load near capacity,
the work thrown away stays bounded however long the load lasts. A failure is
logged and tried again next interval: it never stops the flushing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Literal

import asyncpg

from labs_analytics.flusher.backoff import sleep_unless_stopped
from labs_analytics.logs import get_logger
from labs_analytics.settings import Settings
from labs_analytics.storage.database import create_background_pool
from labs_analytics.storage.rollups import refresh_rollups

log = get_logger(__name__)

GIVE_WAY_CHECK_SECONDS = 0.5
# After refreshes that gave way, the wait before the next try doubles, up to
# this many intervals (5 s → 320 s by default; marks overdue still win then).
MAX_BACKOFF_FACTOR = 64


# What a try came to: marks rolled up (or none settled), none started as the
# flusher was behind, one cancelled to give way, or an error.
Outcome = Literal["refreshed", "deferred", "gave way", "failed"]


def next_wait(last_wait: float, interval: float, outcome: Outcome) -> float:
    """The wait before the next try: doubled after a refresh that gave way (work
    rolled back), kept while deferring (nothing was spent), else the interval."""
    if outcome == "gave way":
        return min(last_wait * 2, interval * MAX_BACKOFF_FACTOR)
    if outcome == "deferred":
        return last_wait
    return interval


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


# Marks are settled from marked_at; one that has waited the longest defer is overdue.
_OVERDUE_SQL = """
SELECT EXISTS (
    SELECT 1 FROM rollup_dirty WHERE marked_at <= now() - make_interval(secs => $1)
)
"""


class RollupRefresher:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        consumer: str,
        is_behind: Callable[[], bool] = lambda: False,
    ) -> None:
        """``pool``: the flusher's, for watching the refresh (never for running it);
        ``is_behind``: whether the flusher is behind (``Flusher.is_behind``)."""
        self.settings = settings
        self._watch_pool = pool
        self._is_behind = is_behind
        self.application_name = f"labs-analytics rollups {consumer}"[:63]

    async def run(self, stop: asyncio.Event) -> None:
        pool = await create_background_pool(
            self.settings.database_url, application_name=self.application_name
        )
        interval = self.settings.rollup_interval_seconds
        wait = interval
        try:
            while not await sleep_unless_stopped(stop, wait):
                wait = next_wait(wait, interval, await self._refresh_marked(pool, stop))
        finally:
            await pool.close()

    async def _refresh_marked(self, pool: asyncpg.Pool, stop: asyncio.Event) -> Outcome:
        """Refreshes until no settled mark is left, one transaction each."""
        max_buckets = self.settings.rollup_max_buckets
        started = time.monotonic()
        buckets = 0
        try:
            while not stop.is_set():
                yields = self._is_behind() and not await self._overdue()
                if yields:
                    log.info("rollups.deferred", reason="flushers behind", buckets_before=buckets)
                    return "deferred"
                done, gave_way_to = await self._refresh_giving_way(
                    pool, max_buckets, yield_to_behind=self.settings.rollup_max_defer_seconds > 0
                )
                if gave_way_to is not None:
                    log.info("rollups.gave_way", reason=gave_way_to, buckets_before=buckets)
                    return "gave way"
                buckets += done
                if done < max_buckets:
                    break
        except Exception as exc:  # PostgreSQL away, a missing migration: next time
            log.error("rollups.failed", error=f"{type(exc).__name__}: {exc}")
            return "failed"
        if buckets:
            log.info(
                "rollups.refreshed", buckets=buckets, ms=round((time.monotonic() - started) * 1000)
            )
        return "refreshed"

    async def _refresh_giving_way(
        self, pool: asyncpg.Pool, max_buckets: int, *, yield_to_behind: bool
    ) -> tuple[int, str | None]:
        """One refresh: the hours it rolled up, and why it was cancelled (None: it
        was not). ``yield_to_behind``: cancelled when the flusher falls behind,
        unless the marks are overdue."""
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
                    return refresh.result(), None
                if yield_to_behind and self._is_behind() and not await self._overdue():
                    reason = "flushers behind"
                elif await self._blocks_another():
                    reason = "a flush waits on it"
                else:
                    continue
                refresh.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresh
                return 0, reason
        finally:
            if not refresh.done():  # this task cancelled (stop): the refresh with it
                refresh.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresh

    async def _overdue(self) -> bool:
        """Whether the oldest settled mark has waited ``rollup_max_defer_seconds``."""
        defer = self.settings.rollup_max_defer_seconds
        if defer <= 0:
            return True
        async with self._watch_pool.acquire() as conn:
            return bool(await conn.fetchval(_OVERDUE_SQL, defer))

    async def _blocks_another(self) -> bool:
        async with self._watch_pool.acquire() as conn:
            return bool(await conn.fetchval(_BLOCKS_ANOTHER_SQL, self.application_name))
