"""When to retry, and how long to wait.

Retried: network errors, timeouts, a connection the server dropped, and the
statuses 408, 429 and 5xx. The wait before retry *n* is full-jitter
exponential backoff, ``uniform(0, min(backoff_max, backoff_initial * 2**(n-1)))``
(so many clients do not retry in step), raised to the server's ``Retry-After``
when it sent one (a minimum, never shortened) but never above
``retry_after_max`` (a server, or a proxy, cannot park the client for an
hour). A batch gives up after ``max_retries`` retries or when the next attempt
would start more than ``max_retry_time`` after its first one. By default
only time bounds it: ten quick jittered retries can all fall inside a
two-second restart, and a count alone would drop events a few seconds later
would have delivered.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int | None = None  # None: bounded by max_retry_time only
    max_retry_time: float = 120.0
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    retry_after_max: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries is not None and self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.max_retry_time < 0 or self.backoff_initial < 0 or self.retry_after_max < 0:
            raise ValueError("retry times must be >= 0")
        if self.backoff_max < self.backoff_initial:
            raise ValueError("retry_backoff_max must be >= retry_backoff_initial")

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full jitter for retry number ``retry`` (1 for the first retry)."""
        ceiling = min(self.backoff_max, self.backoff_initial * 2 ** min(retry - 1, 62))
        return rng.uniform(0, ceiling)

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        wait = self.backoff(retry, rng)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.retry_after_max))
        return wait


def is_retryable_status(status: int) -> bool:
    return status in (408, 429) or 500 <= status <= 599


def is_retryable_exception(exc: BaseException) -> bool:
    """Trouble on the way that a later attempt may not meet.

    Not retried: an unsupported scheme or a malformed URL (configuration), a
    request we could not even form (LocalProtocolError), and anything that is
    not an httpx transport error: the client cannot know it would pass.
    """
    return isinstance(
        exc,
        httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError | httpx.ProxyError,
    )


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
