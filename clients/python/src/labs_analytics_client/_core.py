"""What both clients share: options, ``track()``, the queue, stats, callbacks.

``AnalyticsClient`` (a thread) and ``AsyncAnalyticsClient`` (an asyncio task)
differ only in how their worker waits and does I/O; everything an event goes
through before and after that is here, once. The process hooks (exit, fork)
are in ``_process_hooks``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from labs_analytics_client._batching import ENVELOPE_BYTES, BatchLimits, EventQueue, QueuedEvent
from labs_analytics_client._delivery import Delivery, Reply, Send, drive
from labs_analytics_client._events import (
    DropReason,
    EncodedEvent,
    EventRejected,
    encode_event,
    format_unix_ns,
    uuid7,
)
from labs_analytics_client._exceptions import (
    DeliveryError,
    InvalidEvent,
    ShutdownTimeout,
    UnexpectedError,
)
from labs_analytics_client._instrument import Timed
from labs_analytics_client._options import ClientOptions, ClientStats, DroppedEvent
from labs_analytics_client._process_hooks import register
from labs_analytics_client._retry import RetryPolicy
from labs_analytics_client._scope import Scope, apply_scope, current_scope
from labs_analytics_client._version import USER_AGENT

logger = logging.getLogger("labs_analytics_client")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Drop reasons of before_send (beside DropReason's): it returned None, or it raised.
BEFORE_SEND = "before_send"
BEFORE_SEND_ERROR = "before_send_error"
# The once-only warning of lenient serialization (beside the drop reasons in _warned).
REPR_FALLBACK = "converted:repr"
_FAILURE_REASONS: dict[str, str] = {
    "RequestRejected": "rejected",
    "RetriesExhausted": "retries_exhausted",
    "ShutdownTimeout": "shutdown_timeout",
    "UnexpectedError": "unexpected_error",
}


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


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, not {value!r}")
    return value


class BaseClient:
    """The shared machinery; use ``AnalyticsClient`` or ``AsyncAnalyticsClient``."""

    def __init__(self, api_key: str | None, options: ClientOptions) -> None:
        self._enabled = bool(options.get("enabled", True))
        key = api_key if api_key is not None else os.environ.get("LABS_ANALYTICS_API_KEY")
        self._send_events = bool(options.get("send", True))
        if self._enabled and self._send_events and not key:
            raise ValueError(
                "an API key is required: pass api_key=… or set LABS_ANALYTICS_API_KEY "
                "(or enabled=False to turn tracking off)"
            )
        self._api_key = key or ""
        base_url = (
            options.get("base_url") or os.environ.get("LABS_ANALYTICS_URL") or DEFAULT_BASE_URL
        )
        self.base_url = base_url.rstrip("/")
        self._batch = BatchLimits(
            max_events=options.get("batch_size", 100),
            max_bytes=options.get("max_batch_bytes", 500_000),
            interval=options.get("flush_interval", 1.0),
        )
        self._max_queue_size = int(
            _positive("max_queue_size", options.get("max_queue_size", 50_000))
        )
        self._max_queue_bytes = int(
            _positive("max_queue_bytes", options.get("max_queue_bytes", 64 * 1024 * 1024))
        )
        self._timeout = _positive("timeout", options.get("timeout", 10.0))
        self._shutdown_timeout = _positive("shutdown_timeout", options.get("shutdown_timeout", 5.0))
        max_in_flight = options.get("max_in_flight", 4)
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
            raise ValueError(f"max_in_flight must be an integer, not {max_in_flight!r}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, not {max_in_flight!r}")
        self._max_in_flight = max_in_flight
        self._policy = RetryPolicy(
            max_retries=options.get("max_retries"),
            max_retry_time=options.get("max_retry_time", 120.0),
            backoff_initial=options.get("retry_backoff_initial", 0.2),
            backoff_max=options.get("retry_backoff_max", 10.0),
            retry_after_max=options.get("retry_after_max", 60.0),
        )
        self._gzip = bool(options.get("gzip", True))
        self._on_error = options.get("on_error")
        self._on_drop = options.get("on_drop")
        self._sync_mode = bool(options.get("sync_mode", False))
        self._strict = bool(options.get("strict", False))
        self._debug = bool(options.get("debug", False))
        self._before_send = options.get("before_send")
        super_properties = options.get("super_properties")
        self._super_properties = dict(super_properties) if super_properties else None
        context = options.get("context")
        self._default_context: dict[str, Any] | None = dict(context) if context else None
        self._headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **({"Content-Encoding": "gzip"} if self._gzip else {}),
            **dict(options.get("headers") or {}),
        }
        self._delivery = Delivery(
            hooks=self, policy=self._policy, timeout=self._timeout, gzip=self._gzip
        )
        self._closed = False
        self._init_state()
        register(self)

    def _init_state(self) -> None:
        """Everything a forked child must not inherit."""
        self._lock = threading.Lock()
        self._queue = EventQueue(max_events=self._max_queue_size, max_bytes=self._max_queue_bytes)
        # Batches being sent, up to max_in_flight; they may finish in any order.
        self._flights: list[Flight] = []
        self._next_seq = 0  # last sequence number given
        self._done_seq = 0  # every event up to this one is delivered or given up
        self._flush_upto = 0  # a flush asked for everything up to this one, now
        self._closing = False
        self._abort_at: float | None = None
        # The close deadline handed a batch back, or came: take no new batch,
        # since the close reports what is left once (_abandon_queue_locked).
        self._gave_back = False
        self._summarized = False  # the close's one report is made
        self._unanswered = 0  # events whose request was unanswered at the close deadline
        self._worker_running = False
        self._sent = 0
        self._discarded = 0
        self._retried = 0
        self._batches = 0
        self._dropped: Counter[str] = Counter()
        self._failed: Counter[str] = Counter()
        self._warned: set[str] = set()

    # --- the public surface shared by both clients

    @property
    def enabled(self) -> bool:
        return self._enabled

    def track(
        self,
        name: str,
        user: str | None = None,
        properties: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        event_id: Any = None,
        context: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Queue one event; return its id at once, or None if it was dropped.

        Never blocks on the network and never raises for network or server
        trouble. The event is checked and serialized now: an event the server
        would refuse (bad name, properties over 32 KiB, a value JSON cannot
        carry…) is dropped here, counted by reason and passed to ``on_drop``
        (raised as ``InvalidEvent`` instead with ``strict=True``). The id is a
        client-made UUIDv7 and the timestamp is set now, so a retry is stored
        once. ``timestamp`` may be a datetime (naive = local time), an RFC 3339 string
        or unix seconds; ``event_id`` a UUID or its string.
        """
        if not self._enabled:
            return None
        event = self._prepare(name, user, properties, timestamp, event_id, context)
        if event is None:
            return None
        if event.converted:
            self._warn_converted(name, event.converted)
        if len(event.data) + ENVELOPE_BYTES > self._batch.max_bytes:
            self._drop(
                DropReason.TOO_LARGE,
                name,
                event.event_id,
                f"event of {len(event.data)} bytes exceeds max_batch_bytes",
                invalid=True,
            )
            return None
        if not self._send_events and not self._closed:
            with self._lock:
                self._discarded += 1
            return event.event_id
        if self._sync_mode and not self._closed and self._send_inline(event.event_id, event.data):
            return event.event_id
        now = time.monotonic()
        with self._lock:
            if self._closed:
                reason: DropReason | None = DropReason.CLOSED
            else:
                seq = self._next_seq + 1
                queue = self._queue
                length = queue.put(QueuedEvent(seq, event.event_id, event.data, now))
                if length:
                    self._next_seq = seq
                    reason = None
                    # Wake the worker only when it has something new to decide:
                    # a first event (it may be waiting with no deadline), or a
                    # batch that is full; otherwise its timed wait will do.
                    batch = self._batch
                    if (
                        length == 1
                        or length >= batch.max_events
                        or queue.bytes + ENVELOPE_BYTES >= batch.max_bytes
                    ):
                        self._wake_locked()
                else:
                    reason = DropReason.QUEUE_FULL
        if reason is not None:
            message = (
                "the client is closed"
                if reason is DropReason.CLOSED
                else f"the queue is full ({self._max_queue_size} events or "
                f"{self._max_queue_bytes} bytes); the newest event is dropped"
            )
            self._drop(reason, name, event.event_id, message, invalid=False)
            return None
        if not self._worker_running:
            self._start_worker()
        return event.event_id

    def _prepare(
        self,
        name: object,
        user: object,
        properties: object,
        timestamp: object,
        event_id: object,
        context: object,
    ) -> EncodedEvent | None:
        """The event with the scope, super_properties and before_send applied; None: dropped."""
        default_context = self._default_context
        try:
            scoped = current_scope()
            if scoped is not None or self._super_properties:
                user, properties = apply_scope(scoped, self._super_properties, user, properties)
            if self._before_send is None:
                return encode_event(
                    name,
                    user=user,
                    properties=properties,
                    timestamp=timestamp,
                    event_id=event_id,
                    context=context,
                    default_context=default_context,
                    lenient=not self._strict,
                )
            if default_context and (context is None or isinstance(context, Mapping)):
                context = {**default_context, **(context or {})}
            event: dict[str, Any] = {
                "name": name,
                "user": user,
                "timestamp": dt.datetime.now(dt.UTC) if timestamp is None else timestamp,
                "properties": dict(properties) if isinstance(properties, Mapping) else properties,
                "context": context,
                "event_id": str(uuid7()) if event_id is None else event_id,
            }
        except EventRejected as exc:
            self._drop(exc.reason, name, None, exc.message, invalid=True)
            return None
        except Exception as exc:  # e.g. a Mapping whose items() raises: still never raise
            self._drop(DropReason.NOT_SERIALIZABLE, name, None, repr(exc), invalid=True)
            return None
        eid = str(event["event_id"])
        try:
            shaped = self._before_send(event)
            if shaped is not None and not isinstance(shaped, Mapping):
                raise TypeError(f"before_send must return a dict or None, not {shaped!r}")
        except Exception as exc:
            self._drop(BEFORE_SEND_ERROR, name, eid, f"before_send raised {exc!r}", invalid=True)
            return None
        if shaped is None:
            self._drop(BEFORE_SEND, name, eid, "before_send returned None", invalid=False)
            return None
        name = shaped.get("name")
        try:
            return encode_event(
                name,
                user=shaped.get("user"),
                properties=shaped.get("properties"),
                timestamp=shaped.get("timestamp"),
                event_id=shaped.get("event_id"),
                context=shaped.get("context"),
                lenient=not self._strict,
            )
        except EventRejected as exc:
            self._drop(exc.reason, name, None, exc.message, invalid=True)
            return None
        except Exception as exc:
            self._drop(DropReason.NOT_SERIALIZABLE, name, None, repr(exc), invalid=True)
            return None

    def scope(self, user: str | None = None, properties: Mapping[str, Any] | None = None) -> Scope:
        """``with client.scope(user=…, properties={…}):``: for every event in the block.

        The same as the module's ``scope()``: a ``contextvars`` scope that every
        client sees (asyncio tasks inherit it; for a thread pool, submit
        ``contextvars.copy_context().run``). ``track()``'s arguments win over
        it, and it wins over ``super_properties``.
        """
        return Scope(user, properties)

    def replay(self, events: Iterable[Mapping[str, Any]]) -> list[str | None]:
        """Track again events a ``DeliveryError`` gave back (``error.events``).

        Each keeps its ``event_id`` and ``timestamp``, so the server stores it
        at most once, even if an earlier attempt did arrive; one without them
        is dropped (``invalid_event_id``, ``invalid_timestamp``): replaying it
        twice would store it twice. Otherwise an event goes through ``track()``
        (checks, scope, ``before_send``; its own fields win). Returns the ids,
        None for each event dropped.
        """
        ids: list[str | None] = []
        for event in events:
            name: Any = event.get("name")
            if event.get("event_id") is None:
                self._drop(
                    DropReason.INVALID_EVENT_ID,
                    name,
                    None,
                    "a replayed event must keep its event_id",
                    invalid=True,
                )
                ids.append(None)
            elif event.get("timestamp") is None:
                self._drop(
                    DropReason.INVALID_TIMESTAMP,
                    name,
                    str(event["event_id"]),
                    "a replayed event must keep its timestamp",
                    invalid=True,
                )
                ids.append(None)
            else:
                ids.append(
                    self.track(
                        name,
                        user=event.get("user"),
                        properties=event.get("properties"),
                        timestamp=event["timestamp"],
                        event_id=event["event_id"],
                        context=event.get("context"),
                    )
                )
        return ids

    def timed(self, name: str, /, *, user: str | None = None, **properties: Any) -> Timed:
        """Time a call or a block: a decorator (sync or async) or a (async) context manager.

        Tracks one event per call with ``duration_ms``, ``success`` and, on
        failure, ``error_type`` and ``error_message``; the exception propagates.
        """
        return Timed(self, name, user, properties)

    def stats(self) -> ClientStats:
        with self._lock:
            return ClientStats(
                queued=len(self._queue),
                in_flight=self._unsettled_locked(),
                sent=self._sent,
                dropped=sum(self._dropped.values()),
                failed=sum(self._failed.values()),
                retried=self._retried,
                batches=self._batches,
                dropped_by_reason=dict(self._dropped),
                failed_by_reason=dict(self._failed),
                discarded=self._discarded,
            )

    # --- what the subclasses provide

    def _send_inline(self, event_id: str, data: bytes) -> bool:
        """sync_mode: deliver now in the caller's thread; False if this client cannot."""
        return False

    def _wake_locked(self) -> None:
        raise NotImplementedError

    def _start_worker(self) -> None:
        raise NotImplementedError

    def _exit_begin(self, deadline: float | None) -> None:
        raise NotImplementedError

    def _exit_finish(self, deadline: float | None) -> int:
        raise NotImplementedError

    def _after_fork_in_child(self) -> None:
        self._init_state()

    # --- drops, failures and callbacks

    def _drop(
        self, reason: str, name: object, event_id: str | None, message: str, *, invalid: bool
    ) -> None:
        reason = str(reason)  # a DropReason, or one of before_send's
        with self._lock:
            self._dropped[reason] += 1
            # before_send dropping an event is its job, not trouble: no warning.
            first = reason not in self._warned and reason != BEFORE_SEND
            self._warned.add(reason)
        if first:
            logger.warning(
                "analytics.event_dropped reason=%s name=%r: %s (logged once per reason; "
                "see stats().dropped_by_reason)",
                reason,
                name,
                message,
            )
        if self._on_drop is not None:
            try:
                self._on_drop(DroppedEvent(reason, name, event_id, message))
            except Exception:
                logger.exception("analytics.on_drop_failed")
        if invalid and self._strict:
            raise InvalidEvent(reason, message)

    def _warn_converted(self, name: object, converted: Sequence[tuple[str, str]]) -> None:
        """Lenient mode sent a value as its repr(): say where, once per client (event kept)."""
        with self._lock:
            first = REPR_FALLBACK not in self._warned
            self._warned.add(REPR_FALLBACK)
        if first:
            path, type_name = converted[0]
            logger.warning(
                "analytics.value_converted reason=repr path=%s type=%s name=%r: JSON cannot "
                "carry it, so it is sent as its repr() (logged once; strict=True refuses it)",
                path,
                type_name,
                name,
            )

    def _log_exchange(self, action: Send, started: float, outcome: Reply | Exception) -> None:
        """debug=True: one line per request and its answer (never the headers: the key)."""
        if not self._debug:
            return
        ms = (time.monotonic() - started) * 1000
        if isinstance(outcome, Exception):
            logger.debug(
                "analytics.request method=POST url=%s/v1/events events=%d bytes=%d "
                "error=%s ms=%.1f",
                self.base_url,
                action.events,
                len(action.body),
                type(outcome).__name__,
                ms,
            )
        else:
            answer = outcome.content
            if self._api_key:  # a proxy could echo the request: redact before cutting
                answer = answer.replace(self._api_key.encode(), b"[key]")
            logger.debug(
                "analytics.request method=POST url=%s/v1/events events=%d bytes=%d "
                "status=%d ms=%.1f answer=%r",
                self.base_url,
                action.events,
                len(action.body),
                outcome.status,
                ms,
                answer[:500],
            )

    def _report(self, error: DeliveryError) -> None:
        logger.warning("analytics.delivery_failed %s", error.message)
        self._call_on_error(error)

    def _call_on_error(self, error: DeliveryError) -> None:
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:
                logger.exception("analytics.on_error_failed")

    # --- DeliveryHooks (called by the delivery steps)

    def monotonic(self) -> float:
        return time.monotonic()

    def sent_at(self) -> str:
        return format_unix_ns(time.time_ns())

    def abort_at(self) -> float | None:
        return self._abort_at

    def delivered(self, events: Sequence[QueuedEvent]) -> None:
        with self._lock:
            self._sent += len(events)
            self._batches += 1
            self._settle_locked(events)

    def retrying(self, events: Sequence[QueuedEvent], delay: float, reason: str) -> None:
        with self._lock:
            self._retried += 1
        logger.info(
            "analytics.retrying events=%d delay_s=%.3f reason=%s", len(events), delay, reason
        )

    def failed(self, events: Sequence[QueuedEvent], error: DeliveryError) -> None:
        with self._lock:
            self._failed[_FAILURE_REASONS.get(type(error).__name__, "unexpected_error")] += len(
                events
            )
            self._settle_locked(events)
        self._report(error)

    def abandoned(
        self, events: Sequence[QueuedEvent], unanswered: Sequence[QueuedEvent] = ()
    ) -> None:
        with self._lock:
            self._gave_back = True
            # Sent, unanswered at the deadline: in flight for good (not failed:
            # the server may have stored them), in the close report as such.
            self._settle_locked(unanswered)
            self._unanswered += len(unanswered)
            if not events:
                return
            if not self._summarized:
                # Back to the front of the queue, so the close reports them
                # with the rest, in one warning and one on_error call.
                self._settle_locked(events)
                self._queue.push_front(events)
                self._wake_locked()
                return
        # The close has already reported: these come too late for its report.
        self.failed(
            events,
            ShutdownTimeout(
                f"{len(events)} events were still pending at the close deadline",
                event_ids=[event.event_id for event in events],
                payloads=[event.data for event in events],
            ),
        )

    def _past_deadline_locked(self) -> bool:
        """Whether a worker should stop taking batches: the close deadline came."""
        abort_at = self._abort_at
        return self._gave_back or (abort_at is not None and time.monotonic() >= abort_at)

    # --- helpers for the subclasses

    def _crashed(self, batch: Sequence[QueuedEvent], exc: Exception) -> None:
        logger.error("analytics.delivery_crashed events=%d", len(batch), exc_info=exc)
        error = UnexpectedError(
            f"{type(exc).__name__}: {exc}; {len(batch)} events dropped",
            event_ids=[event.event_id for event in batch],
            payloads=[event.data for event in batch],
        )
        error.__cause__ = exc
        self.failed(batch, error)

    def _settle_locked(self, events: Sequence[QueuedEvent]) -> None:
        if not events:
            return
        first = events[0]  # every part a delivery reports is of one batch
        for flight in self._flights:
            if flight.holds(first):
                flight.settled += len(events)
                return

    def _unsettled_locked(self) -> int:
        """Events sent or being sent whose outcome is not recorded (or never will be)."""
        unsettled = sum(max(0, len(flight.events) - flight.settled) for flight in self._flights)
        return unsettled + self._unanswered

    def _in_flight_events(self) -> int:
        return sum(len(flight.events) for flight in self._flights)

    def _take_batch_locked(self) -> Flight | None:
        """The next batch, now in flight; None if the queue is empty."""
        events = self._queue.take(self._batch)
        if not events:
            return None
        flight = Flight(events)
        self._flights.append(flight)
        return flight

    def _batch_done_locked(self, flight: Flight) -> None:
        if flight in self._flights:
            self._flights.remove(flight)
        self._update_done_locked()

    def _give_back_flights_locked(self, flights: Sequence[Flight]) -> None:
        """Batches whose sender is gone go back to the front of the queue, to be sent again."""
        for flight in flights:
            if flight in self._flights:
                self._flights.remove(flight)
                self._queue.push_front(flight.events)
        self._update_done_locked()

    def _update_done_locked(self) -> None:
        """``_done_seq``: below the oldest event still queued or in flight.

        Batches finish out of order, so a finished batch says nothing of the
        ones before it; the queue keeps its oldest event first.
        """
        oldest = [flight.events[0].seq for flight in self._flights if flight.events]
        if self._queue.items:
            oldest.append(self._queue.items[0].seq)
        done = min(oldest) - 1 if oldest else self._next_seq
        self._done_seq = max(self._done_seq, done)

    def _abandon_queue_locked(self, *, worker_alive: bool) -> list[QueuedEvent]:
        """At the close deadline: what is still queued is given up (reported after unlock).

        The batches of workers that are gone are given up too; live workers'
        batches are theirs to finish (or to leave unanswered, in flight).
        """
        if not worker_alive:
            self._give_back_flights_locked(
                [flight for flight in self._flights if len(flight.events) > flight.settled]
            )
        left = self._queue.clear()
        self._summarized = True
        if left:
            self._done_seq = max(self._done_seq, max(event.seq for event in left))
            self._failed["shutdown_timeout"] += len(left)
        return left

    def _report_abandoned(self, left: Sequence[QueuedEvent], in_flight: int = 0) -> None:
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
            self._call_on_error(
                ShutdownTimeout(
                    f"{len(left)} events were still pending at the close deadline",
                    event_ids=[event.event_id for event in left],
                    payloads=[event.data for event in left],
                )
            )

    def _deadline(self, timeout: float | None) -> float | None:
        """None: the client's shutdown_timeout; math.inf: no limit."""
        if timeout is None:
            timeout = self._shutdown_timeout
        return None if math.isinf(timeout) else time.monotonic() + max(0.0, timeout)

    def _sync_http(self, transport: httpx.BaseTransport | None = None) -> httpx.Client:
        # trust_env (httpx's default): HTTP(S)_PROXY, NO_PROXY and SSL_CERT_FILE are honoured.
        return httpx.Client(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=transport,
            trust_env=True,
        )

    def _drain_blocking(self, http: httpx.Client) -> None:
        """Deliver the queue, batch by batch, from the calling thread (exit paths)."""
        while True:
            with self._lock:
                if self._past_deadline_locked():
                    return
                # Workers that died with their batches: resend those first.
                self._give_back_flights_locked(list(self._flights))
                flight = self._take_batch_locked()
            if flight is None:
                return
            try:
                self._deliver_blocking(flight.events, http)
            except Exception as exc:
                self._crashed(flight.events, exc)
            with self._lock:
                self._batch_done_locked(flight)

    def _deliver_blocking(
        self,
        events: Sequence[QueuedEvent],
        http: httpx.Client,
        give_up_at: float | None = None,
    ) -> None:
        """Deliver with blocking I/O in the calling thread (sync mode, exit fallbacks)."""

        def send(action: Send) -> Reply | Exception:
            started = time.monotonic()
            try:
                response = http.post("/v1/events", content=action.body, timeout=action.timeout)
            except Exception as exc:
                self._log_exchange(action, started, exc)
                return exc
            reply = Reply(
                response.status_code, response.headers.get("retry-after"), response.content
            )
            self._log_exchange(action, started, reply)
            return reply

        def sleep(seconds: float) -> bool:
            time.sleep(seconds)  # the steps never sleep past the close deadline
            return True

        drive(self._delivery.steps(events, give_up_at=give_up_at), send, sleep)
