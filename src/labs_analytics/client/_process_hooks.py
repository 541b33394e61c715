"""Process hooks, installed when the first client is made (never at import).

* ``atexit``: every open client is closed with one shared, bounded deadline
  (the largest ``shutdown_timeout``), so queued events are delivered and a
  process never hangs at exit, even with the server unreachable.
* ``os.register_at_fork``: in a child, every client gets a fresh lock, queue,
  stats, worker and connection pool; what it inherited is discarded (the
  parent still owns and delivers those events), and the id generator is
  reseeded. Under ``multiprocessing``'s fork start method, whose children
  leave through ``os._exit`` and so skip ``atexit``, a multiprocessing
  finalizer does the same drain.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING

from labs_analytics.client._events import reseed_after_fork

if TYPE_CHECKING:
    from labs_analytics.client._core import BaseClient

logger = logging.getLogger("labs_analytics.client")

_clients: weakref.WeakSet[BaseClient] = weakref.WeakSet()
_hooks_lock = threading.Lock()
_hooks_installed = False


class _Marker:
    """A weak-referenceable object for multiprocessing's after-fork registry."""


_MP_MARKER = _Marker()


def register(client: BaseClient) -> None:
    global _hooks_installed
    with _hooks_lock:
        _clients.add(client)
        if not _hooks_installed:
            atexit.register(close_all_at_exit)
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _hooks_installed = True


def close_all_at_exit() -> None:
    """Drain every open client with one bounded wait (the largest shutdown_timeout)."""
    clients = [client for client in list(_clients) if not client._closed and client._enabled]
    if not clients:
        return
    deadline = time.monotonic() + max(client._shutdown_timeout for client in clients)
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
    reseed_after_fork()
    for client in list(_clients):
        client._after_fork_in_child()
    # multiprocessing's fork children end with os._exit, skipping atexit; its
    # bootstrap clears finalizers right after the fork, so register once it ran.
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None and _clients:
        mp_util.register_after_fork(_MP_MARKER, _register_mp_finalizer)


def _register_mp_finalizer(_: object) -> None:
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.Finalize(None, close_all_at_exit, exitpriority=100)
