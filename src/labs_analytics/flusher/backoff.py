"""Waiting between attempts: capped exponential backoff with full jitter; stoppable sleeps."""

from __future__ import annotations

import asyncio
import random


def backoff_seconds(attempt: int, *, initial_ms: int, max_ms: int) -> float:
    """Delay before retry number ``attempt`` (1-based): uniform in [0, min(max, initial·2^(n-1))].

    Full jitter keeps several flushers that failed together from retrying in lockstep.
    """
    ceiling_ms = min(max_ms, initial_ms * 2 ** min(attempt - 1, 30))
    return random.uniform(0, ceiling_ms) / 1000


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep; return True if ``stop`` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
