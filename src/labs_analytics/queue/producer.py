"""Appending accepted events to the stream."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from labs_analytics.events import EventRecord
from labs_analytics.queue.entries import encode_entry


class QueueWriteFailed(Exception):
    """Redis did not confirm the append: the events are not durable."""


class StreamProducer:
    def __init__(self, redis: Redis, stream_key: str) -> None:
        self._redis = redis
        self._stream_key = stream_key

    async def append(self, records: Sequence[EventRecord]) -> str:
        """Append one request's events as one entry; return the entry id.

        Raises ``QueueWriteFailed`` unless Redis confirmed the write. No MAXLEN:
        trimming could drop entries that no flusher has acknowledged yet.
        """
        try:
            entry_id = await self._redis.xadd(self._stream_key, encode_entry(records))  # type: ignore[arg-type]
        except (RedisError, OSError, TimeoutError) as exc:
            raise QueueWriteFailed(f"{type(exc).__name__}: {exc}") from exc
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
