"""Which process and thread served a request, and which process imported the app.

The test apps send these as response headers: a test can then tell that both
workers served, that gunicorn recycled workers (new pids), that a gthread
worker used several threads, or that ``--preload`` imported the app (and made
its client) in the master, before the fork.
"""

from __future__ import annotations

import os
import threading

LOADED_IN = os.getpid()  # the process that imported the app (this module comes with it)


def served_by() -> dict[str, str]:
    return {
        "X-Worker": str(os.getpid()),
        "X-Thread": str(threading.get_ident()),
        "X-Loaded-In": str(LOADED_IN),
    }
