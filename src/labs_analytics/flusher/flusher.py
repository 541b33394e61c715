"""The flusher: a consumer-group member that writes stream entries to PostgreSQL.

Semantics, in order of importance:

- **Ack after commit.** Entries are acknowledged (XACK) and deleted (XDEL)
  only after the transaction holding their rows committed. A crash anywhere
  before that leaves them pending, to be redelivered.
- **Exactly-once rows.** Delivery is at-least-once; the insert is
  ``ON CONFLICT DO NOTHING`` on the event's identity (timestamp, product,
  event_id), so a redelivered batch adds nothing, and the transaction log
  records how many were duplicates.
- **Failure keeps the batch.** When the write fails (PostgreSQL down, a
  restart mid-transaction), the flusher keeps the same entries, logs the
  failed attempt, and retries with capped exponential backoff, refreshing its
  claim so that other flushers do not take a batch it is still working on.
- **Orphans are reclaimed.** Entries that another consumer has held longer
  than ``reclaim_idle_ms`` (it died) are claimed with XAUTOCLAIM and written.
- **Rollups beside.** Every ``rollup_interval_seconds`` the process rolls up
  the hours flushed into since (``rollup_loop``: giving way to any flush that
  waits on it); a failure there is logged and never stops the flushing.
- **Stop is prompt.** When ``stop`` is set the loop returns after the current
  step; a batch not yet committed stays pending in Redis, nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from labs_analytics import metrics
from labs_analytics.events import EventRecord
from labs_analytics.flusher.backoff import backoff_seconds, sleep_unless_stopped
from labs_analytics.flusher.batch import Batch, fields_as_json
from labs_analytics.flusher.rollup_loop import RollupRefresher
from labs_analytics.logs import get_logger
from labs_analytics.queue.backlog import BacklogCounter
from labs_analytics.queue.consumer import PoisonEntry, StreamConsumer, StreamEntry
from labs_analytics.queue.entries import encode_entry
from labs_analytics.settings import Settings
from labs_analytics.storage.bulk_writer import BatchOutcome, BulkWriter, DeadLetter, is_data_error
from labs_analytics.storage.copy_text import CopyText
from labs_analytics.storage.event_ids import forget_old_event_ids
from labs_analytics.storage.partitions import ensure_partitions
from labs_analytics.storage.retention import RetentionBusy, run_retention

log = get_logger(__name__)

PARTITION_CHECK_SECONDS = 3600.0
RETENTION_FIRST_RUN_SECONDS = 60.0  # after start; then every retention_interval_seconds
DEAD_LETTER_DRAIN_COUNT = 100
LOGGED_STREAM_IDS = 100  # a log line names at most this many entries (and counts all)
# Redis answers one command at a time: a 1,000-entry XREADGROUP held every
# ingest append for up to 6 ms; 250 keeps each read near a millisecond.
MAX_ENTRIES_PER_READ = 250
# XREADGROUP returns as soon as one entry is there, so under a steady stream
# of small requests a flusher read again and again, a few entries each time
# (about 10 per read at 15,000 single-event requests/s): a round trip, a
# reply to parse and a loop turn per handful of events, paid in CPU taken
# from the API on the same cores. After a short read the stream is drained
# for now, so the flusher pauses (never past the batch's deadline) and the
# next read takes a full slice: ~190 entries per read, flusher CPU -40%,
# single-event ingest +20% (BENCHMARKS.md, "What moved").
PAUSE_AFTER_SHORT_READ_SECONDS = 0.05


# How often a standby flusher looks at the backlog (one GET) while it stands by.
STANDBY_CHECK_SECONDS = 0.25
# An entry waiting this long calls the standbys in, whatever the backlog: the
# first flusher is stuck (frozen, or slower than its batches show). A standby
# then flushes what arrives, and claims what the stuck one holds once
# RECLAIM_IDLE_MS has passed, as any flusher would.
STANDBY_JOIN_AFTER_SECONDS = 5.0

# A batch filled before its deadline now and then is a burst; full batches
# for this long are a flusher at capacity (the rollup refresh then waits).
BEHIND_AFTER_SECONDS = 1.0


class _ReadExactly(Exception):
    """PostgreSQL refused a batch's COPY text as data (the error, as logged):
    read it the exact way."""


def default_consumer_name() -> str:
    # Unique per process: a restarted flusher must not inherit (and silently
    # skip) the pending list of its previous life; XAUTOCLAIM hands it over.
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Flusher:
    def __init__(
        self,
        *,
        redis: Redis,
        pool: asyncpg.Pool,
        settings: Settings,
        consumer_name: str | None = None,
        standby: bool = False,
    ) -> None:
        """``standby``: flush only while the stream holds at least
        ``standby_flusher_backlog_events`` events (``serve`` starts every flusher
        but its first so). The first keeps up with any lesser load alone, and a
        second one flushing beside it, on the same cores as the API, costs
        ingest p99 (BENCHMARKS.md); a backlog that grows calls the others in."""
        self.settings = settings
        self.consumer = StreamConsumer(
            redis,
            stream_key=settings.stream_key,
            group=settings.consumer_group,
            consumer=consumer_name or default_consumer_name(),
            backlog_key=settings.backlog_key,
            dead_letter_key=settings.dead_letter_stream_key,
        )
        self.standby = standby and settings.standby_flusher_backlog_events > 0
        self._standing_by = self.standby  # until the stream holds a backlog
        self._last_backlog: int | None = 0  # as a standby last read it (None: unreadable)
        self.standby_join_after_seconds = STANDBY_JOIN_AFTER_SECONDS
        self._backlog = BacklogCounter(
            redis, stream_key=settings.stream_key, backlog_key=settings.backlog_key
        )
        self.writer = BulkWriter(pool)
        self._pool = pool
        self._group_ready = False
        self._last_reclaim = 0.0
        self._partitions_checked: tuple[date, float] | None = None
        # Events per entry, as last seen; sizes XREADGROUP's COUNT so a batch
        # does not overshoot its limit. Starts pessimistic (the largest
        # request) so the first read of a backlog of big entries stays small.
        self._events_per_entry = float(settings.max_events_per_request)
        # Since when every batch collected was full: the flushers are behind.
        self._full_since: float | None = None

    @property
    def name(self) -> str:
        return self.consumer.consumer

    async def run(self, stop: asyncio.Event) -> None:
        log.info(
            "flusher.started",
            consumer=self.name,
            stream=self.settings.stream_key,
            standby=self.standby,
        )
        background: list[asyncio.Task[None]] = []
        if self.settings.retention_interval_seconds > 0:
            background.append(asyncio.create_task(self._retention_loop(stop)))
        if self.settings.rollup_interval_seconds > 0:
            refresher = RollupRefresher(self.settings, self._pool, self.name, self.is_behind)
            background.append(asyncio.create_task(refresher.run(stop)))
        failures = 0
        try:
            while not stop.is_set():
                try:
                    if self.standby and not await self._needed():
                        await sleep_unless_stopped(stop, STANDBY_CHECK_SECONDS)
                        continue
                    await self.run_once(stop)
                    failures = 0
                except (RedisError, OSError) as exc:
                    # Redis unreachable: nothing to read, nothing lost; wait and retry.
                    failures += 1
                    delay = self._backoff(failures)
                    log.error(
                        "flusher.redis_unavailable",
                        error=repr(exc),
                        retry_in_ms=round(delay * 1000),
                    )
                    await sleep_unless_stopped(stop, delay)
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        log.info("flusher.stopped", consumer=self.name)

    async def _needed(self) -> bool:
        """Whether a standby flusher should flush now: the stream holds at least
        ``standby_flusher_backlog_events`` events (or a counter it cannot read),
        once flushing until it holds less than half that (no flapping at the
        edge); or its oldest entry has waited ``standby_join_after_seconds``."""
        backlog = self._last_backlog = await self._backlog.read()
        threshold = self.settings.standby_flusher_backlog_events
        if not self._standing_by:
            threshold //= 2
        needed = backlog is None or backlog >= threshold or (backlog > 0 and await self._stale())
        if needed == self._standing_by:
            self._standing_by = not needed
            log.info("flusher.joined" if needed else "flusher.standing_by", backlog=backlog)
        if not needed:
            self._full_since = None  # its own batches: none while it stands by
        return needed

    async def _stale(self) -> bool:
        """Whether the stream's oldest entry has waited ``standby_join_after_seconds``
        (by this host's clock against Redis's: the same on one machine, and a
        skew of seconds only moves when a standby joins)."""
        oldest_ms = await self.consumer.oldest_entry_ms()
        if oldest_ms is None:
            return False
        return time.time() - oldest_ms / 1000 >= self.standby_join_after_seconds

    async def _retention_loop(self, stop: asyncio.Event) -> None:
        """Raw-data retention, beside the flushing: every flusher process tries
        it; the advisory lock lets one run at a time. A failure is logged and
        tried again next time: it never stops the flushing."""
        interval = self.settings.retention_interval_seconds
        delay = min(RETENTION_FIRST_RUN_SECONDS, interval)
        while not await sleep_unless_stopped(stop, delay):
            delay = interval
            started = time.monotonic()
            await self._forget_old_event_ids()
            try:
                async with self._pool.acquire() as conn:
                    report = await run_retention(
                        conn,
                        dry_run=False,
                        batch_rows=self.settings.retention_delete_batch_rows,
                    )
            except RetentionBusy:
                log.info("retention.skipped", reason="another runner holds the lock")
                continue
            except Exception as exc:  # PostgreSQL away, a lock timeout: next time
                log.error("retention.failed", error=f"{type(exc).__name__}: {exc}")
                continue
            log.info(
                "retention.finished",
                products=len(report.policies),
                partitions_dropped=len(report.dropped_partitions),
                rows=report.rows_by_product,
                ms=round((time.monotonic() - started) * 1000),
            )

    async def _forget_old_event_ids(self) -> None:
        """The ids past IDENTITY_WINDOW_DAYS (storage.event_ids); on failure, next time."""
        started = time.monotonic()
        try:
            async with self._pool.acquire() as conn:
                forgotten = await forget_old_event_ids(
                    conn,
                    window_days=self.settings.identity_window_days,
                    now=datetime.now(UTC),
                    batch_rows=self.settings.retention_delete_batch_rows,
                )
        except Exception as exc:  # PostgreSQL away, a missing migration: next time
            log.error("event_ids.forget_failed", error=f"{type(exc).__name__}: {exc}")
            return
        log.info(
            "event_ids.forgotten",
            ids=forgotten,
            window_days=self.settings.identity_window_days,
            ms=round((time.monotonic() - started) * 1000),
        )

    async def run_once(self, stop: asyncio.Event | None = None) -> BatchOutcome | None:
        """Collect one batch, set poison aside, write the rest (retrying until
        committed or stopped), ack it. None when there was nothing to write."""
        stop = stop or asyncio.Event()
        if not self._group_ready:
            await self.consumer.ensure_group()
            self._group_ready = True
        batch = await self.collect_batch(stop)
        if batch is None:
            await self._drain_dead_letter_stream()
            return None
        if batch.poison:
            await self._set_aside(batch.poison)
        if not batch.entries:
            return None
        outcome = await self.write(batch, stop)
        if outcome is not None:
            await self.ack(batch)
        return outcome

    async def collect_batch(self, stop: asyncio.Event) -> Batch | None:
        """Read until the batch holds ``flush_batch_events`` events or
        ``flush_interval_ms`` passed since its first entry arrived."""
        limit = self.settings.flush_batch_events
        interval_ms = self.settings.flush_interval_ms
        entries = await self._reclaim_orphans()
        events = sum(entry.event_count for entry in entries)
        if entries:
            # Learn entry sizes from claims too: after a crash in a quiet
            # period they are all there is, and a stale guess claims too few.
            self._events_per_entry = max(1.0, events / len(entries))
        deadline = time.monotonic() + interval_ms / 1000 if entries else None

        while events < limit and not stop.is_set():
            if deadline is None:
                block_ms = interval_ms
            else:
                block_ms = round((deadline - time.monotonic()) * 1000)
                if block_ms <= 0:
                    break
            # BLOCK 0 means "forever" to Redis: never send it.
            count = self._read_count(limit - events)
            new = await self.consumer.read_new(count=count, block_ms=max(1, block_ms))
            if not new:
                if deadline is None:
                    break  # idle for a whole interval
                continue
            if deadline is None:
                deadline = time.monotonic() + interval_ms / 1000
            entries.extend(new)
            new_events = sum(entry.event_count for entry in new)
            events += new_events
            self._events_per_entry = max(1.0, new_events / len(new))
            if len(new) < count and events < limit:
                pause = min(PAUSE_AFTER_SHORT_READ_SECONDS, deadline - time.monotonic())
                if pause > 0:
                    await sleep_unless_stopped(stop, pause)

        if not entries:
            self._full_since = None
            return None
        if events < limit:
            self._full_since = None
        elif self._full_since is None:
            self._full_since = time.monotonic()
        return Batch.from_entries(entries, max_deliveries=self.settings.max_deliveries)

    def is_behind(self) -> bool:
        """Whether every batch this flusher collected for ``BEHIND_AFTER_SECONDS``
        was full: the stream holds more than it lands, ingest is at capacity.

        A standby flusher standing by collects nothing; it is behind while the
        backlog it last saw holds a full batch or more (the first flusher is
        not keeping up), so the rollup refresh in its process yields as well.
        """
        if self._standing_by:
            backlog = self._last_backlog
            return backlog is None or backlog >= self.settings.flush_batch_events
        since = self._full_since
        return since is not None and time.monotonic() - since >= BEHIND_AFTER_SECONDS

    async def write(self, batch: Batch, stop: asyncio.Event) -> BatchOutcome | None:
        """Write the batch's events; None if stopped before everything committed.

        A passing failure (PostgreSQL down, restarted, connection lost) retries
        the same rows with backoff. A data error (rows PostgreSQL will never
        take) has a batch sent as COPY text read again the exact way; read
        so, its rows are split in halves until the event at fault is alone,
        which becomes a dead letter while the good events around it land.
        """
        if batch.text is not None:
            try:
                return await self._write_part(batch, batch.text, [], stop)
            except _ReadExactly as refused:
                log.warning(
                    "flush.reading_exactly",
                    error=str(refused),
                    entries=len(batch.entries),
                    note="PostgreSQL refused the batch as COPY text; each event is read again",
                )
            poison = batch.read_exactly()
            if poison:
                await self._set_aside(poison)
            if not batch.entries:
                return None
        return await self._write_part(batch, batch.records, [], stop)

    async def _write_part(
        self,
        batch: Batch,
        rows: list[EventRecord] | CopyText,
        dead_letters: list[DeadLetter],
        stop: asyncio.Event,
    ) -> BatchOutcome | None:
        attempt = 0
        stream_ids = batch.stream_ids
        events = len(rows)
        while True:
            attempt += 1
            batch_id = uuid.uuid4()
            started_at = datetime.now(UTC)
            fields = self._log_fields(batch, batch_id, attempt, events)
            log.info("flush.started", status="started", **fields)
            try:
                # Before every attempt, and as part of it: rows written before
                # their day's partition exists would stay in the default one.
                await self._maybe_ensure_partitions()
                outcome = await self.writer.write_batch(
                    batch_id=batch_id,
                    consumer=self.name,
                    stream_ids=stream_ids,
                    attempt=attempt,
                    rows=rows,
                    dead_letters=dead_letters,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # classified below: split, or retry
                error = f"{type(exc).__name__}: {exc}"
                ms = _ms_since(started_at)
                log.error("flush.failed", status="failed", error=error, ms=ms, **fields)
                metrics.FLUSH_BATCHES.labels("failed").inc()
                await self._record_failure(batch, batch_id, attempt, events, error, started_at)
                if is_data_error(exc):
                    if isinstance(rows, CopyText):
                        raise _ReadExactly(error) from exc
                    return await self._split(batch, rows, dead_letters, error, stop)
                delay = self._backoff(attempt)
                log.warning(
                    "flush.retrying",
                    status="retrying",
                    retry_in_ms=round(delay * 1000),
                    **{**fields, "attempt": attempt + 1},
                )
                if await sleep_unless_stopped(stop, delay):
                    log.warning(
                        "flush.abandoned_on_stop",
                        batch_id=str(batch_id),
                        entries=len(stream_ids),
                        note="entries stay pending and will be reclaimed",
                    )
                    return None
                with contextlib.suppress(RedisError):
                    # If Redis is away too, the ack fails later and the entries return.
                    await self.consumer.keep_claimed(stream_ids)
                continue
            metrics.FLUSH_BATCHES.labels("committed").inc()
            metrics.FLUSH_SECONDS.observe(outcome.total_ms / 1000)
            metrics.EVENTS_FLUSHED.inc(outcome.inserted)
            metrics.EVENTS_DUPLICATE.inc(outcome.duplicates)
            metrics.EVENTS_DEAD_LETTERED.inc(outcome.dead_lettered)
            log.info(
                "flush.committed",
                status="committed",
                inserted=outcome.inserted,
                duplicates=outcome.duplicates,
                dead_lettered=outcome.dead_lettered,
                copy_ms=outcome.copy_ms,
                insert_ms=outcome.insert_ms,
                ms=outcome.total_ms,
                **fields,
            )
            return outcome

    async def _split(
        self,
        batch: Batch,
        records: list[EventRecord],
        dead_letters: list[DeadLetter],
        error: str,
        stop: asyncio.Event,
    ) -> BatchOutcome | None:
        if len(records) <= 1:
            poisoned = [
                DeadLetter(
                    stream_id=batch.entry_of.get(id(record), "?"),
                    product=record.product,
                    error=error,
                    payload=fields_as_json(encode_entry([record])),
                    kind="event",
                    event_id=record.event_id,
                )
                for record in records
            ]
            for letter in poisoned:
                log.error(
                    "flush.dead_lettered",
                    status="dead-lettered",
                    error=error,
                    stream_id=letter.stream_id,
                    event_id=str(letter.event_id),
                    product=letter.product,
                )
            return await self._write_part(batch, [], dead_letters + poisoned, stop)
        middle = len(records) // 2
        first = await self._write_part(batch, records[:middle], dead_letters, stop)
        if first is None:
            return None
        second = await self._write_part(batch, records[middle:], [], stop)
        if second is None:
            return None
        return first.merge(second)

    async def ack(self, batch: Batch) -> None:
        try:
            await self.consumer.ack_and_delete(batch.entries)
        except RedisError as exc:
            # The rows are committed; the entries stay pending, come back, and
            # are deduplicated. Nothing is lost or doubled.
            log.error("flush.ack_failed", error=repr(exc), entries=len(batch.entries))

    async def _set_aside(self, poison: list[PoisonEntry]) -> None:
        """Poison entries go to the dead-letter stream at once, PostgreSQL or not."""
        await self.consumer.move_to_dead_letters(poison)
        for item in poison:
            log.error(
                "flush.dead_lettered",
                status="dead-lettered",
                error=item.error,
                stream_id=item.entry.entry_id,
                deliveries=item.entry.deliveries,
                events=item.entry.event_count,
            )
        metrics.EVENTS_DEAD_LETTERED.inc(len(poison))

    async def _drain_dead_letter_stream(self) -> None:
        """Copy dead letters waiting in Redis into the `dead_letters` table, when
        PostgreSQL answers; delete them from Redis only after the commit."""
        try:
            waiting = await self.consumer.read_dead_letters(DEAD_LETTER_DRAIN_COUNT)
            if not waiting:
                return
            letters = [
                DeadLetter(
                    stream_id=fields.get(b"stream_id", b"?").decode(errors="replace"),
                    product=None,
                    error=fields.get(b"error", b"").decode(errors="replace"),
                    payload=fields.get(b"payload", b"{}").decode(errors="replace"),
                    kind="entry",
                    deliveries=int(fields.get(b"deliveries", b"0") or 0),
                )
                for _id, fields in waiting
            ]
            await self.writer.write_dead_letters(letters)
            await self.consumer.delete_dead_letters([entry_id for entry_id, _ in waiting])
        except (
            RedisError,
            OSError,
            TimeoutError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        ) as exc:
            log.debug("dead_letters.drain_postponed", error=repr(exc))

    async def _reclaim_orphans(self) -> list[StreamEntry]:
        now = time.monotonic()
        if now - self._last_reclaim < min(1.0, self.settings.reclaim_idle_ms / 2000):
            return []
        self._last_reclaim = now
        return await self.consumer.claim_idle(
            min_idle_ms=self.settings.reclaim_idle_ms,
            count=self._read_count(self.settings.flush_batch_events),
        )

    async def _maybe_ensure_partitions(self) -> None:
        today = datetime.now(UTC).date()
        checked = self._partitions_checked
        if (
            checked
            and checked[0] == today
            and time.monotonic() - checked[1] < PARTITION_CHECK_SECONDS
        ):
            return
        async with self._pool.acquire() as conn:
            await ensure_partitions(
                conn, today=today, days_ahead=self.settings.partition_days_ahead
            )
        self._partitions_checked = (today, time.monotonic())

    async def _record_failure(
        self,
        batch: Batch,
        batch_id: uuid.UUID,
        attempt: int,
        events: int,
        error: str,
        started_at: datetime,
    ) -> None:
        try:
            await self.writer.record_failure(
                batch_id=batch_id,
                consumer=self.name,
                stream_ids=batch.stream_ids,
                attempt=attempt,
                events=events,
                error=error,
                started_at=started_at,
            )
        except Exception as exc:  # PostgreSQL down: the log line above is the record
            log.debug("flush.failure_not_recorded", error=repr(exc))

    def _read_count(self, events_wanted: int) -> int:
        return max(1, min(MAX_ENTRIES_PER_READ, round(events_wanted / self._events_per_entry)))

    def _backoff(self, attempt: int) -> float:
        return backoff_seconds(
            attempt,
            initial_ms=self.settings.retry_backoff_initial_ms,
            max_ms=self.settings.retry_backoff_max_ms,
        )

    def _log_fields(
        self, batch: Batch, batch_id: uuid.UUID, attempt: int, events: int
    ) -> dict[str, Any]:
        ids = batch.stream_ids
        return {
            "batch_id": str(batch_id),
            "consumer": self.name,
            "attempt": attempt,
            "events": events,
            "entries": len(ids),
            "stream_ids": ids[:LOGGED_STREAM_IDS],
        }


def _ms_since(started_at: datetime) -> int:
    return round((datetime.now(UTC) - started_at).total_seconds() * 1000)
