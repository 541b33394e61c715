"""``AnalyticsClient``: a background thread delivers the events, for sync code."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Unpack

import httpx

from labs_analytics.client._batching import QueuedEvent
from labs_analytics.client._core import BaseClient, logger
from labs_analytics.client._delivery import Reply, Send, drive
from labs_analytics.client._options import ClientOptions


class AnalyticsClient(BaseClient):
    """Track events from sync code (Django, Flask, scripts, workers).

    ``track()`` serializes the event and appends it to a bounded in-memory
    queue; one daemon thread, started on the first ``track()``, sends batches
    (``batch_size`` events, ``max_batch_bytes``, or ``flush_interval`` after
    the oldest, whichever comes first) with retries. Thread-safe: one client
    per process is meant to be shared by every thread.

    Shutdown: ``close(timeout)`` (or leaving ``with``) stops accepting,
    delivers what is queued and joins the thread, waiting at most ``timeout``
    (default ``shutdown_timeout``, 5 s; ``math.inf`` for no limit). Without
    it, an ``atexit`` hook does the same at interpreter exit, so events are
    not lost and the process never hangs, even with the server unreachable.
    After ``fork()`` the child starts with an empty queue, a new thread and a
    new connection pool.

    ``transport`` replaces httpx's (for tests, or a custom network stack);
    ``sync_mode=True`` sends each event in the calling thread before
    ``track()`` returns (scripts, tests), with the same retries.
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
        self._worker: threading.Thread | None = None
        super().__init__(api_key, options)
        # Built here, not lazily in the worker: httpx imports httpcore on first
        # use, and a fork() while the worker thread is halfway through that
        # import would leave the child a half-initialized module.
        if self._enabled:
            self._http = self._sync_http(transport)

    def _init_state(self) -> None:
        super()._init_state()
        self._cond = threading.Condition(self._lock)
        self._worker = None
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
        if not self._enabled:
            return 0
        deadline = self._deadline(timeout)
        with self._cond:
            target = self._next_seq
            if self._done_seq >= target:
                return 0
            self._flush_upto = max(self._flush_upto, target)
            self._cond.notify_all()
            if threading.current_thread() is self._worker:
                return target - self._done_seq  # called from on_error: cannot wait on itself
        if not self._worker_running:
            self._start_worker()
        with self._cond:
            while self._done_seq < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cond.wait(remaining)
            return max(0, target - self._done_seq)

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

    def _exit_begin(self, deadline: float | None) -> None:
        with self._cond:
            self._closed = True
            self._closing = True
            if deadline is not None:
                self._abort_at = (
                    deadline if self._abort_at is None else min(self._abort_at, deadline)
                )
            self._cond.notify_all()

    def _exit_finish(self, deadline: float | None) -> int:
        worker = self._worker
        if worker is not None and worker is threading.current_thread():
            # close() from a callback: the worker drains once the callback returns.
            with self._cond:
                return len(self._queue) + len(self._in_flight)
        if worker is not None:
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if worker is None or not worker.is_alive():
            # No thread (never started, or could not be): drain from this one.
            if self._http is None:
                self._http = self._sync_http(self._transport)
            self._drain_blocking(self._http)
        alive = worker is not None and worker.is_alive()
        with self._cond:
            left = self._abandon_queue_locked(worker_alive=alive)
            in_flight = self._unsettled_locked()
            self._cond.notify_all()
        self._report_abandoned(left, in_flight)
        pending = len(left) + in_flight
        if not alive and self._http is not None:
            self._http.close()
            self._http = None
        return pending

    # --- the worker

    def _wake_locked(self) -> None:
        self._cond.notify_all()  # flush() may wait on the same condition

    def _start_worker(self) -> None:
        with self._cond:
            if self._worker_running or self._closed:
                return
            worker = threading.Thread(target=self._run, name="labs-analytics-client", daemon=True)
            try:
                worker.start()
            except RuntimeError:  # at interpreter shutdown: close() will drain inline
                return
            self._worker = worker
            self._worker_running = True

    def _run(self) -> None:
        try:
            http = self._http = self._http or self._sync_http(self._transport)
            while (batch := self._next_batch()) is not None:
                try:
                    drive(self._delivery.steps(batch), lambda a: self._send(http, a), self._sleep)
                except Exception as exc:  # a bug: report the batch, keep the worker
                    self._crashed(batch, exc)
                with self._cond:
                    self._batch_done_locked(batch)
                    self._cond.notify_all()
        except Exception:  # a bug outside any batch: say so; close() drains inline
            logger.exception("analytics.worker_crashed")
        finally:
            with self._cond:
                self._worker_running = False
                self._cond.notify_all()

    def _next_batch(self) -> list[QueuedEvent] | None:
        with self._cond:
            while True:
                wait = self._queue.seconds_until_ready(
                    now=time.monotonic(),
                    batch=self._batch,
                    flush_upto=self._flush_upto,
                    closing=self._closing,
                )
                if wait == 0:
                    return self._take_batch_locked()
                if wait is None and self._closing:
                    return None
                self._cond.wait(wait)

    def _send(self, http: httpx.Client, action: Send) -> Reply | Exception:
        try:
            response = http.post("/v1/events", content=action.body, timeout=action.timeout)
        except Exception as exc:
            return exc
        return Reply(response.status_code, response.headers.get("retry-after"), response.content)

    def _sleep(self, seconds: float) -> bool:
        """Back off; False if the close deadline comes first."""
        end = time.monotonic() + seconds
        with self._cond:
            while True:
                now = time.monotonic()
                abort_at = self._abort_at
                if abort_at is not None and abort_at < end and now >= abort_at:
                    return False
                if now >= end:
                    return True
                self._cond.wait((end if abort_at is None else min(end, abort_at)) - now)

    # --- sync mode and fork

    def _send_inline(self, event_id: str, data: bytes) -> bool:
        with self._cond:
            if self._http is None:
                self._http = self._sync_http(self._transport)
            http = self._http
        self._deliver_blocking([QueuedEvent(0, event_id, data, time.monotonic())], http)
        return True
