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
        hooks = self.hooks
        parts: deque[list[QueuedEvent]] = deque([list(batch)])
        while parts:
            part = parts.popleft()
            started = hooks.monotonic()
            retries = 0
            last = "no attempt"
            last_status: int | None = None
            last_exception: BaseException | None = None
            while True:
                abort_at = hooks.abort_at()
                now = hooks.monotonic()
                if abort_at is not None and now >= abort_at:
                    self._shutdown(part, parts)
                    return
                if give_up_at is not None and now >= give_up_at:
                    self._time_limit(part, parts, retries, last, last_status, last_exception)
                    return
                timeout = self.timeout if abort_at is None else min(self.timeout, abort_at - now)
                if give_up_at is not None:
                    timeout = min(timeout, give_up_at - now)
                body = encode_body(part, sent_at=hooks.sent_at(), gzip=self.gzip)
                outcome = yield Send(body, timeout, len(part))
                retry_after: float | None = None
                if isinstance(outcome, Reply):
                    status = outcome.status
                    if 200 <= status < 300:
                        hooks.delivered(part)
                        break
                    if status == 413 and len(part) > 1:
                        first, second = halves(part)
                        parts.appendleft(second)
                        parts.appendleft(first)
                        break
                    if status == 422:
                        invalid = _invalid_indices(outcome, len(part))
                        if invalid is not None and len(invalid) < len(part):
                            bad = [e for i, e in enumerate(part) if i in invalid]
                            hooks.failed(bad, _rejected(outcome, bad))
                            part = [e for i, e in enumerate(part) if i not in invalid]
                            continue  # nothing of the request was queued: send the rest now
                    if not is_retryable_status(status):
                        hooks.failed(part, _rejected(outcome, part))
                        break
                    retry_after = parse_retry_after(outcome.retry_after)
                    reason = f"status {status}"
                    last_status, last_exception = status, None
                elif isinstance(outcome, Exception):
                    abort_at = hooks.abort_at()
                    if (
                        isinstance(outcome, httpx.ReadTimeout)
                        and abort_at is not None
                        and hooks.monotonic() >= abort_at
                    ):
                        # Sent in full, unanswered at the close deadline: in flight.
                        self.hooks.abandoned(
                            [event for rest in parts for event in rest], unanswered=part
                        )
                        return
                    if not is_retryable_exception(outcome):
                        error = UnexpectedError(
                            f"{type(outcome).__name__}: {outcome}; {len(part)} events dropped",
                            event_ids=_ids(part),
                            payloads=_payloads(part),
                        )
                        error.__cause__ = outcome
                        hooks.failed(part, error)
                        break
                    reason = type(outcome).__name__
                    last_status, last_exception = None, outcome
                else:  # pragma: no cover - a driver bug
                    raise TypeError(f"unexpected outcome for Send: {outcome!r}")

                retries += 1
                last = reason
                delay = self.policy.delay(retries, retry_after, self.rng)
                now = hooks.monotonic()
                if give_up_at is not None and now + delay >= give_up_at:
                    self._time_limit(part, parts, retries, last, last_status, last_exception)
                    return
                max_retries = self.policy.max_retries
                if (max_retries is not None and retries > max_retries) or (
                    now + delay - started > self.policy.max_retry_time
                ):
                    hooks.failed(
                        part,
                        RetriesExhausted(
                            f"gave up after {retries} attempts over {now - started:.1f} s "
                            f"(last: {reason}); {len(part)} events dropped",
                            event_ids=_ids(part),
                            payloads=_payloads(part),
                            attempts=retries,
                            last_status=last_status,
                            last_exception=last_exception,
                        ),
                    )
                    break
                abort_at = hooks.abort_at()
                if abort_at is not None and now + delay > abort_at:
                    self._shutdown(part, parts)
                    return
                hooks.retrying(part, delay, reason)
                if not (yield Sleep(delay)):
                    self._shutdown(part, parts)
                    return

    def _time_limit(
        self,
        part: list[QueuedEvent],
        parts: deque[list[QueuedEvent]],
        attempts: int,
        last: str,
        last_status: int | None,
        last_exception: BaseException | None,
    ) -> None:
        left = part + [event for rest in parts for event in rest]
        self.hooks.failed(
            left,
            RetriesExhausted(
                f"gave up after {attempts} attempts at the sync_mode time limit "
                f"(shutdown_timeout; last: {last}); {len(left)} events dropped",
                event_ids=_ids(left),
                payloads=_payloads(left),
                attempts=attempts,
                last_status=last_status,
                last_exception=last_exception,
            ),
        )

    def _shutdown(self, part: list[QueuedEvent], parts: deque[list[QueuedEvent]]) -> None:
        self.hooks.abandoned(part + [event for rest in parts for event in rest])
