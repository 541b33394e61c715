"""Process hooks, installed when the first client is made (never at import).

* ``atexit``: every open client is closed with one shared, bounded deadline
  (the largest ``shutdown_timeout``), so queued events are delivered and a
  process never hangs at exit, even with the server unreachable.
* ``os.register_at_fork``: in a child, every client gets a fresh lock, queue,
  stats, worker and connection pool; what it inherited is discarded (the
  parent still owns and delivers those events), and the id generator is
  reseeded.
* ``multiprocessing`` children (fork and forkserver start methods, Pool and
  ProcessPoolExecutor workers) leave through ``os._exit`` and so skip
  ``atexit``; their ``Process._bootstrap`` runs the multiprocessing finalizers
  just before. Every such child that holds a client gets one finalizer doing
  the same drain, however the client came to be: inherited at the fork,
  created in an ``initializer``, lazily in a task, or while a spawn or
  forkserver child imports the main module (before its bootstrap, which
  clears the finalizers and then runs the after-fork callbacks).
* ``SIGTERM`` in such a child, when its handler is still the default (so
  ``Pool.terminate()`` and leaving ``with Pool()``, which SIGTERM the
  workers): the handler only starts a thread and returns, taking no lock, so
  it never deadlocks on code it interrupted. The thread drains like the exit
  hook (after any drain already running: one lock serializes them), then
  re-sends SIGTERM, which the handler now lets kill the process as the
  default would. At most ``shutdown_timeout`` later than without it.
* Python runs a handler in the main thread only, at its next bytecode, and a
  Pool worker's main thread may be blocked in C for good (on its queue's
  lock, which ``terminate()`` holds): two ways a SIGTERM went unhandled and
  the worker outlived ``terminate()``, its parent waiting forever (1 run in
  ~20 under CPU load). The kernel gave the signal to a busy delivery thread,
  so the main thread was never interrupted: the SDK's threads are born with
  the asynchronous signals blocked (``threads_for_us``). Or it landed just
  before the main thread blocked: a thread of ours reads the signal wakeup
  fd (``_watch_signal_wakeups``), which CPython's C-level handler writes in
  any case, and starts the drain itself.
"""

from __future__ import annotations

import _thread
import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from labs_analytics_client._events import reseed_after_fork

logger = logging.getLogger("labs_analytics_client")


class Drainable(Protocol):
    """What the hooks need of a client (both clients are one)."""

    def _exit_timeout(self) -> float | None:
        """Its shutdown_timeout if it is open and may hold events; None: nothing to drain."""
        ...

    def _exit_begin(self, deadline: float | None) -> None:
        """Stop accepting and ask the workers to drain (returns at once)."""
        ...

    def _exit_finish(self, deadline: float | None) -> int:
        """Wait for the drain until ``deadline``, finish it here if need be, report once."""
        ...

    def _after_fork_in_child(self) -> None:
        """Start over: what the parent queued is the parent's."""
        ...


_clients: weakref.WeakSet[Drainable] = weakref.WeakSet()
_hooks_lock = threading.Lock()
_hooks_installed = False


class _Marker:
    """A weak-referenceable object for multiprocessing's after-fork registry."""


_MP_MARKER = _Marker()


_mp_finalizer_pid: int | None = None  # the process whose finalizers hold our drain
_mp_after_fork_pid: int | None = None  # the process whose after-fork callbacks hold it
_exit_lock = threading.Lock()  # one drain at a time: a SIGTERM drain waits for the exit's
_sigterm_pid: int | None = None  # the process whose SIGTERM handler is ours
_sigterm_drain_once = threading.Lock()  # taken by whichever sees SIGTERM first, never released
_sigterm_drained = False
_wakeup_fds: tuple[int, int] | None = None  # our signal wakeup pipe, in _sigterm_pid


# Faults are delivered to the thread at fault, and must not be blocked there.
_SYNCHRONOUS_SIGNALS = {
    getattr(signal, name)
    for name in ("SIGKILL", "SIGSTOP", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS")
    if hasattr(signal, name)
}


@contextmanager
def threads_for_us() -> Iterator[None]:
    """Threads started inside are born with the asynchronous signals blocked.

    Set in the starting thread, not first thing in the new one: a new thread
    inherits the mask, so there is no moment when it could take a signal. A
    signal arriving meanwhile waits, and is taken when the mask is restored.
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no POSIX signal masks
        yield
        return
    previous = signal.pthread_sigmask(
        signal.SIG_BLOCK, signal.valid_signals() - _SYNCHRONOUS_SIGNALS
    )
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def register(client: Drainable) -> None:
    global _hooks_installed
    with _hooks_lock:
        _clients.add(client)
        if not _hooks_installed:
            atexit.register(close_all_at_exit)
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _hooks_installed = True
        _watch_multiprocessing_exit()


def _watch_multiprocessing_exit() -> None:
    """Make a multiprocessing child drain at its exit, once per process."""
    if _mp_finalizer_pid == os.getpid():
        return
    mp_process = sys.modules.get("multiprocessing.process")
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_process is None or mp_util is None:
        return  # not a multiprocessing child; a later fork goes through the after-fork hook
    if mp_process.parent_process() is not None:
        _register_mp_finalizer(None)  # a child, past its bootstrap: register now
    else:
        # The main process, or a spawn/forkserver child still importing the
        # main module: its bootstrap would clear a finalizer made now, then
        # runs these callbacks (in the main process they never run).
        _register_after_mp_fork(mp_util)


def _register_after_mp_fork(mp_util: Any) -> None:
    global _mp_after_fork_pid
    if _mp_after_fork_pid != os.getpid():  # each call adds an entry: once per process
        mp_util.register_after_fork(_MP_MARKER, _register_mp_finalizer)
        _mp_after_fork_pid = os.getpid()


def close_all_at_exit() -> None:
    """Drain every open client with one bounded wait (the largest shutdown_timeout)."""
    with _exit_lock:
        _close_all()


def _close_all() -> None:
    timeouts = {client: client._exit_timeout() for client in list(_clients)}
    clients = [client for client, timeout in timeouts.items() if timeout is not None]
    if not clients:
        return
    deadline = time.monotonic() + max(
        timeout for timeout in timeouts.values() if timeout is not None
    )
    for client in clients:  # first ask every worker to drain, so they drain in parallel
        try:
            client._exit_begin(deadline)
        except Exception:
            logger.exception("analytics.exit_failed")
    for client in clients:
        try:
            client._exit_finish(deadline)
        except Exception:
            logger.exception("analytics.exit_failed")


def _after_fork_in_child() -> None:
    global _exit_lock, _sigterm_drain_once, _sigterm_drained
    _exit_lock = threading.Lock()  # another thread may have held it at the fork
    _sigterm_drain_once = threading.Lock()
    _sigterm_drained = False
    _forget_wakeup_pipe()
    reseed_after_fork()
    for client in list(_clients):
        client._after_fork_in_child()
    # multiprocessing's fork children end with os._exit, skipping atexit; its
    # bootstrap clears finalizers right after the fork, so register once it ran.
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None and _clients:
        _register_after_mp_fork(mp_util)


def _register_mp_finalizer(_: object) -> None:
    global _mp_finalizer_pid
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is None or _mp_finalizer_pid == os.getpid():
        return
    # A high priority: runs before the finalizers of multiprocessing's own
    # queues and managers, which the application may still need meanwhile.
    mp_util.Finalize(None, close_all_at_exit, exitpriority=100)
    _mp_finalizer_pid = os.getpid()
    _drain_on_sigterm()


def _drain_on_sigterm() -> None:
    """In a multiprocessing child's main thread, if SIGTERM is still the default."""
    global _sigterm_pid
    if _sigterm_pid == os.getpid() or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return  # the application's (or the framework's) own handler decides
    signal.signal(signal.SIGTERM, _on_sigterm)
    _sigterm_pid = os.getpid()
    _watch_signal_wakeups()


def _on_sigterm(signum: int, frame: object) -> None:
    # Runs in the main thread between two bytecodes, maybe inside track() with
    # a client's lock held: take no lock here (but a non-blocking try), only
    # start the drain elsewhere.
    if _sigterm_drained:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    else:
        _start_sigterm_drain()


def _start_sigterm_drain() -> None:
    """From the handler or the wakeup watcher, whichever is first; once per process."""
    if _sigterm_drain_once.acquire(blocking=False):
        with threads_for_us():  # the SIGTERM it sends itself must reach the main thread
            _thread.start_new_thread(_drain_then_terminate, ())


def _watch_signal_wakeups() -> None:
    """A thread that learns of SIGTERM without the main thread.

    Python runs a signal's handler in the main thread, at its next bytecode: a
    SIGTERM that lands just before the main thread blocks in C (a Pool worker
    taking its queue's lock, which ``terminate()`` holds for good) is never
    handled, and the worker outlives ``terminate()`` (1 run in ~20 under CPU
    load). CPython's C-level handler also writes the signal's number to the
    wakeup fd, in whatever thread it runs: this thread reads it there. Not
    when the process has a wakeup fd already (an event loop's): that one
    stays, and the handler alone must do.
    """
    global _wakeup_fds
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no SIGTERM from terminate()
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # set_wakeup_fd's requirement: a signal never blocks
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except (ValueError, OSError):
        previous = None
    if previous != -1:
        if previous is not None:
            signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
        return
    _wakeup_fds = (read_fd, write_fd)
    with threads_for_us():
        _thread.start_new_thread(_read_wakeups, (read_fd,))


def _read_wakeups(read_fd: int) -> None:
    while True:
        try:
            signals = os.read(read_fd, 64)
        except OSError:
            return
        if not signals:
            return
        if signal.SIGTERM in signals:
            _start_sigterm_drain()


def _forget_wakeup_pipe() -> None:
    """In a forked child: the pipe and its reader are the parent's (its thread
    did not come along), and a signal here must not wake the parent."""
    global _wakeup_fds
    if _wakeup_fds is None:
        return
    with contextlib.suppress(ValueError):  # not the main thread: nothing to change
        current = signal.set_wakeup_fd(-1)
        if current not in (_wakeup_fds[1], -1):  # someone else's since: theirs stays
            signal.set_wakeup_fd(current)
    for fd in _wakeup_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _wakeup_fds = None


def _drain_then_terminate() -> None:
    global _sigterm_drained
    try:
        close_all_at_exit()
    except BaseException:
        logger.exception("analytics.exit_failed")
    finally:
        _sigterm_drained = True
        os.kill(os.getpid(), signal.SIGTERM)  # the handler, in the main thread, ends it
        time.sleep(1.0)  # a main thread stuck in C code never runs the handler
        os._exit(128 + signal.SIGTERM)
