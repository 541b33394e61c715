"""Appending accepted events to the stream, with the rate limit and backlog bound.

One Lua script does it all in one round trip and atomically: check the
stream backlog, take the request's events from the key's token bucket, XADD
the entry, count its events into the backlog. So a 202 costs one call to Redis,
and two API workers can never both squeeze under a limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from labs_analytics.events import EventRecord
from labs_analytics.queue.entries import encode_entry

# KEYS: stream, backlog counter, token bucket
# ARGV: events in the entry, rate (events/s, 0 = unlimited), burst,
#       backlog limit (0 = none), then the entry's fields as name, value pairs
APPEND_SCRIPT = """
local n = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local max_backlog = tonumber(ARGV[4])
local backlog = tonumber(redis.call('GET', KEYS[2]) or '0')
if max_backlog > 0 and backlog + n > max_backlog then
  return {'backlog', tostring(backlog)}
end
if rate > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local bucket = redis.call('HMGET', KEYS[3], 'tokens', 'ts')
  local tokens = tonumber(bucket[1]) or burst
  local ts = tonumber(bucket[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
  if tokens < n then
    return {'rate', tostring((n - tokens) / rate)}
  end
  redis.call('HSET', KEYS[3], 'tokens', tostring(tokens - n), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[3], math.ceil(burst / rate * 1000) + 1000)
end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
local total = redis.call('INCRBY', KEYS[2], n)
return {'ok', id, tostring(total)}
"""


class QueueWriteFailed(Exception):
    """Redis did not confirm the append: the events are not durable there."""


class BacklogFull(Exception):
    """The stream holds as many unflushed events as allowed."""

    def __init__(self, backlog: int) -> None:
        super().__init__(f"stream backlog is {backlog} events")
        self.backlog = backlog


class RateLimited(Exception):
    def __init__(self, retry_after_seconds: float) -> None:
        super().__init__(f"rate limited for {retry_after_seconds:.3f} s")
        self.retry_after_seconds = retry_after_seconds


@dataclass(frozen=True, slots=True)
class RateLimit:
    events_per_second: float
    burst: float

    @classmethod
    def unlimited(cls) -> RateLimit:
        return cls(0, 0)


@dataclass(frozen=True, slots=True)
class Appended:
    entry_id: str
    backlog: int


class StreamProducer:
    def __init__(
        self, redis: Redis, *, stream_key: str, backlog_key: str, backlog_max_events: int = 0
    ) -> None:
        self._redis = redis
        self._stream_key = stream_key
        self._backlog_key = backlog_key
        self._backlog_max = backlog_max_events
        self._script = redis.register_script(APPEND_SCRIPT)

    async def append(
        self,
        records: Sequence[EventRecord],
        *,
        rate_limit: RateLimit | None = None,
        rate_key: str = "",
        enforce_backlog: bool = True,
    ) -> Appended:
        """Append one request's events as one entry.

        Raises ``RateLimited`` or ``BacklogFull`` (nothing written), or
        ``QueueWriteFailed`` unless Redis confirmed the write. No MAXLEN:
        trimming could drop entries that no flusher has acknowledged yet.
        """
        return await self.append_fields(
            encode_entry(records),
            events=len(records),
            rate_limit=rate_limit or RateLimit.unlimited(),
            rate_key=rate_key,
            enforce_backlog=enforce_backlog,
        )

    async def append_fields(
        self,
        fields: dict[bytes, bytes],
        *,
        events: int,
        rate_limit: RateLimit,
        rate_key: str = "",
        enforce_backlog: bool = True,
    ) -> Appended:
        args: list[bytes | str | int | float] = [
            events,
            rate_limit.events_per_second,
            rate_limit.burst,
            self._backlog_max if enforce_backlog else 0,
        ]
        for name, value in fields.items():
            args += [name, value]
        try:
            reply = await self._script(
                keys=[self._stream_key, self._backlog_key, rate_key or "-"], args=args
            )
        except ResponseError as exc:
            if "OOM" in str(exc):
                # maxmemory reached under noeviction: overload, not an outage.
                raise BacklogFull(-1) from exc
            raise QueueWriteFailed(f"{type(exc).__name__}: {exc}") from exc
        except (RedisError, OSError, TimeoutError) as exc:
            raise QueueWriteFailed(f"{type(exc).__name__}: {exc}") from exc
        status = _text(reply[0])
        if status == "backlog":
            raise BacklogFull(int(float(_text(reply[1]))))
        if status == "rate":
            raise RateLimited(float(_text(reply[1])))
        return Appended(entry_id=_text(reply[1]), backlog=int(_text(reply[2])))


def retry_after(seconds: float) -> int:
    """Whole seconds for a Retry-After header: at least 1, rounded up."""
    return max(1, math.ceil(seconds))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
