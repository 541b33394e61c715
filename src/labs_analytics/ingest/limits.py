"""What refused work costs a key, and refusing a limited key before reading its body.

**Rejected work counts against the rate limit.** Ingest keys ship in
browsers, so any request may be hostile, and refusing one is not free: the
body was read, decompressed, parsed and validated. After authentication,
every request refused as invalid — 400 (not JSON, not gzip), 413, 415, 422,
403 for an event naming another product — takes from the key's token bucket
(the one the append script uses) a cost of::

    max(1, events in the request, KiB of body read or decompressed, rounded up)

that is, what a valid request of the same size would have cost, whether its
size is counted in events or in bytes. The bucket may go negative; while it
is below one token the key gets 429 with ``Retry-After``.

**Refusing a limited key is cheap.** Once a key is known to be limited — a
429 from the append script, or a debit that emptied its bucket — this
process remembers until when, and answers its requests with 429 before
reading, decompressing or validating their bodies. Other keys are never
affected. The memory is per process (each worker learns it from Redis on
its own) and bounded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

KIB = 1024
# Keys remembered as limited; past this, expired entries are dropped, then the oldest.
MAX_LIMITED_KEYS = 10_000


@dataclass(slots=True)
class RequestMeter:
    """How much work a request made us do, as far as it got."""

    received: int = 0  # body bytes read off the connection
    decompressed: int = 0  # bytes gunzip produced
    events: int = 0  # events in the parsed body

    def rejected_cost(self) -> int:
        """Tokens a refused request takes from its key's bucket (see the module docstring)."""
        kib = math.ceil(max(self.received, self.decompressed) / KIB)
        return max(1, self.events, kib)


class LimitedKeys:
    """Keys known to be rate limited, and until when (``time.monotonic()`` seconds)."""

    def __init__(self, max_keys: int = MAX_LIMITED_KEYS) -> None:
        self._until: dict[str, float] = {}
        self._max_keys = max_keys

    def __len__(self) -> int:
        return len(self._until)

    def seconds_left(self, key_id: str) -> float | None:
        """How long ``key_id`` is still limited, or None: the hot path, one dict lookup."""
        until = self._until.get(key_id)
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            self._until.pop(key_id, None)
            return None
        return left

    def limit(self, key_id: str, seconds: float) -> None:
        if seconds <= 0:
            return
        until = time.monotonic() + seconds
        if key_id not in self._until and len(self._until) >= self._max_keys:
            self._make_room()
        if until > self._until.get(key_id, 0.0):
            self._until[key_id] = until

    def _make_room(self) -> None:
        now = time.monotonic()
        for key_id in [k for k, until in self._until.items() if until <= now]:
            del self._until[key_id]
        while len(self._until) >= self._max_keys:
            del self._until[next(iter(self._until))]  # the oldest remembered
