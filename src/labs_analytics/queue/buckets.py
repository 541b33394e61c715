"""Per-key token buckets in this process, for while Redis (and its shared buckets) is away.

The spool takes events when Redis is unreachable; without a limit of its own
one key could fill it at any rate. These buckets apply the same ``RateLimit``
(rate and burst) and the same arithmetic as the append script, per process:
with N API processes a key may get up to N times its rate during an outage,
never more. When Redis answers again its own buckets take over.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from labs_analytics.queue.producer import RateLimit

MAX_LOCAL_BUCKETS = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    ts: float
    full_at: float = 0.0  # when it will have refilled: forgetting it then changes nothing

    def settle(self, limit: RateLimit) -> None:
        self.full_at = self.ts + (limit.burst - self.tokens) / limit.events_per_second


class LocalBuckets:
    def __init__(
        self, *, max_keys: int = MAX_LOCAL_BUCKETS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._max_keys = max_keys
        self._clock = clock

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, rate_key: str, events: int, limit: RateLimit) -> float | None:
        """Take ``events`` tokens; None if taken, else the seconds until they would be there."""
        limit.check()
        if limit.is_unlimited:
            return None
        bucket = self._refilled(rate_key, limit)
        if bucket.tokens < events:
            return (events - bucket.tokens) / limit.events_per_second
        bucket.tokens -= events
        bucket.settle(limit)
        return None

    def give_back(self, rate_key: str, events: int, limit: RateLimit) -> None:
        """Return tokens taken for events that were not accepted after all."""
        bucket = self._buckets.get(rate_key)
        if bucket is not None and not limit.is_unlimited:
            bucket.tokens = min(limit.burst, bucket.tokens + events)
            bucket.settle(limit)

    def debit(self, rate_key: str, cost: int, limit: RateLimit) -> float | None:
        """Take ``cost`` tokens whatever the bucket holds (down to -burst); the tokens left."""
        limit.check()
        if limit.is_unlimited:
            return None
        bucket = self._refilled(rate_key, limit)
        bucket.tokens = max(-limit.burst, bucket.tokens - cost)
        bucket.settle(limit)
        return bucket.tokens

    def _refilled(self, rate_key: str, limit: RateLimit) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(rate_key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._make_room(now)
            bucket = self._buckets[rate_key] = _Bucket(limit.burst, now)
            return bucket
        elapsed = max(0.0, now - bucket.ts)
        bucket.tokens = min(limit.burst, bucket.tokens + elapsed * limit.events_per_second)
        bucket.ts = now
        return bucket

    def _make_room(self, now: float) -> None:
        # A refilled bucket is as good as a new one: forgetting it changes
        # nothing. Past that, the least recently made goes.
        for key in [k for k, b in self._buckets.items() if b.full_at <= now]:
            del self._buckets[key]
        while len(self._buckets) >= self._max_keys:
            del self._buckets[next(iter(self._buckets))]
