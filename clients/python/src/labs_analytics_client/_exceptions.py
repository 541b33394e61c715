"""What can go wrong, as types.

``track()`` never raises for network or server trouble: delivery problems are
reported to the ``on_error`` callback as a ``DeliveryError`` (and counted in
``stats().failed``), and events refused at ``track()`` are reported to
``on_drop`` (and counted in ``stats().dropped``). The only exception ``track()``
raises is ``InvalidEvent``, and only when the client was made with
``strict=True`` (for tests and development).

AnalyticsError
├── InvalidEvent            track() with strict=True: the event breaks the wire
│                           contract (also a ValueError); .reason says which rule
└── DeliveryError           events that entered the queue and were not delivered;
    │                       .event_ids lists them, .events are their payloads
    │                       (JSON-ready dicts: save them, then client.replay()).
    │                       Given to on_error, never raised.
    ├── RequestRejected     the server refused them and a retry cannot help: a 4xx
    │                       other than 408/429 (401 bad key, 403, 422 invalid, a
    │                       lone event over the body limit: 413). .status_code,
    │                       .error, .message, .details are the server's answer
    ├── RetriesExhausted    retryable trouble (network error, timeout, 408, 429,
    │                       5xx) outlasted max_retries or max_retry_time;
    │                       .last_status or .last_exception say what it was
    ├── ShutdownTimeout     still pending when close()'s deadline (or the exit
    │                       hook's) passed
    └── UnexpectedError     an exception the client cannot classify (a bug, a bad
                            URL, a transport that raised something else); reported
                            once, not retried. The original is the __cause__.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


class AnalyticsError(Exception):
    """Base of every error of the SDK."""


class InvalidEvent(AnalyticsError, ValueError):
    """An event that breaks the wire contract; raised by ``track()`` only when strict."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class DeliveryError(AnalyticsError):
    """Events that were queued and could not be delivered."""

    def __init__(
        self, message: str, *, event_ids: Sequence[str], payloads: Sequence[bytes] = ()
    ) -> None:
        super().__init__(message)
        self.message = message
        self.event_ids = list(event_ids)
        # Each event's JSON exactly as track() made it (same id, same timestamp).
        self.payloads = list(payloads)

    @property
    def events(self) -> list[dict[str, Any]]:
        """The undelivered events as JSON-ready dicts, in ``event_ids`` order.

        Each carries its ``event_id`` and ``timestamp``: ``client.replay(events)``
        (now, or after saving them with ``json.dumps``) sends them again, and the
        server stores each at most once, even one that had arrived after all.
        Decoded on each access; ``payloads`` holds the raw bytes.
        """
        return [json.loads(payload) for payload in self.payloads]


class RequestRejected(DeliveryError):
    """The server refused the request with a status that a retry cannot change."""

    def __init__(
        self,
        *,
        status_code: int,
        error: str | None,
        message: str,
        details: list[Any],
        event_ids: Sequence[str],
        payloads: Sequence[bytes] = (),
    ) -> None:
        super().__init__(
            f"{status_code} {error or 'error'}: {message} ({len(event_ids)} events dropped)",
            event_ids=event_ids,
            payloads=payloads,
        )
        self.status_code = status_code
        self.error = error
        self.server_message = message
        self.details = details


class RetriesExhausted(DeliveryError):
    """Retryable trouble lasted longer than ``max_retries`` / ``max_retry_time``.

    In ``sync_mode``, also when it lasted past the call's ``shutdown_timeout``.
    """

    def __init__(
        self,
        message: str,
        *,
        event_ids: Sequence[str],
        attempts: int,
        last_status: int | None = None,
        last_exception: BaseException | None = None,
        payloads: Sequence[bytes] = (),
    ) -> None:
        super().__init__(message, event_ids=event_ids, payloads=payloads)
        self.attempts = attempts
        self.last_status = last_status
        self.last_exception = last_exception


class ShutdownTimeout(DeliveryError):
    """Events still pending when the close deadline passed."""


class UnexpectedError(DeliveryError):
    """An exception the client could not classify; the original is ``__cause__``."""
