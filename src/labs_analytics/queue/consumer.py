"""Consumer-group operations on the stream, as the flusher needs them.

Pitfalls this module guards against:
- XDEL does not clear the pending list, so entries are acknowledged first.
- The backlog counter drops only by entries this call really deleted: a late
  ack from a flusher that was frozen while another took over its batch must
  not count the same events twice. It never drops below zero (the scripts,
  in ``labs_analytics.queue.lua``, and ``labs_analytics.queue.backlog``).
- Redis runs nothing else while a script runs, so a batch is acknowledged in
  slices (``ENTRIES_PER_SCRIPT_CALL``): one call for a 5,000-entry batch
  showed in the slowlog at up to 30 ms, every ingest append waiting behind
  it. A crash between slices leaves the rest pending, to be reclaimed and
  written again, idempotently, like a crash before the ack.
- XAUTOCLAIM may report entries that vanished (deleted while pending): they
  are logged loudly and acknowledged, since there is nothing to write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from labs_analytics.logs import get_logger
from labs_analytics.queue.backlog import recount_key
from labs_analytics.queue.entries import entry_events
from labs_analytics.queue.lua import ACK_SCRIPT, DEAD_LETTER_SCRIPT

log = get_logger(__name__)

# Entries per ack script call (see the module's docstring).
ENTRIES_PER_SCRIPT_CALL = 250


@dataclass(frozen=True, slots=True)
class StreamEntry:
    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int = 1

    @property
    def event_count(self) -> int:
        return entry_events(self.fields)


@dataclass(frozen=True, slots=True)
class PoisonEntry:
    entry: StreamEntry
    error: str
    payload: str


def _as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StreamConsumer:
    def __init__(
        self,
        redis: Redis,
        *,
        stream_key: str,
        group: str,
        consumer: str,
        backlog_key: str,
        dead_letter_key: str,
    ) -> None:
        self._redis = redis
        self.stream_key = stream_key
        self.group = group
        self.consumer = consumer
        self.backlog_key = backlog_key
        self.dead_letter_key = dead_letter_key
        self._recount_key = recount_key(backlog_key)
        self._claim_cursor = "0-0"
        self._ack = redis.register_script(ACK_SCRIPT)
        self._dead_letter = redis.register_script(DEAD_LETTER_SCRIPT)

    async def ensure_group(self) -> None:
        """Create the group (and the stream) if missing; reading starts at the beginning
        so entries appended before any flusher existed are not skipped."""
        try:
            await self._redis.xgroup_create(self.stream_key, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def oldest_entry_ms(self) -> int | None:
        """When the oldest entry still in the stream was added (its id's
        milliseconds, Redis's clock); None for an empty stream. Entries leave
        the stream once flushed, so this is the oldest event not yet landed."""
        reply: Any = await self._redis.xrange(self.stream_key, count=1)
        if not reply:
            return None
        return int(_as_str(reply[0][0]).split("-", 1)[0])

    async def read_new(self, *, count: int, block_ms: int) -> list[StreamEntry]:
        reply: Any = await self._redis.xreadgroup(
            self.group, self.consumer, {self.stream_key: ">"}, count=count, block=block_ms
        )
        entries: list[StreamEntry] = []
        for _stream, items in reply or []:
            for entry_id, fields in items:
                entries.append(StreamEntry(_as_str(entry_id), fields or {}))
        return entries

    async def claim_idle(self, *, min_idle_ms: int, count: int) -> list[StreamEntry]:
        """Take over entries another consumer has held longer than ``min_idle_ms``
        (it probably died between read and ack), with their delivery counts."""
        reply: Any = await self._redis.xautoclaim(
            self.stream_key,
            self.group,
            self.consumer,
            min_idle_time=min_idle_ms,
            start_id=self._claim_cursor,
            count=count,
        )
        self._claim_cursor = _as_str(reply[0])
        vanished = [_as_str(entry_id) for entry_id in reply[2]] if len(reply) > 2 else []
        claimed: list[tuple[str, dict[bytes, bytes]]] = []
        for entry_id, fields in reply[1]:
            if fields is None:  # Redis 6.2 reports a deleted entry this way
                vanished.append(_as_str(entry_id))
            else:
                claimed.append((_as_str(entry_id), fields))
        if vanished:
            log.error(
                "stream.entries_vanished",
                stream=self.stream_key,
                entry_ids=vanished,
                hint="pending entries were deleted before being acknowledged",
            )
            await self._redis.xack(self.stream_key, self.group, *vanished)
        if not claimed:
            return []
        deliveries = await self._delivery_counts(claimed[0][0], claimed[-1][0], len(claimed))
        return [StreamEntry(i, f, deliveries.get(i, 1)) for i, f in claimed]

    async def _delivery_counts(self, first: str, last: str, count: int) -> dict[str, int]:
        rows: Any = await self._redis.xpending_range(
            self.stream_key,
            self.group,
            min=first,
            max=last,
            count=count,
            consumername=self.consumer,
        )
        return {_as_str(row["message_id"]): int(row["times_delivered"]) for row in rows}

    async def keep_claimed(self, entry_ids: Sequence[str]) -> None:
        """Reset the idle time of entries we still hold (while retrying a write),
        so other flushers do not claim a batch we are actively working on."""
        if entry_ids:
            await self._redis.xclaim(
                self.stream_key, self.group, self.consumer, 0, list(entry_ids), justid=True
            )

    async def ack_and_delete(self, entries: Sequence[StreamEntry]) -> int:
        """Acknowledge and delete; return the events this call removed from the backlog."""
        removed = 0
        for start in range(0, len(entries), ENTRIES_PER_SCRIPT_CALL):
            args: list[str | int] = [self.group]
            for entry in entries[start : start + ENTRIES_PER_SCRIPT_CALL]:
                args += [entry.entry_id, entry.event_count]
            keys = [self.stream_key, self.backlog_key, self._recount_key]
            removed += int(await self._ack(keys=keys, args=args))
        return removed

    async def move_to_dead_letters(self, poison: Sequence[PoisonEntry]) -> None:
        """Out of the stream and into the dead-letter stream, atomically, without
        waiting for PostgreSQL; the flusher copies them to the table later."""
        if not poison:
            return
        args: list[str | int] = [self.group]
        for item in poison:
            args += [
                item.entry.entry_id,
                item.entry.event_count,
                item.error,
                item.entry.deliveries,
                item.payload,
            ]
        await self._dead_letter(
            keys=[self.stream_key, self.backlog_key, self.dead_letter_key, self._recount_key],
            args=args,
        )

    async def read_dead_letters(self, count: int) -> list[tuple[str, dict[bytes, bytes]]]:
        reply: Any = await self._redis.xrange(self.dead_letter_key, count=count)
        return [(_as_str(entry_id), fields) for entry_id, fields in reply]

    async def delete_dead_letters(self, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            await self._redis.xdel(self.dead_letter_key, *entry_ids)
