"""Celery: one ``celery.task`` event per task run, and a drain at worker shutdown.

::

    # tasks.py, imported by the worker (and by whoever sends tasks)
    from celery import Celery
    from labs_analytics_client import AnalyticsClient
    from labs_analytics_client.celery import track_tasks

    app = Celery("tasks", broker="redis://…")
    analytics = AnalyticsClient("lak_…", base_url="https://analytics.example.org")
    track_tasks(analytics)

Each run of a task in this process tracks ``celery.task`` (or ``event_name``)
with ``task`` (the task's name), ``task_id``, ``state`` (``SUCCESS``,
``FAILURE``, ``RETRY``, ``IGNORED``, ``REJECTED``), ``success`` (the state is
``SUCCESS``), ``retries`` (how many times this task had been retried before
this run), ``duration_ms`` and, for a failure or a retry, ``error_type`` (the
exception's qualified name; for a retry, that of the exception given to
``retry(exc=…)``, else ``Retry``). A task retried twice then successful is
three events.

The run is timed from ``task_prerun`` to ``task_postrun``; ``task_postrun`` is
sent for every outcome, from a ``finally``, with the final state and, on
failure or retry, the exception as its ``retval``, so it alone decides the
event (``task_failure`` and ``task_retry`` would add nothing, and a second
source of the same event could only double it).

Draining: prefork pool processes leave through ``os._exit``, which skips the
SDK's exit hook, so the client is closed (its queue delivered, waiting at most
its ``shutdown_timeout``) at ``worker_process_shutdown`` in each pool process,
and at ``worker_shutdown`` in the main process (solo and threads pools, and
anything the main process tracked). A client made before the pool forks (at
import, as above) starts over in each pool process, by the SDK's fork hook.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import signals, states
from celery.exceptions import Retry

from labs_analytics_client._client import AnalyticsClient

__all__ = ["TaskTracker", "track_tasks"]

logger = logging.getLogger("labs_analytics_client")


class TaskTracker:
    """The signal receivers of one client; ``disconnect()`` removes them."""

    def __init__(self, client: AnalyticsClient, *, event_name: str = "celery.task") -> None:
        self.client = client
        self.event_name = event_name
        # task_id -> perf_counter at prerun. A run is one process and one
        # thread from prerun to postrun; the pop at postrun keeps this small.
        self._started: dict[str, float] = {}

    def connect(self) -> TaskTracker:
        # weak=False: the receivers are bound methods of an object nobody else
        # may hold (``track_tasks(client)`` alone must keep working).
        signals.task_prerun.connect(self._on_prerun, weak=False)
        signals.task_postrun.connect(self._on_postrun, weak=False)
        signals.worker_process_shutdown.connect(self._on_shutdown, weak=False)
        signals.worker_shutdown.connect(self._on_shutdown, weak=False)
        return self

    def disconnect(self) -> None:
        signals.task_prerun.disconnect(self._on_prerun)
        signals.task_postrun.disconnect(self._on_postrun)
        signals.worker_process_shutdown.disconnect(self._on_shutdown)
        signals.worker_shutdown.disconnect(self._on_shutdown)

    def _on_prerun(self, task_id: str | None = None, **_: Any) -> None:
        if task_id is not None:
            self._started[task_id] = time.perf_counter()

    def _on_postrun(
        self,
        task_id: str | None = None,
        task: Any = None,
        retval: Any = None,
        state: str | None = None,
        **_: Any,
    ) -> None:
        start = self._started.pop(task_id, None) if task_id is not None else None
        try:
            properties: dict[str, Any] = {
                "task": getattr(task, "name", None),
                "task_id": task_id,
                "state": state,
                "success": state == states.SUCCESS,
                "retries": getattr(getattr(task, "request", None), "retries", None),
                "duration_ms": (
                    None if start is None else round((time.perf_counter() - start) * 1000, 3)
                ),
            }
            if state != states.SUCCESS and isinstance(retval, BaseException):
                error: BaseException = retval
                if isinstance(retval, Retry):
                    error = retval.exc if isinstance(retval.exc, BaseException) else retval
                properties["error_type"] = type(error).__qualname__
            self.client.track(self.event_name, properties=properties)
        except Exception:  # a receiver's error would be logged by Celery; never fail the task
            logger.exception("analytics.celery_track_failed")

    def _on_shutdown(self, **_: Any) -> None:
        # Bounded by the client's shutdown_timeout; idempotent, so both
        # signals (and then the exit hook) may reach the same client.
        try:
            self.client.close()
        except Exception:
            logger.exception("analytics.celery_close_failed")


def track_tasks(client: AnalyticsClient, *, event_name: str = "celery.task") -> TaskTracker:
    """Track every task run in this process with ``client``; close it at worker shutdown."""
    return TaskTracker(client, event_name=event_name).connect()
