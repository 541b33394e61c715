"""``AnalyticsClient``: a background thread delivers the events, for sync code."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Unpack

import httpx

from labs_analytics_client import _exchange
from labs_analytics_client._batching import QueuedEvent
from labs_analytics_client._core import BaseClient, logger
from labs_analytics_client._delivery import Reply, Send, drive
from labs_analytics_client._ledger import Flight, Wait
from labs_analytics_client._options import ClientOptions
from labs_analytics_client._process_hooks import threads_for_us

# How long close() lets a worker that is past the deadline, and not waiting on
# the network, hand its batch back (CPU work only; bounds close() if it is stuck).
HAND_BACK_GRACE = 1.0


class AnalyticsClient(BaseClient):
    """Track events from sync code (Django, Flask, scripts, workers).

    ``track()`` serializes the event and appends it to a bounded in-memory
    queue; ``max_in_flight`` daemon threads (4), started on the first
    ``track()``, each take the next batch (``batch_size`` events,
    ``max_batch_bytes``, or ``flush_interval`` after the oldest, whichever
    comes first) and send it with retries, so up to ``max_in_flight`` requests
    are in flight at once and batches may arrive out of order. Thread-safe:
    one client per process is meant to be shared by every thread.

    Shutdown: ``close(timeout)`` (or leaving ``with``) stops accepting,
    delivers what is queued and joins the threads, waiting at most ``timeout``
    (default ``shutdown_timeout``, 5 s; ``math.inf`` for no limit). Without
    it, an ``atexit`` hook does the same at interpreter exit, so events are
    not lost and the process never hangs, even with the server unreachable.
    After ``fork()`` the child starts with an empty queue, new threads and a
    new connection pool.

    ``transport`` replaces httpx's (for tests, or a custom network stack);
    ``sync_mode=True`` sends each event in the calling thread before
    ``track()`` returns (scripts, tests), with the same retries but never for
    longer than ``shutdown_timeout`` per call (then ``RetriesExhausted``).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        self._transport = transport
        self._http: httpx.Client | None = None
        super().__init__(api_key, options)
        # Built here, not lazily in the worker: httpx imports httpcore on first
        # use, and a fork() while the worker thread is halfway through that
        # import would leave the child a half-initialized module.
        if self._config.enabled:
            self._http = _exchange.sync_http(self._config, transport)

    def _init_state(self) -> None:
        super()._init_state()
        self._cond = threading.Condition(self._lock)
        self._workers: list[threading.Thread] = []
        self._workers_live = 0  # workers started and not yet ended
        self._sending = 0  # workers waiting on a request (their batches are in flight)
        # After a fork the inherited pool's sockets are the parent's: never
        # use or close them here (closing could end the parent's TLS sessions).
        self._http = None

    # --- public

    def flush(self, timeout: float | None = None) -> int:
        """Send everything tracked so far now; wait for it at most ``timeout`` seconds.

        Returns how many of those events are still pending (0: all delivered
        or given up). ``None`` waits up to ``shutdown_timeout``; ``math.inf``
        without limit.
        """
        if not self._config.enabled:
            return 0
        deadline = self._deadline(timeout)
        with self._cond:
            target = self._ledger.next_seq
            if self._ledger.done_seq >= target:
                return 0
            self._ledger.flush_upto = max(self._ledger.flush_upto, target)
            self._cond.notify_all()
            if threading.current_thread() in self._workers:
                return target - self._ledger.done_seq  # called from on_error: cannot wait on itself
        if not self._worker_running:
            self._start_worker()
        with self._cond:
            while self._ledger.done_seq < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cond.wait(remaining)
            return max(0, target - self._ledger.done_seq)

    def close(self, timeout: float | None = None) -> int:
        """Stop accepting events, deliver the queue, join the thread (at most ``timeout``).

        Returns how many events could not be delivered in time (they are
        reported to ``on_error`` as ``ShutdownTimeout``). Idempotent.
        """
        deadline = self._deadline(timeout)
        self._exit_begin(deadline)
        return self._exit_finish(deadline)

    def __enter__(self) -> AnalyticsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- shutdown, in two steps so the exit hook can drain several clients at once

    def _exit_finish(self, deadline: float | None) -> int:
        with self._cond:
            workers = list(self._workers)
        if threading.current_thread() in workers:
            # close() from a callback: the workers drain once the callback returns.
            with self._cond:
                return len(self._ledger.queue) + self._ledger.in_flight_events()
        for worker in workers:
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if workers:
            self._await_hand_back()
        alive = any(worker.is_alive() for worker in workers)
        if not alive:
            # No thread (never started, or could not be): drain from this one.
            if self._http is None:
                self._http = _exchange.sync_http(self._config, self._transport)
            self._drain_blocking(self._http)
        with self._cond:
            left = self._ledger.abandon_queue_locked(worker_alive=alive)
            in_flight = self._ledger.unsettled_locked()
            self._cond.notify_all()
        self._ledger.report_close(left, in_flight)
        pending = len(left) + in_flight
        if not alive and self._http is not None:
            self._http.close()
            self._http = None
        return pending

    def _await_hand_back(self) -> None:
        """At the deadline, let the workers not waiting on a request hand their batches back.

        They only have CPU work left (their backoff ends at the deadline), so
        this is short; it lets the close report those batches with the rest, in
        one report. Workers waiting on a request are not waited for: their
        batches are in flight.
        """
        grace_end = time.monotonic() + HAND_BACK_GRACE
        with self._cond:
            while self._workers_live > self._sending:
                remaining = grace_end - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    # --- the worker

    def _wake_locked(self) -> None:
        self._cond.notify_all()  # flush() may wait on the same condition

    def _start_worker(self) -> None:
        with self._cond:
            if self._worker_running or self._ledger.closed:
                return
            # Each worker sends one batch at a time: max_in_flight requests at once.
            workers = []
            for index in range(self._config.max_in_flight):
                worker = threading.Thread(
                    target=self._run, name=f"labs-analytics-client-{index}", daemon=True
                )
                try:
                    with threads_for_us():
                        worker.start()
                except RuntimeError:  # at interpreter shutdown: close() will drain inline
                    break
                workers.append(worker)
                self._workers_live += 1
            if workers:
                self._workers = workers
                self._worker_running = True

    def _run(self) -> None:
        try:
            with self._cond:
                if self._http is None:
                    self._http = _exchange.sync_http(self._config, self._transport)
                http = self._http
            while (flight := self._next_batch()) is not None:
                try:
                    drive(
                        self._delivery.steps(flight.events),
                        lambda a: self._send(http, a),
                        self._sleep,
                    )
                except Exception as exc:  # a bug: report the batch, keep the worker
                    self._ledger.crashed(flight.events, exc)
                with self._cond:
                    self._ledger.batch_done_locked(flight)
                    self._cond.notify_all()
        except Exception:  # a bug outside any batch: say so; close() drains inline
            logger.exception("analytics.worker_crashed")
        finally:
            with self._cond:
                self._workers_live -= 1
                self._worker_running = self._workers_live > 0
                self._cond.notify_all()

    def _next_batch(self) -> Flight | None:
        with self._cond:
            while isinstance(step := self._ledger.next_batch_locked(), Wait):
                self._cond.wait(step.seconds)
            return step

    def _send(self, http: httpx.Client, action: Send) -> Reply | Exception:
        with self._cond:
            self._sending += 1
        try:
            return _exchange.post(self._config, http, action)
        finally:
            with self._cond:
                self._sending -= 1

    def _sleep(self, seconds: float) -> bool:
        """Back off; False if the close deadline comes first."""
        end = time.monotonic() + seconds
        with self._cond:
            while True:
                now = time.monotonic()
                abort_at = self._ledger.deadline
                if abort_at is not None and abort_at < end and now >= abort_at:
                    return False
                if now >= end:
                    return True
                self._cond.wait((end if abort_at is None else min(end, abort_at)) - now)

    # --- sync mode and fork

    def _send_inline(self, event_id: str, data: bytes) -> bool:
        with self._cond:
            if self._http is None:
                self._http = _exchange.sync_http(self._config, self._transport)
            http = self._http
        # Bounded by shutdown_timeout, retries included: a script's track() must
        # not hang for max_retry_time (minutes) while the server is down.
        self._deliver_blocking(
            [QueuedEvent(0, event_id, data, time.monotonic())],
            http,
            give_up_at=self._deadline(None),
        )
        return True
