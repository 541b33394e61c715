"""Where ingest puts accepted events: the Redis stream, or the spool while Redis is away.

- **Redis first.** When an append fails (refused, timed out), the entry is
  written to the spool and fsync'd instead, and Redis counts as down for a
  moment, so the following requests go straight to the spool rather than
  each waiting out a timeout.
- **Overload is not an outage.** A full backlog, Redis near its maxmemory, or
  a key over its rate are refused (503, 429) and not spooled: the spool is for
  keeping promises through failures, not for absorbing more than we can flush.
- **A request's own error is not an outage either.** An error reply that is
  not outage-like (a script error, ``WRONGTYPE``) fails that request
  (``AppendRefused``); Redis is not marked down and nothing is spooled, so one
  broken key or entry cannot send everyone's traffic around the limits.
- **The spool keeps the limits.** While Redis is away, each key's rate is held
  by a token bucket in this process (``LocalBuckets``: same rate and burst),
  and the spool by its own size bound (``SPOOL_MAX_BYTES``, then 503).
- **Maintenance** (``run``): probe Redis while it is down, replay the spool
  once it answers, watch Redis memory, and take the next step of the backlog
  counter's recount (``labs_analytics.queue.backlog``), so the counter stays
  true whatever road entries took into the stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from labs_analytics import metrics
from labs_analytics.events import EventRecord
from labs_analytics.logs import get_logger
from labs_analytics.queue.backlog import BacklogCounter
from labs_analytics.queue.buckets import LocalBuckets
from labs_analytics.queue.entries import array_items, encode_events, entry_fields
from labs_analytics.queue.producer import (
    AppendRefused,
    BacklogFull,
    QueueWriteFailed,
    RateLimit,
    RateLimited,
    StreamProducer,
)
from labs_analytics.queue.spool import Spool, SpooledEntry, SpoolFull, SpoolWriteFailed

log = get_logger(__name__)

Destination = Literal["redis", "spool"]

DOWN_HOLD_SECONDS = 1.0
MAINTENANCE_INTERVAL_SECONDS = 0.5
MEMORY_CHECK_SECONDS = 1.0


class QueueDown(Exception):
    """Neither Redis nor the spool could make the events durable."""


class Overloaded(Exception):
    """Refused to protect Redis: backlog or memory over the limit."""


@dataclass
class QueueHealth:
    redis_up: bool = True
    memory_ratio: float | None = None
    backlog_events: int | None = None


class EventQueue:
    def __init__(
        self,
        *,
        producer: StreamProducer,
        redis: Redis,
        spool: Spool | None,
        memory_max_ratio: float,
        backlog: BacklogCounter | None = None,
    ) -> None:
        self._producer = producer
        self._redis = redis
        if backlog is None:
            backlog = BacklogCounter(
                redis, stream_key=producer.stream_key, backlog_key=producer.backlog_key
            )
        self.backlog = backlog
        self.spool = spool
        self._memory_max_ratio = memory_max_ratio
        self._down_until = 0.0
        self._local_buckets = LocalBuckets()
        self.health = QueueHealth()

    async def append(
        self, records: Sequence[EventRecord], *, rate_limit: RateLimit, rate_key: str
    ) -> Destination:
        """Make the events durable; raise RateLimited, Overloaded or QueueDown otherwise.

        Also ``AppendRefused`` (Redis refused this request with an error that is
        not an outage) and ``InvalidRateLimit``: this request fails, no other.
        """
        if self._memory_pressure():
            raise Overloaded(f"Redis memory is above {self._memory_max_ratio:.0%} of maxmemory")
        events = encode_events(records)
        if time.monotonic() >= self._down_until:
            try:
                appended = await self._producer.append_events(
                    array_items(events),
                    events=len(records),
                    rate_limit=rate_limit,
                    rate_key=rate_key,
                )
            except BacklogFull as exc:
                raise Overloaded(str(exc)) from exc
            except QueueWriteFailed as exc:
                self._mark_down(exc)
            else:
                self.health.backlog_events = appended.backlog
                metrics.ACCEPTED_INTO_REDIS.inc(len(records))
                return "redis"
        fields = entry_fields(events, len(records))
        return await self._append_to_spool(fields, len(records), rate_limit, rate_key)

    async def _append_to_spool(
        self, fields: dict[bytes, bytes], events: int, rate_limit: RateLimit, rate_key: str
    ) -> Destination:
        if self.spool is None:
            raise QueueDown("Redis is unreachable and no spool is configured")
        wait = self._local_buckets.take(rate_key, events, rate_limit)
        if wait is not None:
            raise RateLimited(wait)
        try:
            await self.spool.append(fields, events)
        except (SpoolFull, SpoolWriteFailed) as exc:
            self._local_buckets.give_back(rate_key, events, rate_limit)
            raise QueueDown(f"Redis is unreachable and the spool refused: {exc}") from exc
        metrics.EVENTS_SPOOLED.inc(events)
        metrics.ACCEPTED_INTO_SPOOL.inc(events)
        return "spool"

    async def debit(self, rate_key: str, cost: int, rate_limit: RateLimit) -> float | None:
        """Charge refused work to a key's bucket; the tokens left (None: unlimited key).

        The shared bucket in Redis while Redis answers, this process's own
        otherwise. Never raises for Redis trouble: the request is refused
        anyway, and an outage must not turn refusals into errors.
        """
        if time.monotonic() >= self._down_until:
            try:
                return await self._producer.debit(rate_key, cost, rate_limit)
            except QueueWriteFailed as exc:
                self._mark_down(exc)  # as an append would: the next ones do not wait
            except (BacklogFull, AppendRefused) as exc:
                log.warning("queue.debit_failed", error=str(exc))
        return self._local_buckets.debit(rate_key, cost, rate_limit)

    def _mark_down(self, exc: Exception) -> None:
        if self.health.redis_up:
            log.error(
                "queue.redis_down", error=str(exc), spool="on" if self.spool is not None else "off"
            )
        self.health.redis_up = False
        metrics.REDIS_UP.set(0)
        self._down_until = time.monotonic() + DOWN_HOLD_SECONDS

    def _memory_pressure(self) -> bool:
        ratio = self.health.memory_ratio
        return ratio is not None and ratio >= self._memory_max_ratio

    # --- maintenance -----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        last_memory_check = 0.0
        while not stop.is_set():
            if not self.health.redis_up or (self.spool is not None and self.spool.segments()):
                await self._probe_and_replay()
            if time.monotonic() - last_memory_check >= MEMORY_CHECK_SECONDS:
                last_memory_check = time.monotonic()
                await self._check_memory()
            if self.health.redis_up:
                await self._recount_backlog()
            if self.spool is not None:
                metrics.SPOOL_BYTES.set(self.spool.total_bytes())
            metrics.flush_batched()
            try:
                await asyncio.wait_for(stop.wait(), MAINTENANCE_INTERVAL_SECONDS)
            except TimeoutError:
                pass
        metrics.flush_batched()

    async def _probe_and_replay(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError, TimeoutError):
            self._down_until = time.monotonic() + DOWN_HOLD_SECONDS
            return
        if not self.health.redis_up:
            log.info("queue.redis_up")
        self.health.redis_up = True
        metrics.REDIS_UP.set(1)
        self._down_until = 0.0
        if self.spool is None:
            return
        try:
            replayed = await self.spool.replay(self._replay_entries)
        except (QueueWriteFailed, BacklogFull, AppendRefused) as exc:
            log.warning("spool.replay_paused", error=str(exc))
            return
        if replayed:
            metrics.EVENTS_REPLAYED.inc(replayed)
            log.info("spool.replayed", events=replayed)

    async def _replay_entries(self, entries: list[SpooledEntry]) -> None:
        for entry in entries:
            # Not rate limited (the events were accepted already), but the
            # backlog bound holds: replay waits rather than flood Redis.
            await self._producer.append_fields(
                entry.fields, events=entry.events, rate_limit=RateLimit.unlimited()
            )

    async def _recount_backlog(self) -> None:
        try:
            step = await self.backlog.recount_step()
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("backlog.recount_postponed", error=repr(exc))
            return
        if step.corrected:
            metrics.BACKLOG_CORRECTIONS.inc()
            log.warning("backlog.corrected", was=step.previous, events=step.events)
        elif step.status == "invalid":
            log.error(
                "backlog.counter_invalid",
                key=self.backlog.key,
                value=step.raw,
                events=step.events,
                hint="not an integer: appends are refused until it is deleted or set",
            )

    async def _check_memory(self) -> None:
        try:
            info = await self._redis.info("memory")
        except (RedisError, OSError, TimeoutError):
            return
        used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
        self.health.memory_ratio = used / limit if limit else None
