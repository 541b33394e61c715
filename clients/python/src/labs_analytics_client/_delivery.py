"""Delivering one batch: send, classify the answer, retry, split, give up.

The logic is written once, without I/O, as a generator (the sans-I/O style of
h11 and httpx's internals): it yields ``Send`` and ``Sleep`` actions, and the
driver (the thread of ``AnalyticsClient``, the task of
``AsyncAnalyticsClient``, or a unit test with a fake clock) performs them and
sends back what happened: a ``Reply``, the exception raised, or whether a
sleep ran to its end. Both clients therefore retry, split and give up in
exactly the same way.

What happens to a batch:

* 2xx: delivered.
* 413: the batch is halved and each half delivered in turn (recursively); a
  lone event that is still too large is dropped with ``RequestRejected``.
* 422 whose details name the invalid events by index: those are dropped
  (``RequestRejected``) and the rest is sent again at once; the server
  queued nothing of a request it refused, so nothing is doubled.
* 408, 429, 5xx, network errors and timeouts: retried after the policy's
  delay (at least ``Retry-After``), up to ``max_retries`` and
  ``max_retry_time``, then ``RetriesExhausted``.
* any other status: ``RequestRejected`` (401, 403… would never succeed).
* an exception the client cannot classify: ``UnexpectedError``, not retried.
* the close deadline passing: what is left is handed back to the client
  (``abandoned``), which reports everything a close gave up in one
  ``ShutdownTimeout``.

A retry resends the same events (same ids and timestamps), with a new
``sent_at``; the server stores each event once.
"""

from __future__ import annotations

import enum
import json
import random
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from labs_analytics_client._batching import QueuedEvent, encode_body, halves
from labs_analytics_client._exceptions import (
    DeliveryError,
    RequestRejected,
    RetriesExhausted,
    UnexpectedError,
)
from labs_analytics_client._retry import (
    RetryPolicy,
    is_retryable_exception,
    is_retryable_status,
    parse_retry_after,
)


@dataclass(frozen=True, slots=True)
class Send:
    body: bytes
    timeout: float
    events: int


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    retry_after: str | None
    content: bytes


Action = Send | Sleep
# What the driver sends back: a Reply or the exception for a Send, and for a
# Sleep True if it slept to its end, False if the close deadline cut it short.
Outcome = Reply | Exception | bool
Steps = Generator[Action, Outcome, None]


def drive(steps: Steps, send: Callable[[Send], Outcome], sleep: Callable[[float], bool]) -> None:
    """Run a delivery with blocking I/O."""
    try:
        action = next(steps)
        while True:
            outcome = send(action) if isinstance(action, Send) else sleep(action.seconds)
            action = steps.send(outcome)
    except StopIteration:
        pass


async def adrive(
    steps: Steps,
    send: Callable[[Send], Awaitable[Outcome]],
    sleep: Callable[[float], Awaitable[bool]],
) -> None:
    """Run a delivery with asyncio I/O."""
    try:
        action = next(steps)
        while True:
            if isinstance(action, Send):
                outcome = await send(action)
            else:
                outcome = await sleep(action.seconds)
            action = steps.send(outcome)
    except StopIteration:
        pass


class DeliveryHooks(Protocol):
    """What delivery needs from its client: time, the deadline, and where to report."""

    def monotonic(self) -> float: ...

    def sent_at(self) -> str: ...

    def abort_at(self) -> float | None:
        """The close deadline (monotonic), once close() has set one."""
        ...

    def delivered(self, events: Sequence[QueuedEvent]) -> None: ...

    def retrying(self, events: Sequence[QueuedEvent], delay: float, reason: str) -> None: ...

    def failed(self, events: Sequence[QueuedEvent], error: DeliveryError) -> None: ...

    def abandoned(
        self, events: Sequence[QueuedEvent], unanswered: Sequence[QueuedEvent] = ()
    ) -> None:
        """The close deadline came first: ``events`` not sent, ``unanswered`` sent
        with no answer by then (the server may have them); for the one close report."""
        ...


def _ids(events: Sequence[QueuedEvent]) -> list[str]:
    return [event.event_id for event in events]


def _payloads(events: Sequence[QueuedEvent]) -> list[bytes]:
    return [event.data for event in events]


def _error_body(content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _rejected(reply: Reply, events: Sequence[QueuedEvent]) -> RequestRejected:
    body = _error_body(reply.content)
    details = body.get("details")
    return RequestRejected(
        status_code=reply.status,
        error=body.get("error") if isinstance(body.get("error"), str) else None,
        message=str(body.get("message") or reply.content[:200].decode(errors="replace")),
        details=details if isinstance(details, list) else [],
        event_ids=_ids(events),
        payloads=_payloads(events),
    )


def _invalid_indices(reply: Reply, count: int) -> set[int] | None:
    """The indices a 422 names, if it names every invalid event by a valid index.

    The server lists the first problems in detail; when there are more, a last
    item of type ``too_many_problems`` carries ``invalid_indexes``, every
    invalid event's index.
    """
    details = _error_body(reply.content).get("details")
    if not isinstance(details, list) or not details:
        return None
    indices: set[int] = set()
    for detail in details:
        if isinstance(detail, dict) and detail.get("type") == "too_many_problems":
            named = detail.get("invalid_indexes")
            if not isinstance(named, list) or not named:
                return None
            candidates = named
        else:
            candidates = [detail.get("index") if isinstance(detail, dict) else None]
        for index in candidates:
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
                return None
            indices.add(index)
    return indices


class _End(enum.Enum):
    """How a step leaves a part: on to the next part, or the whole delivery ends."""

    NEXT_PART = "next part"  # delivered, split or given up
    STOP = "stop"  # handed back at the close deadline, or the sync_mode limit came


@dataclass(frozen=True, slots=True)
class _Retry:
    reason: str
    retry_after: float | None = None


@dataclass(slots=True)
class _Tries:
    """One part's attempts so far: what a give-up reports."""

    started: float
    retries: int = 0
    last: str = "no attempt"
    last_status: int | None = None
    last_exception: BaseException | None = None


# What judging an answer decides: retry, send a smaller part at once, or end.
_Verdict = _Retry | list[QueuedEvent] | _End


class Delivery:
    def __init__(
        self,
        *,
        hooks: DeliveryHooks,
        policy: RetryPolicy,
        timeout: float,
        gzip: bool,
        rng: random.Random | None = None,
    ) -> None:
        self.hooks = hooks
        self.policy = policy
        self.timeout = timeout
        self.gzip = gzip
        self.rng = rng or random.Random()

    def steps(self, batch: Sequence[QueuedEvent], *, give_up_at: float | None = None) -> Steps:
        """Deliver ``batch``; ``give_up_at`` (monotonic) bounds the whole delivery.

        ``give_up_at`` is how sync mode keeps ``track()`` bounded: no attempt
        outlasts it (each request's timeout is cut to what is left) and no retry
        starts after it; what is not delivered by then is ``RetriesExhausted``.
        """
        parts: deque[list[QueuedEvent]] = deque([list(batch)])
        while parts:
            part = parts.popleft()
            if (yield from self._deliver_part(part, parts, give_up_at)) is _End.STOP:
                return

    def _deliver_part(
        self, part: list[QueuedEvent], parts: deque[list[QueuedEvent]], give_up_at: float | None
    ) -> Generator[Action, Outcome, _End]:
        """Send one part until it is delivered, split or given up (``parts``: what follows)."""
        tries = _Tries(started=self.hooks.monotonic())
        while True:
            timeout = self._time_left(part, parts, tries, give_up_at)
            if timeout is None:
                return _End.STOP
            body = encode_body(part, sent_at=self.hooks.sent_at(), gzip=self.gzip)
            outcome = yield Send(body, timeout, len(part))
            if isinstance(outcome, Reply):
                verdict = self._judge_reply(outcome, part, parts, tries)
            elif isinstance(outcome, Exception):
                verdict = self._judge_exception(outcome, part, parts, tries)
            else:  # pragma: no cover - a driver bug
                raise TypeError(f"unexpected outcome for Send: {outcome!r}")
            if isinstance(verdict, _End):
                return verdict
            if isinstance(verdict, list):
                part = verdict  # nothing of the request was queued: send the rest now
                continue
            delay = self._backoff(verdict, part, parts, tries, give_up_at)
            if isinstance(delay, _End):
                return delay
            self.hooks.retrying(part, delay, verdict.reason)
            if not (yield Sleep(delay)):
                self._shutdown(part, parts)
                return _End.STOP

    def _time_left(
        self,
        part: list[QueuedEvent],
        parts: deque[list[QueuedEvent]],
        tries: _Tries,
        give_up_at: float | None,
    ) -> float | None:
        """The next request's timeout, cut to the deadlines; None if one has come."""
        hooks = self.hooks
        abort_at = hooks.abort_at()
        now = hooks.monotonic()
        if abort_at is not None and now >= abort_at:
            self._shutdown(part, parts)
            return None
        if give_up_at is not None and now >= give_up_at:
            self._time_limit(part, parts, tries)
            return None
        timeout = self.timeout if abort_at is None else min(self.timeout, abort_at - now)
        return timeout if give_up_at is None else min(timeout, give_up_at - now)

    def _judge_reply(
        self,
        reply: Reply,
        part: list[QueuedEvent],
        parts: deque[list[QueuedEvent]],
        tries: _Tries,
    ) -> _Verdict:
        hooks = self.hooks
        status = reply.status
        if 200 <= status < 300:
            hooks.delivered(part)
            return _End.NEXT_PART
        if status == 413 and len(part) > 1:
            first, second = halves(part)
            parts.appendleft(second)
            parts.appendleft(first)
            return _End.NEXT_PART
        if status == 422:
            invalid = _invalid_indices(reply, len(part))
            if invalid is not None and len(invalid) < len(part):
                bad = [event for i, event in enumerate(part) if i in invalid]
                hooks.failed(bad, _rejected(reply, bad))
                return [event for i, event in enumerate(part) if i not in invalid]
        if not is_retryable_status(status):
            hooks.failed(part, _rejected(reply, part))
            return _End.NEXT_PART
        tries.last_status, tries.last_exception = status, None
        return _Retry(f"status {status}", parse_retry_after(reply.retry_after))

    def _judge_exception(
        self,
        exc: Exception,
        part: list[QueuedEvent],
        parts: deque[list[QueuedEvent]],
        tries: _Tries,
    ) -> _Verdict:
        hooks = self.hooks
        abort_at = hooks.abort_at()
        if (
            isinstance(exc, httpx.ReadTimeout)
            and abort_at is not None
            and hooks.monotonic() >= abort_at
        ):
            # Sent in full, unanswered at the close deadline: in flight.
            hooks.abandoned([event for rest in parts for event in rest], unanswered=part)
            return _End.STOP
        if not is_retryable_exception(exc):
            error = UnexpectedError(
                f"{type(exc).__name__}: {exc}; {len(part)} events dropped",
                event_ids=_ids(part),
                payloads=_payloads(part),
            )
            error.__cause__ = exc
            hooks.failed(part, error)
            return _End.NEXT_PART
        tries.last_status, tries.last_exception = None, exc
        return _Retry(type(exc).__name__)

    def _backoff(
        self,
        retry: _Retry,
        part: list[QueuedEvent],
        parts: deque[list[QueuedEvent]],
        tries: _Tries,
        give_up_at: float | None,
    ) -> float | _End:
        """How long to wait before the next attempt, or the end: out of retries or time."""
        hooks = self.hooks
        tries.retries += 1
        tries.last = retry.reason
        delay = self.policy.delay(tries.retries, retry.retry_after, self.rng)
        now = hooks.monotonic()
        if give_up_at is not None and now + delay >= give_up_at:
            self._time_limit(part, parts, tries)
            return _End.STOP
        max_retries = self.policy.max_retries
        if (max_retries is not None and tries.retries > max_retries) or (
            now + delay - tries.started > self.policy.max_retry_time
        ):
            hooks.failed(
                part,
                RetriesExhausted(
                    f"gave up after {tries.retries} attempts over {now - tries.started:.1f} s "
                    f"(last: {retry.reason}); {len(part)} events dropped",
                    event_ids=_ids(part),
                    payloads=_payloads(part),
                    attempts=tries.retries,
                    last_status=tries.last_status,
                    last_exception=tries.last_exception,
                ),
            )
            return _End.NEXT_PART
        abort_at = hooks.abort_at()
        if abort_at is not None and now + delay > abort_at:
            self._shutdown(part, parts)
            return _End.STOP
        return delay

    def _time_limit(
        self, part: list[QueuedEvent], parts: deque[list[QueuedEvent]], tries: _Tries
    ) -> None:
        left = part + [event for rest in parts for event in rest]
        self.hooks.failed(
            left,
            RetriesExhausted(
                f"gave up after {tries.retries} attempts at the sync_mode time limit "
                f"(shutdown_timeout; last: {tries.last}); {len(left)} events dropped",
                event_ids=_ids(left),
                payloads=_payloads(left),
                attempts=tries.retries,
                last_status=tries.last_status,
                last_exception=tries.last_exception,
            ),
        )

    def _shutdown(self, part: list[QueuedEvent], parts: deque[list[QueuedEvent]]) -> None:
        self.hooks.abandoned(part + [event for rest in parts for event in rest])
