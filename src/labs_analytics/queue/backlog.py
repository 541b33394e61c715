"""The backlog counter: the events in the stream, kept true.

The append script counts each entry's events in, the ack and dead-letter
scripts count them out (see ``labs_analytics.queue.lua``). That alone drifts
when an entry reaches the stream by another road, an ``XADD`` by an older
version, a script or a person: taking its events out made the counter
negative, and ``/readyz`` and ``labs_stream_backlog_events`` showed -1. So:

- **Never below zero.** Counting out stops at zero, and an empty stream sets
  the counter to zero.
- **Recounted.** ``recount_step`` reads the entries that were in the stream
  when the recount began, a bounded step at a time (``RECOUNT_STEP_ENTRIES``
  entries or ``RECOUNT_STEP_BYTES`` of field values, one round trip), and the
  last step takes the counter's error off it (how: ``RECOUNT_SCRIPT``). It
  ends however fast entries arrive; then it rests ``RECOUNT_REST_SECONDS``.
  The API processes' queue maintenance takes a step twice a second, any
  process the next one (the progress lives in Redis): while the stream is
  small a foreign entry is counted within ``RECOUNT_REST_SECONDS`` or so, and
  a large stream never costs Redis more than one step at a time. Nothing of
  this is on the ingest path.

A counter that is not an integer is left alone and logged: it is someone's
write, not drift, and the append script refuses requests over it rather than
guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis

from labs_analytics.queue.lua import RECOUNT_SCRIPT

RECOUNT_STEP_ENTRIES = 200
RECOUNT_STEP_BYTES = 256 * 1024
RECOUNT_REST_SECONDS = 5.0
# A recount no process has stepped for this long (they all stopped) starts over.
RECOUNT_ABANDONED_SECONDS = 60.0


def recount_key(backlog_key: str) -> str:
    """Where a recount keeps its progress: beside the counter, under the same prefix."""
    return f"{backlog_key}:recount"


def parse_backlog(raw: bytes | str | int | None) -> int | None:
    """The counter as read with GET: 0 if missing, never negative, None if not an integer."""
    if raw is None:
        return 0
    try:
        value = int(raw)
    except ValueError:
        return None
    return max(0, value)


@dataclass(frozen=True, slots=True)
class Recount:
    """What one step of a recount did.

    ``resting`` (between recounts) or ``counting``: nothing changed yet.
    ``done``: the counter now holds ``events``, the events in the stream; it
    held ``previous``. ``invalid``: the counter held ``raw``, not an integer,
    and was left alone.
    """

    status: Literal["resting", "counting", "done", "invalid"]
    events: int | None = None
    previous: int | None = None
    raw: str | None = None

    @property
    def corrected(self) -> bool:
        return self.status == "done" and self.previous != self.events


class BacklogCounter:
    def __init__(
        self,
        redis: Redis,
        *,
        stream_key: str,
        backlog_key: str,
        rest_seconds: float | None = None,
        step_entries: int | None = None,
        step_bytes: int | None = None,
    ) -> None:
        """The bounds default to the module's constants, as they are when this is built."""
        self._redis = redis
        self.key = backlog_key
        self._keys = [stream_key, backlog_key, recount_key(backlog_key)]
        rest = RECOUNT_REST_SECONDS if rest_seconds is None else rest_seconds
        self._args = [
            step_entries or RECOUNT_STEP_ENTRIES,
            step_bytes or RECOUNT_STEP_BYTES,
            max(1, round(rest * 1000)),
            round(RECOUNT_ABANDONED_SECONDS * 1000),
        ]
        self._recount = redis.register_script(RECOUNT_SCRIPT)

    async def read(self) -> int | None:
        """The events in the stream (None: the counter is not an integer)."""
        return parse_backlog(await self._redis.get(self.key))

    async def recount_step(self) -> Recount:
        """Read one more step of the stream; the last step corrects the counter.

        Any process may take the next step of a recount another began: the
        progress lives in Redis. Raises what the Redis client raises.
        """
        reply: Any = await self._recount(keys=self._keys, args=self._args)
        status = _text(reply[0])
        if status == "resting":
            return Recount("resting")
        if status == "counting":
            return Recount("counting")
        events, counter = int(reply[1]), _text(reply[2])
        if status == "invalid":
            return Recount("invalid", events=events, raw=counter)
        return Recount("done", events=events, previous=int(counter) if counter else 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
