"""The clients' options, what ``stats()`` returns, and what ``on_drop`` receives."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict

from labs_analytics_client._exceptions import DeliveryError


class ClientOptions(TypedDict, total=False):
    """The options both clients take (see the README's "Python SDK" for each one)."""

    base_url: str
    batch_size: int
    max_batch_bytes: int
    flush_interval: float
    max_in_flight: int
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
    super_properties: Mapping[str, Any] | None
    before_send: Callable[[dict[str, Any]], dict[str, Any] | None] | None
    debug: bool
    send: bool


@dataclass(frozen=True, slots=True)
class DroppedEvent:
    """An event ``track()`` refused (given to ``on_drop``)."""

    reason: str
    name: object
    event_id: str | None
    message: str


@dataclass(frozen=True, slots=True)
class ClientStats(Mapping[str, Any]):
    """Counters since the client was made (or since the fork that made this process).

    Read them as attributes (``stats.sent``) or as a read-only mapping
    (``stats["dropped_by_reason"]``, ``dict(stats)``), whichever the caller prefers.

    ``queued``: waiting in the queue; ``in_flight``: in the batches being sent;
    ``sent``: delivered (the server answered 2xx); ``discarded``: accepted by
    ``track()`` and not sent because the client has ``send=False``; ``dropped``: refused by
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
    discarded: int = 0

    def __getitem__(self, key: str) -> Any:
        if key not in _STATS_FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_STATS_FIELDS)

    def __len__(self) -> int:
        return len(_STATS_FIELDS)


_STATS_FIELDS = tuple(f.name for f in fields(ClientStats))
