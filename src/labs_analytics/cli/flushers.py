"""The flusher processes `serve` runs beside the API: started, restarted, drained.

Flushing in the API's own event loop stole it: decoding and copying a
5,000-event batch is CPU work that stalls every request waiting behind it
(ingest p99 went from 4 ms to 39 ms). So `serve` runs its flushers as
processes of their own (`labs-analytics flusher`, a consumer-group member
each), and this supervisor, a thread of the `serve` process:

* starts ``count`` of them with the service's environment: the first flushes
  all the time, the others stand by until the stream holds a backlog
  (``STANDBY_FLUSHER_BACKLOG_EVENTS``: one flusher keeps up with less, and
  more flushing beside it take CPU from the API);
* restarts one that dies (a crash, an OOM kill), after a backoff that grows
  while it keeps dying (1 s, doubling, at most 30 s; reset after a minute up);
  its pending entries are reclaimed by the others or by its successor, so
  nothing is lost and nothing is stored twice;
* on stop (after the API has drained), sends each SIGTERM, waits up to the
  shutdown timeout for the current batch to commit, then kills what is left
  (an uncommitted batch stays pending in Redis and is reclaimed later).

Each runs in a session of its own, so a terminal's Ctrl-C (sent to the whole
foreground group) reaches `serve` alone, which stops them in order; and each
gets SIGTERM if `serve` itself dies (``PR_SET_PDEATHSIG``), so a `kill -9` of
`serve` leaves no orphan flushing on.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from labs_analytics.logs import get_logger

log = get_logger("labs_analytics.cli")

FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
HEALTHY_AFTER_SECONDS = 60.0  # up this long: the next death starts the backoff over
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class _Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = FIRST_BACKOFF_SECONDS
    restart_at: float | None = None
    restarts: int = 0
    exits: list[int] = field(default_factory=list)


class FlusherProcesses:
    """``count`` flusher processes, kept running until ``stop()``."""

    def __init__(
        self, count: int, *, env: Mapping[str, str], shutdown_timeout_seconds: float
    ) -> None:
        self._slots = [_Slot(index) for index in range(count)]
        self._env = dict(env)
        self._shutdown_timeout = shutdown_timeout_seconds
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="flusher-supervisor", daemon=True)

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [slot.process.pid for slot in self._slots if slot.process is not None]

    @property
    def restarts(self) -> int:
        with self._lock:
            return sum(slot.restarts for slot in self._slots)

    def start(self) -> None:
        with self._lock:
            for slot in self._slots:
                self._spawn(slot)
        self._watcher.start()

    def stop(self) -> None:
        """SIGTERM every flusher, wait for their drain (bounded), kill what is left."""
        self._stopping.set()
        if self._watcher.is_alive():
            self._watcher.join()
        with self._lock:
            running = [slot.process for slot in self._slots if slot.process is not None]
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._shutdown_timeout
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("flusher.killed", pid=process.pid, after_s=self._shutdown_timeout)
                process.kill()
                process.wait()
        for process in running:
            _forget_metrics_of(process.pid)
        if running:
            log.info("flushers.stopped", exit_codes=[process.returncode for process in running])

    def _spawn(self, slot: _Slot) -> None:
        # The first flushes all the time; the others stand by until the stream
        # holds a backlog (``Flusher``'s ``standby``).
        standby = ["--standby"] if slot.index > 0 else []
        slot.process = subprocess.Popen(
            [sys.executable, "-m", "labs_analytics", "flusher", *standby],
            env=self._env,
            # Its own session: a Ctrl-C at the terminal reaches `serve` alone,
            # which stops the flushers once the API has drained.
            start_new_session=True,
            preexec_fn=_die_with_parent,  # only prctl, before exec: fork-safe
        )
        slot.started_at = time.monotonic()
        slot.restart_at = None
        log.info("flusher.started", slot=slot.index, pid=slot.process.pid)

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            now = time.monotonic()
            with self._lock:
                for slot in self._slots:
                    self._check(slot, now)

    def _check(self, slot: _Slot, now: float) -> None:
        process = slot.process
        if process is not None and process.poll() is not None:
            if now - slot.started_at >= HEALTHY_AFTER_SECONDS:
                slot.backoff = FIRST_BACKOFF_SECONDS
            slot.exits.append(process.returncode)
            slot.restart_at = now + slot.backoff
            log.error(
                "flusher.exited",
                slot=slot.index,
                pid=process.pid,
                exit_code=process.returncode,
                restart_in_s=slot.backoff,
            )
            slot.backoff = min(slot.backoff * 2, MAX_BACKOFF_SECONDS)
            slot.process = None
            _forget_metrics_of(process.pid)
        if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
            slot.restarts += 1
            self._spawn(slot)


def _forget_metrics_of(pid: int) -> None:
    """A dead flusher's live gauges leave /metrics (its counters still add up)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
