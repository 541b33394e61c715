"""What both clients share: ``track()`` and its checks, scopes, drops, the exit drain.

``AnalyticsClient`` (threads) and ``AsyncAnalyticsClient`` (asyncio tasks)
differ only in how their workers wait and do I/O; everything an event goes
through before and after that is here, once. Where each event is and what
became of it is the ``Ledger``'s (``_ledger``); one batch's delivery is
``_delivery``'s; the process hooks (exit, fork) are in ``_process_hooks``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx

from labs_analytics_client import _exchange
from labs_analytics_client._batching import ENVELOPE_BYTES, QueuedEvent
from labs_analytics_client._config import Config
from labs_analytics_client._delivery import Delivery, Reply, Send, drive
from labs_analytics_client._events import (
    DropReason,
)
from labs_analytics_client._exceptions import DeliveryError, InvalidEvent
from labs_analytics_client._instrument import Timed
from labs_analytics_client._ledger import Ledger
from labs_analytics_client._messages import EVENT_NAMES, message_context
from labs_analytics_client._options import ClientOptions, ClientStats, DroppedEvent
from labs_analytics_client._prepare import BEFORE_SEND, Refused, prepare
from labs_analytics_client._process_hooks import register
from labs_analytics_client._scope import Scope

logger = logging.getLogger("labs_analytics_client")

# The once-only warning of lenient serialization (beside the drop reasons in _warned).
REPR_FALLBACK = "converted:repr"


class BaseClient:
    """The shared machinery; use ``AnalyticsClient`` or ``AsyncAnalyticsClient``."""

    def __init__(self, api_key: str | None, options: ClientOptions) -> None:
        self._config = self._adjust(Config.resolve(api_key, options))
        self._init_state()
        register(self)

    def _adjust(self, config: Config) -> Config:
        """A subclass's say on the options (the async client's sync_mode)."""
        return config

    def _init_state(self) -> None:
        """Everything a forked child must not inherit."""
        self._lock = threading.Lock()
        self._ledger = Ledger(
            lock=self._lock,
            batch=self._config.batch,
            max_queue_size=self._config.max_queue_size,
            max_queue_bytes=self._config.max_queue_bytes,
            wake_locked=self._wake_locked,
            report=self._call_on_error,
        )
        config = self._config
        self._delivery = Delivery(
            hooks=self._ledger, policy=config.policy, timeout=config.timeout, gzip=config.gzip
        )
        self._worker_running = False
        self._warned: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    @property
    def base_url(self) -> str:
        return self._config.base_url

    @property
    def is_closed(self) -> bool:
        """Whether ``close()`` (or ``aclose()``, or the exit hook) has begun."""
        return self._ledger.closed

    # --- the public surface shared by both clients

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
        if not self._config.enabled:
            return None
        try:
            event = prepare(self._config, name, user, properties, timestamp, event_id, context)
        except Refused as refused:
            self._drop(
                refused.reason,
                refused.name,
                refused.event_id,
                refused.message,
                invalid=refused.invalid,
            )
            return None
        if event.converted:
            self._warn_converted(name, event.converted)
        if len(event.data) + ENVELOPE_BYTES > self._config.batch.max_bytes:
            self._drop(
                DropReason.TOO_LARGE,
                name,
                event.event_id,
                f"event of {len(event.data)} bytes exceeds max_batch_bytes",
                invalid=True,
            )
            return None
        ledger = self._ledger
        if not self._config.send and not ledger.closed:
            with self._lock:
                ledger.discarded += 1
            return event.event_id
        if self._config.sync_mode and not ledger.closed:
            if self._send_inline(event.event_id, event.data):
                return event.event_id
        with self._lock:
            closed = ledger.closed
            queued = not closed and ledger.enqueue_locked(event.event_id, event.data)
            # Wake the workers only when they have something new to decide: a
            # first event (they may wait with no deadline), or a full batch;
            # otherwise their timed wait will do.
            if queued and ledger.worth_waking_locked():
                self._wake_locked()
        if not queued:
            config = self._config
            reason = DropReason.CLOSED if closed else DropReason.QUEUE_FULL
            message = (
                "the client is closed"
                if closed
                else f"the queue is full ({config.max_queue_size} events or "
                f"{config.max_queue_bytes} bytes); the newest event is dropped"
            )
            self._drop(reason, name, event.event_id, message, invalid=False)
            return None
        if not self._worker_running:
            self._start_worker()
        return event.event_id

    # --- Segment's other message types (the rows the server's Segment routes store)

    def identify(
        self,
        user: str,
        traits: Mapping[str, Any] | None = None,
        *,
        timestamp: Any = None,
        event_id: Any = None,
        context: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Record who ``user`` is: an ``identify`` event whose properties are ``traits``."""
        return self._message("identify", user, traits, timestamp, event_id, context)

    def alias(
        self,
        previous_id: str,
        user: str,
        *,
        timestamp: Any = None,
        event_id: Any = None,
        context: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Record that ``previous_id`` (an anonymous id, an old account) is now ``user``."""
        return self._message(
            "alias", user, {}, timestamp, event_id, context, previousId=previous_id
        )

    def group(
        self,
        user: str,
        group_id: str,
        traits: Mapping[str, Any] | None = None,
        *,
        timestamp: Any = None,
        event_id: Any = None,
        context: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Record that ``user`` belongs to ``group_id`` (a club, a team), with its ``traits``."""
        return self._message("group", user, traits, timestamp, event_id, context, groupId=group_id)

    def page(
        self,
        user: str | None = None,
        name: str | None = None,
        properties: Mapping[str, Any] | None = None,
        *,
        category: str | None = None,
        timestamp: Any = None,
        event_id: Any = None,
        context: Mapping[str, Any] | None = None,
    ) -> str | None:
        """A ``page.view`` event; the page's ``name`` and ``category`` in ``context.$segment``."""
        return self._message(
            "page", user, properties, timestamp, event_id, context, name=name, category=category
        )

    def screen(
        self,
        user: str | None = None,
        name: str | None = None,
        properties: Mapping[str, Any] | None = None,
        *,
        category: str | None = None,
        timestamp: Any = None,
        event_id: Any = None,
        context: Mapping[str, Any] | None = None,
    ) -> str | None:
        """A ``screen.view`` event (a mobile app's screen), as ``page`` is for the web."""
        return self._message(
            "screen", user, properties, timestamp, event_id, context, name=name, category=category
        )

    def _message(
        self,
        kind: str,
        user: str | None,
        properties: Mapping[str, Any] | None,
        timestamp: Any,
        event_id: Any,
        context: Mapping[str, Any] | None,
        **fields: Any,
    ) -> str | None:
        return self.track(
            EVENT_NAMES[kind],
            user=user,
            properties=properties,
            timestamp=timestamp,
            event_id=event_id,
            context=message_context(kind, context, user, **fields),
        )

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
        return self._ledger.stats()

    # --- what the subclasses provide

    def _send_inline(self, event_id: str, data: bytes) -> bool:
        """sync_mode: deliver now in the caller's thread; False if this client cannot."""
        return False

    def _wake_locked(self) -> None:
        raise NotImplementedError

    def _start_worker(self) -> None:
        raise NotImplementedError

    def _exit_begin(self, deadline: float | None) -> None:
        """Stop accepting; the workers drain until ``deadline`` (the exit hook's first step)."""
        with self._lock:
            self._ledger.begin_close_locked(deadline)
            self._wake_locked()

    def _exit_finish(self, deadline: float | None) -> int:
        raise NotImplementedError

    def _after_fork_in_child(self) -> None:
        self._init_state()

    def _exit_timeout(self) -> float | None:
        """For the exit hook: how long this client may take, or None if it is closed."""
        if self._ledger.closed or not self._config.enabled:
            return None
        return self._config.shutdown_timeout

    # --- drops, failures and callbacks

    def _drop(
        self, reason: str, name: object, event_id: str | None, message: str, *, invalid: bool
    ) -> None:
        reason = str(reason)  # a DropReason, or one of before_send's
        with self._lock:
            self._ledger.dropped[reason] += 1
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
        if self._config.on_drop is not None:
            try:
                self._config.on_drop(DroppedEvent(reason, name, event_id, message))
            except Exception:
                logger.exception("analytics.on_drop_failed")
        if invalid and self._config.strict:
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

    def _call_on_error(self, error: DeliveryError) -> None:
        if self._config.on_error is not None:
            try:
                self._config.on_error(error)
            except Exception:
                logger.exception("analytics.on_error_failed")

    def _deadline(self, timeout: float | None) -> float | None:
        """None: the client's shutdown_timeout; math.inf: no limit."""
        if timeout is None:
            timeout = self._config.shutdown_timeout
        return None if math.isinf(timeout) else time.monotonic() + max(0.0, timeout)

    def _drain_blocking(self, http: httpx.Client) -> None:
        """Deliver the queue, batch by batch, from the calling thread (exit paths)."""
        ledger = self._ledger
        while True:
            with self._lock:
                if ledger.past_deadline_locked():
                    return
                # Workers that died with their batches: resend those first.
                ledger.give_back_flights_locked(list(ledger.flights))
                flight = ledger.take_batch_locked()
            if flight is None:
                return
            try:
                self._deliver_blocking(flight.events, http)
            except Exception as exc:
                ledger.crashed(flight.events, exc)
            with self._lock:
                ledger.batch_done_locked(flight)

    def _deliver_blocking(
        self,
        events: Sequence[QueuedEvent],
        http: httpx.Client,
        give_up_at: float | None = None,
    ) -> None:
        """Deliver with blocking I/O in the calling thread (sync mode, exit fallbacks)."""

        def send(action: Send) -> Reply | Exception:
            return _exchange.post(self._config, http, action)

        def sleep(seconds: float) -> bool:
            time.sleep(seconds)  # the steps never sleep past the close deadline
            return True

        drive(self._delivery.steps(events, give_up_at=give_up_at), send, sleep)
