"""Consumer-group operations on the stream, as the flusher needs them.

Pitfalls this module guards against:
- XDEL does not clear the pending list, so ``ack_and_delete`` acks first.
- XAUTOCLAIM may report entries that vanished (deleted while pending):
  they are logged loudly and acknowledged, since there is nothing to write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from labs_analytics.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class StreamEntry:
    entry_id: str
    fields: dict[bytes, bytes]

    @property
    def event_count(self) -> int:
        try:
            return int(self.fields.get(b"n", b"1"))
        except ValueError:
            return 1


def _as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StreamConsumer:
    def __init__(self, redis: Redis, *, stream_key: str, group: str, consumer: str) -> None:
        self._redis = redis
        self.stream_key = stream_key
        self.group = group
        self.consumer = consumer
        self._claim_cursor = "0-0"

    async def ensure_group(self) -> None:
        """Create the group (and the stream) if missing; reading starts at the beginning
        so entries appended before any flusher existed are not skipped."""
        try:
            await self._redis.xgroup_create(self.stream_key, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

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
        (it probably died between read and ack)."""
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
        entries: list[StreamEntry] = []
        for entry_id, fields in reply[1]:
            if fields is None:  # Redis 6.2 reports a deleted entry this way
                vanished.append(_as_str(entry_id))
            else:
                entries.append(StreamEntry(_as_str(entry_id), fields))
        if vanished:
            log.error(
                "stream.entries_vanished",
                stream=self.stream_key,
                entry_ids=vanished,
                hint="pending entries were deleted before being acknowledged",
            )
            await self._redis.xack(self.stream_key, self.group, *vanished)
        return entries

    async def keep_claimed(self, entry_ids: Sequence[str]) -> None:
        """Reset the idle time of entries we still hold (while retrying a write),
        so other flushers do not claim a batch we are actively working on."""
        if entry_ids:
            await self._redis.xclaim(
                self.stream_key, self.group, self.consumer, 0, list(entry_ids), justid=True
            )

    async def ack_and_delete(self, entry_ids: Sequence[str]) -> None:
        if not entry_ids:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream_key, self.group, *entry_ids)
            pipe.xdel(self.stream_key, *entry_ids)
            await pipe.execute()

    async def pending_count(self) -> int:
        summary: Any = await self._redis.xpending(self.stream_key, self.group)
        return int(summary["pending"])
