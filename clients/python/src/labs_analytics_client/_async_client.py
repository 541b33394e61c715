"""``AsyncAnalyticsClient``: an asyncio task delivers the events, for async code."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
import warnings
from types import TracebackType
from typing import Unpack

import httpx

from labs_analytics_client import _exchange
from labs_analytics_client._batching import BatchLimits
from labs_analytics_client._client import HAND_BACK_GRACE
from labs_analytics_client._config import Config
from labs_analytics_client._core import BaseClient, logger
from labs_analytics_client._delivery import Reply, Send, adrive
from labs_analytics_client._ledger import Flight, Wait
from labs_analytics_client._options import ClientOptions


class AsyncAnalyticsClient(BaseClient):
    """Track events from async code (FastAPI, Starlette, aiohttp, workers).

    ``track()`` is a plain (non-async) call, as cheap as the sync client's:
    it only queues. The workers are ``max_in_flight`` asyncio tasks (4), each
    sending one batch at a time (so batches may arrive out of order), started
    by the first ``track()`` made inside a running loop, and bound to that loop:
    ``await client.flush()`` and ``await client.aclose()`` belong in it. It
    may be called from other threads too (the task is woken thread-safely).

    Shutdown: ``aclose(timeout)`` (or leaving ``async with``; in FastAPI, the
    lifespan) stops accepting, delivers the queue and ends the tasks. If the
    loop ends first (a cancelled task gives its batch back to the queue), the
    ``atexit`` hook delivers what is left with blocking I/O, within
    ``shutdown_timeout``. A client garbage-collected with events pending warns
    with a ``ResourceWarning``.

    ``sync_mode=True`` cannot block a coroutine; here it means no batching:
    each event is sent at once, one request at a time, and
    ``await client.flush()`` waits for it.
    """

    _http: httpx.AsyncClient | None

    def __init__(
        self,
        api_key: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        self._transport = transport
        super().__init__(api_key, options)
        if self._config.enabled:
            self._http = self._async_http()  # now, not in the task: see AnalyticsClient

    def _adjust(self, config: Config) -> Config:
        if not config.sync_mode:
            return config
        # No batching, one request at a time (and so in order).
        batch = config.batch
        one = BatchLimits(max_events=1, max_bytes=batch.max_bytes, interval=batch.interval)
        return dataclasses.replace(config, batch=one, max_in_flight=1)

    def _init_state(self) -> None:
        super()._init_state()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._tasks_live = 0  # tasks started and not yet ended
        self._wake: asyncio.Event | None = None
        self._http = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._sending = 0  # tasks awaiting a request (their batches are in flight)
        # aclose() past its deadline cancels the tasks; a request one was
        # awaiting is then in flight (the server may have it), as in the sync client.
        self._keep_unanswered = False

    # --- public

    async def flush(self, timeout: float | None = None) -> int:  # noqa: ASYNC109 (same API as the sync client)
        """Send everything tracked so far now; wait for it at most ``timeout`` seconds.

        Returns how many of those events are still pending. ``None`` waits up
        to ``shutdown_timeout``; ``math.inf`` without limit.
        """
        if not self._config.enabled:
            return 0
        deadline = self._deadline(timeout)
        self._bind_here()
        loop = asyncio.get_running_loop()
        if any(task.get_loop() is not loop for task in self._tasks if not task.done()):
            raise RuntimeError("flush() must be awaited in the loop the client is bound to")
        with self._lock:
            target = self._ledger.next_seq
            if self._ledger.done_seq >= target:
                return 0
            self._ledger.flush_upto = max(self._ledger.flush_upto, target)
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((target, future))
            self._wake_locked()
        if asyncio.current_task() in self._tasks:
            return target - self._ledger.done_seq  # called from on_error: cannot wait on itself
        try:
            async with asyncio.timeout_at(
                None if deadline is None else loop.time() + deadline - time.monotonic()
            ):
                await asyncio.shield(future)
        except TimeoutError:
            pass
        with self._lock:
            self._waiters = [(t, f) for t, f in self._waiters if f is not future]
            return max(0, target - self._ledger.done_seq)

    async def aclose(self, timeout: float | None = None) -> int:  # noqa: ASYNC109 (same API as the sync client)
        """Stop accepting events, deliver the queue, end the task (at most ``timeout``).

        Returns how many events could not be delivered in time. Idempotent.
        """
        deadline = self._deadline(timeout)
        self._exit_begin(deadline)
        if self._config.enabled and (self._ledger.queue or self._ledger.flights):
            self._bind_here()
        tasks = {task for task in self._tasks if not task.done()}
        if tasks:
            if any(task.get_loop() is not asyncio.get_running_loop() for task in tasks):
                raise RuntimeError("aclose() must be awaited in the loop the client is bound to")
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            await asyncio.wait(tasks, timeout=remaining)
            tasks = {task for task in tasks if not task.done()}
            if tasks and self._sending < len(tasks):
                # Past their backoff, tasks not awaiting a request only have CPU
                # work left before they hand their batches back: the close then
                # reports those with the rest.
                await asyncio.wait(tasks, timeout=HAND_BACK_GRACE)
                tasks = {task for task in tasks if not task.done()}
            if tasks:
                self._keep_unanswered = True
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks, timeout=1.0)
        with self._lock:
            left = self._ledger.abandon_queue_locked(worker_alive=self._worker_running)
            in_flight = self._ledger.unsettled_locked()
            self._resolve_waiters_locked()
        self._ledger.report_close(left, in_flight)
        pending = len(left) + in_flight
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        return pending

    async def __aenter__(self) -> AsyncAnalyticsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        try:
            pending = len(self._ledger.queue) + self._ledger.in_flight_events()
            closed = self._ledger.closed
        except AttributeError:  # __init__ failed half-way
            return
        if pending and not closed:
            warnings.warn(
                f"AsyncAnalyticsClient was garbage-collected with {pending} events pending; "
                "use `async with` or `await client.aclose()`",
                ResourceWarning,
                stacklevel=1,
                source=self,
            )

    def _async_http(self) -> httpx.AsyncClient:
        return _exchange.async_http(self._config, self._transport)

    # --- binding to a loop, waking the task

    def _start_worker(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # not in a loop: the events wait for flush(), aclose() or the exit hook
        self._bind_here()

    def _bind_here(self) -> None:
        """Start the task in the running loop, unless it runs in another live loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._ledger.closed and not (self._ledger.queue or self._ledger.flights):
                return
            bound = self._loop
            if bound is not None and bound is not loop and not bound.is_closed():
                if self._worker_running:
                    return  # bound to another loop: track() wakes it there
            elif self._worker_running and bound is loop:
                return
            # Tasks that died with their loop: their batches go first.
            self._ledger.give_back_flights_locked(list(self._ledger.flights))
            self._loop = loop
            self._loop_thread = threading.get_ident()
            self._wake = asyncio.Event()
            self._worker_running = True
            # Each task sends one batch at a time: max_in_flight requests at once.
            self._tasks = [
                loop.create_task(self._run(), name=f"labs-analytics-client-{index}")
                for index in range(self._config.max_in_flight)
            ]
            self._tasks_live = len(self._tasks)

    def _wake_locked(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        if threading.get_ident() == self._loop_thread:
            wake.set()
        else:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # that loop is closed; the exit hook will deliver
                pass

    def _resolve_waiters_locked(self) -> None:
        still = []
        for target, future in self._waiters:
            if self._ledger.done_seq >= target or (
                self._ledger.closed and not self._worker_running
            ):
                if not future.done():
                    future.set_result(None)
            else:
                still.append((target, future))
        self._waiters = still

    # --- the worker

    async def _run(self) -> None:
        flight: Flight | None = None
        try:
            http = self._http
            if http is None or http.is_closed:
                http = self._http = self._async_http()
            while (flight := await self._next_batch()) is not None:
                try:
                    await adrive(
                        self._delivery.steps(flight.events),
                        functools.partial(self._send, http, flight=flight),
                        self._sleep,
                    )
                except Exception as exc:  # a bug: report the batch, keep the worker
                    self._ledger.crashed(flight.events, exc)
                with self._lock:
                    self._ledger.batch_done_locked(flight)
                    self._resolve_waiters_locked()
        except asyncio.CancelledError:
            with self._lock:
                if flight is not None and flight in self._ledger.flights:
                    if self._keep_unanswered and flight.cancelled_unanswered:
                        # aclose() gave up waiting on its request: in flight for good.
                        self._ledger.keep_unanswered_locked(flight)
                    else:  # give the batch back: resent later, stored once
                        self._ledger.give_back_flights_locked([flight])
            raise
        except Exception:
            logger.exception("analytics.worker_crashed")
        finally:
            with self._lock:
                self._tasks_live -= 1
                self._worker_running = self._tasks_live > 0
                self._resolve_waiters_locked()

    async def _next_batch(self) -> Flight | None:
        wake = self._wake
        assert wake is not None
        while True:
            with self._lock:
                step = self._ledger.next_batch_locked()
                if not isinstance(step, Wait):
                    return step
                wake.clear()
            try:
                async with asyncio.timeout(step.seconds):
                    await wake.wait()
            except TimeoutError:
                pass

    async def _send(
        self, http: httpx.AsyncClient, action: Send, *, flight: Flight
    ) -> Reply | Exception:
        self._sending += 1
        started = time.monotonic()
        try:
            response = await http.post(
                _exchange.EVENTS_PATH, content=action.body, timeout=action.timeout
            )
        except asyncio.CancelledError:
            flight.cancelled_unanswered = True
            raise
        except Exception as exc:
            _exchange.log_exchange(self._config, action, started, exc)
            return exc
        finally:
            self._sending -= 1
        return _exchange.answered(self._config, action, started, response)

    async def _sleep(self, seconds: float) -> bool:
        end = time.monotonic() + seconds
        wake = self._wake
        assert wake is not None
        while True:
            now = time.monotonic()
            abort_at = self._ledger.deadline
            if abort_at is not None and abort_at < end and now >= abort_at:
                return False
            if now >= end:
                return True
            wake.clear()
            try:
                async with asyncio.timeout((end if abort_at is None else min(end, abort_at)) - now):
                    await wake.wait()
            except TimeoutError:
                pass

    # --- shutdown

    def _exit_finish(self, deadline: float | None) -> int:
        """At interpreter exit: the loop is gone or elsewhere; finish from this thread."""
        loop = self._loop
        if (
            loop is not None
            and loop.is_running()
            and self._worker_running
            and self._loop_thread != threading.get_ident()
        ):
            # The loop still runs in another thread: let the task drain there.
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            future = asyncio.run_coroutine_threadsafe(self.aclose(remaining), loop)
            try:
                return future.result(None if remaining is None else remaining + 1.0)
            except Exception:
                return len(self._ledger.queue) + self._ledger.in_flight_events()
        # The loop has ended: deliver what is left (the batches of tasks that
        # died with their loop too; resending them is safe) with blocking I/O.
        if self._ledger.queue or self._ledger.flights:
            with _exchange.sync_http(self._config) as http:
                self._drain_blocking(http)
        with self._lock:
            left = self._ledger.abandon_queue_locked(worker_alive=False)
            in_flight = self._ledger.unsettled_locked()
        self._ledger.report_close(left, in_flight)
        return len(left) + in_flight
