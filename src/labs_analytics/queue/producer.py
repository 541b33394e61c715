"""Appending accepted events to the stream, with the rate limit and backlog bound.

One Lua script (``labs_analytics.queue.lua.APPEND_SCRIPT``) does it all,
atomically: check the stream backlog, take the request's events from the
key's token bucket, XADD, count its events into the backlog. Two API workers
can never both squeeze under a limit.

Concurrent requests share the call: appends made while the event loop is busy
go to Redis together, as one script call (several for a large burst) in one
write, and each request still waits for its own verdict before answering
(nothing is acknowledged before Redis confirmed it). Ingest requests
(``append_events``) share the stream entry too: the script writes the events
of every request of the call that passed its checks as one entry (at most
``MAX_SHARED_EVENTS`` events and ``MAX_SHARED_BYTES``), so Redis and the
flushers handle one entry where they handled one per request. Replays
(``append_fields``) keep their entries as they were. The write goes out on
connections of the producer's own (``labs_analytics.queue.wire``: the one
place that relies on redis-py internals).

**Errors are classified, not all taken for an outage.** What Redis answers
when it cannot serve anyone for now — connection errors, timeouts, and the
error replies ``LOADING``, ``BUSY``, ``READONLY``, ``MISCONF``,
``MASTERDOWN``, ``TRYAGAIN``, ``CLUSTERDOWN``, ``NOREPLICAS`` — raises
``QueueWriteFailed`` (the caller spools). ``OOM`` is overload
(``BacklogFull``). Any other error reply (``WRONGTYPE``, a script error) is
that request's own failure, ``AppendRefused``: Redis is up, other requests
go on, nothing is spooled. Inside the script each entry's commands run under
``redis.pcall``, so one entry's error is its own verdict and never aborts the
entries sharing its call. A rate limit the script cannot use (not finite,
not positive) never reaches it: ``InvalidRateLimit``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError

from labs_analytics.queue.lua import APPEND_SCRIPT, DEBIT_SCRIPT
from labs_analytics.queue.wire import DirectConnections, pack_bulk_strings

# Error replies that mean Redis cannot serve anyone for now (the caller spools).
OUTAGE_ERROR_CODES = frozenset(
    {
        "LOADING",
        "BUSY",
        "READONLY",
        "MISCONF",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "NOREPLICAS",
    }
)
# The longest a bucket may take to refill, in seconds: beyond it the script's
# expiry (in ms) would no longer be an integer Redis accepts.
MAX_BUCKET_SECONDS = 10**8

# One script call carries at most this many appends or bytes; a larger burst
# of requests becomes several calls in one write.
MAX_APPENDS_PER_CALL = 128
MAX_BYTES_PER_CALL = 4 * 1024 * 1024
# A shared entry holds at most this many events and bytes of them (an append
# over either goes alone): entries stay the size of one large request, which
# is what the flushers' batches and reads are sized for.
MAX_SHARED_EVENTS = 1000
MAX_SHARED_BYTES = 1024 * 1024


class QueueWriteFailed(Exception):
    """Redis did not confirm the append and looks unavailable: spool the events."""


class AppendRefused(Exception):
    """Redis answered this append with an error that is not an outage (a script or
    command error): this request fails, Redis is not down, nothing is spooled."""


class InvalidRateLimit(ValueError):
    """A rate limit the token bucket cannot use (not finite, not positive)."""


class BacklogFull(Exception):
    """The stream holds as many unflushed events as allowed (or Redis is out of memory)."""

    def __init__(self, backlog: int, *, adding: int = 0, limit: int = 0) -> None:
        if limit:
            message = (
                f"the stream holds {backlog} unflushed events and this request adds {adding}: "
                f"{backlog} + {adding} is over the backlog limit of {limit}"
            )
        else:
            message = "Redis refused the write: it is out of memory"
        super().__init__(message)
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

    @property
    def is_unlimited(self) -> bool:
        return self.events_per_second == 0 and self.burst == 0

    def check(self) -> None:
        """Raise ``InvalidRateLimit`` unless this is ``unlimited()`` or a usable bucket.

        Defence in depth: keys are validated when created, but a rate the
        script cannot compute with would fail every entry sharing its call.
        """
        if self.is_unlimited:
            return
        rate, burst = self.events_per_second, self.burst
        if not (
            isinstance(rate, int | float)
            and isinstance(burst, int | float)
            and math.isfinite(rate)
            and math.isfinite(burst)
            and rate > 0
            and burst > 0
            and burst / rate <= MAX_BUCKET_SECONDS
        ):
            raise InvalidRateLimit(f"unusable rate limit: {rate!r} events/s, burst {burst!r}")


def classify_error(exc: BaseException) -> type[Exception]:
    """What a failed Redis call means: ``QueueWriteFailed`` (an outage: spool),
    ``BacklogFull`` (out of memory: overload) or ``AppendRefused`` (this request's error)."""
    if isinstance(exc, ResponseError):
        return classify_error_reply(_error_code(exc))
    return QueueWriteFailed  # connection errors, timeouts: Redis is away


def classify_error_reply(code: str) -> type[Exception]:
    """The same, for an error reply's code (its first word: ``WRONGTYPE``, ``LOADING``…)."""
    if code in OUTAGE_ERROR_CODES:
        return QueueWriteFailed
    if code == "OOM":
        return BacklogFull
    return AppendRefused


def _error_code(exc: ResponseError) -> str:
    # redis-py strips the code of the replies it maps to a class and keeps it
    # as ``status_code``; other replies keep it as their first word.
    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and code:
        return code
    return str(exc).split(" ", 1)[0]


@dataclass(frozen=True, slots=True)
class Appended:
    entry_id: str
    backlog: int


class StreamProducer:
    def __init__(
        self, redis: Redis, *, stream_key: str, backlog_key: str, backlog_max_events: int = 0
    ) -> None:
        self._redis = redis
        self.stream_key = stream_key
        self.backlog_key = backlog_key
        self._keys = (stream_key.encode(), backlog_key.encode())
        self._backlog_max = backlog_max_events
        self._sha: str | None = None
        self._debit_script: AsyncScript | None = None
        self._waiting: list[_Waiting] = []
        self._sending: set[asyncio.Task[None]] = set()
        # Made by the client's pool (same address, timeouts, credentials), not taken from it.
        self._connections = DirectConnections(redis.connection_pool)

    async def append_fields(
        self,
        fields: dict[bytes, bytes],
        *,
        events: int,
        rate_limit: RateLimit,
        rate_key: str = "",
    ) -> Appended:
        """Append one stream entry of its own (``fields``, holding ``events`` events).

        Raises ``RateLimited`` or ``BacklogFull`` (nothing written), or
        ``QueueWriteFailed`` unless Redis confirmed the write. No MAXLEN:
        trimming could drop entries that no flusher has acknowledged yet.
        """
        body: list[bytes] = []
        for name, value in fields.items():
            body += (name, value)
        return await self._append("e", body, events, len(fields), rate_limit, rate_key)

    async def append_events(
        self, items: bytes, *, events: int, rate_limit: RateLimit, rate_key: str = ""
    ) -> Appended:
        """Append ``events`` events to the entry this call's requests share.

        ``items``: the events as the items of a JSON array, without its
        brackets (``labs_analytics.queue.entries.array_items``). Raises as
        ``append_fields`` does.
        """
        return await self._append("s", [items], events, 0, rate_limit, rate_key)

    async def _append(
        self,
        kind: str,
        body: list[bytes],
        events: int,
        field_count: int,
        rate_limit: RateLimit,
        rate_key: str,
    ) -> Appended:
        """One append of either kind (``lua.APPEND_SCRIPT``: its header, then ``body``)."""
        rate_limit.check()
        header = (
            f"{kind} {events} {rate_limit.events_per_second!r} {rate_limit.burst!r} "
            f"{self._backlog_max} {field_count} {rate_key or '-'}"
        ).encode()
        shared = kind == "s"
        try:
            reply = await self._call(
                [header, *body],
                shared_events=events if shared else 0,
                shared_bytes=len(body[0]) if shared else 0,
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise _failure(classify_error(exc), f"{type(exc).__name__}: {exc}") from exc
        status, detail, backlog = (_text(part) for part in reply)
        if status == "ok":
            return Appended(entry_id=detail, backlog=int(backlog))
        if status == "rate":
            raise RateLimited(float(detail))
        if status == "backlog":
            raise BacklogFull(int(float(detail)), adding=events, limit=self._backlog_max)
        # 'error': this append's command failed inside the script.
        raise _failure(classify_error_reply(detail.split(" ", 1)[0]), detail)

    async def debit(self, rate_key: str, cost: int, rate_limit: RateLimit) -> float | None:
        """Take ``cost`` tokens from a key's bucket for refused work; the tokens left.

        None for an unlimited key (it has no bucket). Raises the classified
        error (see ``classify_error``) if Redis did not answer.
        """
        rate_limit.check()
        if rate_limit.is_unlimited:
            return None
        if self._debit_script is None:
            self._debit_script = self._redis.register_script(DEBIT_SCRIPT)
        try:
            left = await self._debit_script(
                keys=[rate_key],
                args=[cost, repr(rate_limit.events_per_second), repr(rate_limit.burst)],
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise _failure(classify_error(exc), f"{type(exc).__name__}: {exc}") from exc
        return float(_text(left))

    async def _call(self, args: list[bytes], *, shared_events: int, shared_bytes: int) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Packed here, once: the send only concatenates.
        packed = pack_bulk_strings(args)
        self._waiting.append(_Waiting(packed, len(args), shared_events, shared_bytes, future))
        if len(self._waiting) == 1:
            # Sent on the next turn of the loop, with whatever else arrived by then.
            asyncio.get_running_loop().call_soon(self._send_waiting)
        return await future

    def _send_waiting(self) -> None:
        batch, self._waiting = self._waiting, []
        task = asyncio.create_task(self._send(batch))
        self._sending.add(task)  # keep a reference until it is done
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Waiting]) -> None:
        calls = list(_group(batch))
        try:
            replies = await self._evalsha_all(calls)
            if any(isinstance(reply, NoScriptError) for reply in replies):
                # Redis restarted (or flushed its scripts) since we loaded ours.
                self._sha = None
                replies = await self._evalsha_all(calls)
        except BaseException as exc:
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for call, reply in zip(calls, replies, strict=True):
            for index, waiting in enumerate(call):
                if waiting.future.done():
                    continue  # the request was cancelled (client gone)
                if isinstance(reply, Exception):
                    waiting.future.set_exception(reply)
                else:
                    waiting.future.set_result(reply[3 * index : 3 * index + 3])

    async def _evalsha_all(self, calls: list[list[_Waiting]]) -> list[Any]:
        """One EVALSHA per call, all in one write, one round trip; a call's error
        reply comes back in its place (that call failed, the others stand)."""
        if self._sha is None:
            self._sha = await self._redis.script_load(APPEND_SCRIPT)
        chunks = []
        for call in calls:
            head = [b"EVALSHA", self._sha.encode(), b"2", *self._keys, b"%d" % len(call)]
            chunks.append(b"*%d\r\n" % (len(head) + sum(w.arg_count for w in call)))
            chunks.append(pack_bulk_strings(head))
            chunks += (waiting.packed for waiting in call)
        return await self._connections.exchange(chunks, len(calls))

    async def aclose(self) -> None:
        """Close the connections this producer opened (the client's pool is the caller's)."""
        await self._connections.aclose()


class _Waiting(NamedTuple):
    packed: bytes  # the append's script arguments, as RESP bulk strings
    arg_count: int
    shared_events: int  # its events and their bytes if it goes into the shared entry, else 0
    shared_bytes: int
    future: asyncio.Future[Any]


def _group(batch: list[_Waiting]) -> Iterator[list[_Waiting]]:
    """The batch as script calls, in order, each within the per-call and shared-entry caps."""
    call: list[_Waiting] = []
    size = shared_events = shared_bytes = 0
    for waiting in batch:
        if call and (
            len(call) >= MAX_APPENDS_PER_CALL
            or size + len(waiting.packed) > MAX_BYTES_PER_CALL
            or shared_events + waiting.shared_events > MAX_SHARED_EVENTS
            or shared_bytes + waiting.shared_bytes > MAX_SHARED_BYTES
        ):
            yield call
            call, size, shared_events, shared_bytes = [], 0, 0, 0
        call.append(waiting)
        size += len(waiting.packed)
        shared_events += waiting.shared_events
        shared_bytes += waiting.shared_bytes
    if call:
        yield call


def retry_after(seconds: float) -> int:
    """Whole seconds for a Retry-After header: at least 1, rounded up."""
    return max(1, math.ceil(seconds))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _failure(kind: type[Exception], message: str) -> Exception:
    if kind is BacklogFull:
        return BacklogFull(-1)  # maxmemory reached under noeviction: overload, not an outage
    return kind(message)
