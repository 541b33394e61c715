"""The clients' options, what ``stats()`` returns, and what ``on_drop`` receives."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from labs_analytics.client._exceptions import DeliveryError


class ClientOptions(TypedDict, total=False):
    """The options both clients take (see the README's "Python SDK" for each one)."""

    base_url: str
    batch_size: int
    max_batch_bytes: int
    flush_interval: float
    max_queue_size: int
    max_queue_bytes: int
    timeout: float
    max_retries: int | None
    max_retry_time: float
    retry_backoff_initial: float
    retry_backoff_max: float
    retry_after_max: float
    gzip: bool
    on_error: Callable[[DeliveryError], None] | None
    on_drop: Callable[[DroppedEvent], None] | None
    sync_mode: bool
    enabled: bool
    context: Mapping[str, Any] | None
    shutdown_timeout: float
    strict: bool
    headers: Mapping[str, str] | None


@dataclass(frozen=True, slots=True)
class DroppedEvent:
    """An event ``track()`` refused (given to ``on_drop``)."""

    reason: str
    name: object
    event_id: str | None
    message: str


@dataclass(frozen=True, slots=True)
class ClientStats:
    """Counters since the client was made (or since the fork that made this process).

    ``queued``: waiting in the queue; ``in_flight``: in the batch being sent;
    ``sent``: delivered (the server answered 2xx); ``dropped``: refused by
    ``track()`` (never queued), by reason; ``failed``: queued but not delivered
    (``on_error`` was called), by reason; ``retried``: requests sent again after
    retryable trouble; ``batches``: requests the server accepted.
    """

    queued: int
    in_flight: int
    sent: int
    dropped: int
    failed: int
    retried: int
    batches: int
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    failed_by_reason: dict[str, int] = field(default_factory=dict)
