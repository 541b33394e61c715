"""Where every tracked event is, and what became of it: the delivery's bookkeeping.

The ``Ledger`` owns the queue, the batches in flight, the sequence numbers
``flush()`` waits on, the counters behind ``stats()``, and the client's
lifecycle state. The delivery steps report to it (it is their
``DeliveryHooks``), so none of that is on the public clients. Every method
named ``…_locked`` expects the caller to hold ``lock``, the client's lock
(the sync client's condition variable shares it).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from labs_analytics_client._batching import ENVELOPE_BYTES, BatchLimits, EventQueue, QueuedEvent
from labs_analytics_client._events import format_unix_ns
from labs_analytics_client._exceptions import DeliveryError, ShutdownTimeout, UnexpectedError
from labs_analytics_client._options import ClientStats

logger = logging.getLogger("labs_analytics_client")

_FAILURE_REASONS: dict[str, str] = {
    "RequestRejected": "rejected",
    "RetriesExhausted": "retries_exhausted",
    "ShutdownTimeout": "shutdown_timeout",
    "UnexpectedError": "unexpected_error",
}


class ClientState(enum.IntEnum):
    """A client's life, in order; it only moves forward."""

    OPEN = 0  # accepting events
    CLOSING = 1  # close() began: no new event; the queue is delivered until the deadline
    # The deadline came, or a worker handed a batch back at it: no new batch is
    # taken, since the close reports what is left, once.
    GIVING_UP = 2
    REPORTED = 3  # the close's one report is made: what comes later is reported alone


@dataclass(eq=False, slots=True)
class Flight:
    """A batch taken from the queue by one sender, until that sender is done with it."""

    events: list[QueuedEvent]
    # Events already counted as sent or failed: the batch stays in flight until
    # its sender is done with it, and stats() must not count an event both ways.
    settled: int = 0
    # The async client: cancelled while awaiting an answer (the server may have it).
    cancelled_unanswered: bool = False

    def holds(self, event: QueuedEvent) -> bool:
        return any(member is event for member in self.events)


@dataclass(frozen=True, slots=True)
class Wait:
    """No batch is ready: wait this long (None: until woken) and ask again."""

    seconds: float | None


class Ledger:
    """The queue, the flights and the counters of one client (in one process)."""

    def __init__(
        self,
        *,
        lock: threading.Lock,
        batch: BatchLimits,
        max_queue_size: int,
        max_queue_bytes: int,
        wake_locked: Callable[[], None],
        report: Callable[[DeliveryError], None],
    ) -> None:
        self.lock = lock
        self.batch = batch
        self.queue = EventQueue(max_events=max_queue_size, max_bytes=max_queue_bytes)
        # Batches being sent, up to max_in_flight; they may finish in any order.
        self.flights: list[Flight] = []
        self.next_seq = 0  # last sequence number given
        self.done_seq = 0  # every event up to this one is delivered or given up
        self.flush_upto = 0  # a flush asked for everything up to this one, now
        self.state = ClientState.OPEN
        self.deadline: float | None = None  # the close's (monotonic), once it has one
        self.unanswered = 0  # events whose request was unanswered at the close deadline
        self.sent = 0
        self.discarded = 0
        self.retried = 0
        self.batches = 0
        self.dropped: Counter[str] = Counter()
        self.failed_by_reason: Counter[str] = Counter()
        self._wake_locked = wake_locked
        self._report = report

    @property
    def closed(self) -> bool:
        return self.state >= ClientState.CLOSING

    def stats(self) -> ClientStats:
        with self.lock:
            return ClientStats(
                queued=len(self.queue),
                in_flight=self.unsettled_locked(),
                sent=self.sent,
                dropped=sum(self.dropped.values()),
                failed=sum(self.failed_by_reason.values()),
                retried=self.retried,
                batches=self.batches,
                dropped_by_reason=dict(self.dropped),
                failed_by_reason=dict(self.failed_by_reason),
                discarded=self.discarded,
            )

    # --- the lifecycle

    def begin_close_locked(self, deadline: float | None) -> None:
        self.state = max(self.state, ClientState.CLOSING)
        if deadline is not None:
            self.deadline = deadline if self.deadline is None else min(self.deadline, deadline)

    def past_deadline_locked(self) -> bool:
        """Whether a worker should stop taking batches: the close deadline came."""
        if self.state >= ClientState.GIVING_UP:
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline

    # --- DeliveryHooks: what the delivery steps report

    def monotonic(self) -> float:
        return time.monotonic()

    def sent_at(self) -> str:
        return format_unix_ns(time.time_ns())

    def abort_at(self) -> float | None:
        return self.deadline

    def delivered(self, events: Sequence[QueuedEvent]) -> None:
        with self.lock:
            self.sent += len(events)
            self.batches += 1
            self._settle_locked(events)

    def retrying(self, events: Sequence[QueuedEvent], delay: float, reason: str) -> None:
        with self.lock:
            self.retried += 1
        logger.info(
            "analytics.retrying events=%d delay_s=%.3f reason=%s", len(events), delay, reason
        )

    def failed(self, events: Sequence[QueuedEvent], error: DeliveryError) -> None:
        reason = _FAILURE_REASONS.get(type(error).__name__, "unexpected_error")
        with self.lock:
            self.failed_by_reason[reason] += len(events)
            self._settle_locked(events)
        logger.warning("analytics.delivery_failed %s", error.message)
        self._report(error)

    def abandoned(
        self, events: Sequence[QueuedEvent], unanswered: Sequence[QueuedEvent] = ()
    ) -> None:
        with self.lock:
            self.state = max(self.state, ClientState.GIVING_UP)
            # Sent, unanswered at the deadline: in flight for good (not failed:
            # the server may have stored them), in the close report as such.
            self._settle_locked(unanswered)
            self.unanswered += len(unanswered)
            if not events:
                return
            if self.state < ClientState.REPORTED:
                # Back to the front of the queue, so the close reports them
                # with the rest, in one warning and one on_error call.
                self._settle_locked(events)
                self.queue.push_front(events)
                self._wake_locked()
                return
        # The close has already reported: these come too late for its report.
        self.failed(events, _shutdown_timeout(events))

    def crashed(self, batch: Sequence[QueuedEvent], exc: Exception) -> None:
        """A bug while delivering ``batch``: report it as failed, keep the worker."""
        logger.error("analytics.delivery_crashed events=%d", len(batch), exc_info=exc)
        error = UnexpectedError(
            f"{type(exc).__name__}: {exc}; {len(batch)} events dropped",
            event_ids=[event.event_id for event in batch],
            payloads=[event.data for event in batch],
        )
        error.__cause__ = exc
        self.failed(batch, error)

    # --- the queue and the flights

    def enqueue_locked(self, event_id: str, data: bytes) -> bool:
        """Queue an event; False if the queue is full (the newest event is dropped)."""
        seq = self.next_seq + 1
        if not self.queue.put(QueuedEvent(seq, event_id, data, time.monotonic())):
            return False
        self.next_seq = seq
        return True

    def worth_waking_locked(self) -> bool:
        """Whether the event just queued is a first one, or fills a batch."""
        length = len(self.queue)
        return (
            length == 1
            or length >= self.batch.max_events
            or self.queue.bytes + ENVELOPE_BYTES >= self.batch.max_bytes
        )

    def next_batch_locked(self) -> Flight | Wait | None:
        """What a worker does next: send this batch, wait (how long), or stop (None)."""
        wait = self.queue.seconds_until_ready(
            now=time.monotonic(), batch=self.batch, flush_upto=self.flush_upto, closing=self.closed
        )
        if self.closed and self.past_deadline_locked():
            return None  # what is left is the close's to report, once
        if wait == 0:
            return self.take_batch_locked()
        if wait is None and self.closed:
            return None  # closing and nothing left to send
        return Wait(wait)

    def take_batch_locked(self) -> Flight | None:
        """The next batch, now in flight; None if the queue is empty."""
        events = self.queue.take(self.batch)
        if not events:
            return None
        flight = Flight(events)
        self.flights.append(flight)
        return flight

    def batch_done_locked(self, flight: Flight) -> None:
        if flight in self.flights:
            self.flights.remove(flight)
        self._update_done_locked()

    def give_back_flights_locked(self, flights: Sequence[Flight]) -> None:
        """Batches whose sender is gone go back to the front of the queue, to be sent again."""
        for flight in flights:
            if flight in self.flights:
                self.flights.remove(flight)
                self.queue.push_front(flight.events)
        self._update_done_locked()

    def keep_unanswered_locked(self, flight: Flight) -> None:
        """A cancelled sender's request had no answer: in flight for good, not resent."""
        self.unanswered += max(0, len(flight.events) - flight.settled)
        flight.settled = len(flight.events)
        self.batch_done_locked(flight)

    def unsettled_locked(self) -> int:
        """Events sent or being sent whose outcome is not recorded (or never will be)."""
        unsettled = sum(max(0, len(flight.events) - flight.settled) for flight in self.flights)
        return unsettled + self.unanswered

    def in_flight_events(self) -> int:
        return sum(len(flight.events) for flight in self.flights)

    def pending(self) -> int:
        return len(self.queue) + self.in_flight_events()

    def _settle_locked(self, events: Sequence[QueuedEvent]) -> None:
        if not events:
            return
        first = events[0]  # every part a delivery reports is of one batch
        for flight in self.flights:
            if flight.holds(first):
                flight.settled += len(events)
                return

    def _update_done_locked(self) -> None:
        """``done_seq``: below the oldest event still queued or in flight.

        Batches finish out of order, so a finished batch says nothing of the
        ones before it; the queue keeps its oldest event first.
        """
        oldest = [flight.events[0].seq for flight in self.flights if flight.events]
        if self.queue.items:
            oldest.append(self.queue.items[0].seq)
        done = min(oldest) - 1 if oldest else self.next_seq
        self.done_seq = max(self.done_seq, done)

    # --- the close's one report

    def abandon_queue_locked(self, *, worker_alive: bool) -> list[QueuedEvent]:
        """At the close deadline: what is still queued is given up (reported after unlock).

        The batches of workers that are gone are given up too; live workers'
        batches are theirs to finish (or to leave unanswered, in flight).
        """
        if not worker_alive:
            self.give_back_flights_locked(
                [flight for flight in self.flights if len(flight.events) > flight.settled]
            )
        left = self.queue.clear()
        self.state = ClientState.REPORTED
        if left:
            self.done_seq = max(self.done_seq, max(event.seq for event in left))
            self.failed_by_reason["shutdown_timeout"] += len(left)
        return left

    def report_close(self, left: Sequence[QueuedEvent], in_flight: int = 0) -> None:
        """A close's one report: one warning, and one ``on_error`` call for what was given up.

        Events sent and not answered are counted in flight, not failed: the
        server may well have stored them.
        """
        if not left and not in_flight:
            return
        logger.warning(
            "analytics.close_timeout not_sent=%d in_flight=%d: %d events were still pending "
            "at the close deadline and are given up (on_error, stats().failed); %d were sent "
            "and not answered, so may or may not be stored (stats().in_flight)",
            len(left),
            in_flight,
            len(left),
            in_flight,
        )
        if left:
            self._report(_shutdown_timeout(left))


def _shutdown_timeout(events: Sequence[QueuedEvent]) -> ShutdownTimeout:
    return ShutdownTimeout(
        f"{len(events)} events were still pending at the close deadline",
        event_ids=[event.event_id for event in events],
        payloads=[event.data for event in events],
    )
