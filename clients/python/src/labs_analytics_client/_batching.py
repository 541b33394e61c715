"""The bounded queue, when a batch closes, and what a batch looks like on the wire.

Pure logic with no locks and no clock of its own: the clients hold the lock
and pass ``now`` in, so the rules can be tested with a fake clock.
"""

from __future__ import annotations

import gzip as gzip_module
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from labs_analytics_client.contract import MAX_BODY_BYTES, MAX_EVENTS_PER_REQUEST

# ``{"sent_at":"2026-11-27T16:20:00.123456Z","events":[`` … ``]}``
ENVELOPE_BYTES = 64
GZIP_LEVEL = 5  # past 5, little smaller and much slower on event JSON


@dataclass(slots=True)
class QueuedEvent:
    seq: int  # 1, 2, 3… in enqueue order: flush() waits for a sequence number
    event_id: str
    data: bytes
    enqueued_at: float  # monotonic


class EventQueue:
    """FIFO of encoded events, bounded in count and bytes; full → the newest is refused."""

    def __init__(self, *, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.items: deque[QueuedEvent] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.items)

    def put(self, event: QueuedEvent) -> int:
        """Append; the queue's new length, or 0 if it is full (the event is refused)."""
        items = self.items
        size = len(event.data)
        if len(items) >= self.max_events or self.bytes + size > self.max_bytes:
            return 0
        items.append(event)
        self.bytes += size
        return len(items)

    def push_front(self, events: Sequence[QueuedEvent]) -> None:
        """Give back a batch taken but not delivered (it goes first, in order).

        Batches in flight at once may come back in any order; the queue stays
        in sequence order, so its first event is always its oldest.
        """
        items = self.items
        for event in reversed(events):
            items.appendleft(event)
            self.bytes += len(event.data)
        count = len(events)
        if any(items[i].seq > items[i + 1].seq for i in range(min(count, len(items) - 1))):
            self.items = deque(sorted(items, key=lambda event: event.seq))

    def seconds_until_ready(
        self, *, now: float, batch: BatchLimits, flush_upto: int, closing: bool
    ) -> float | None:
        """0 when a batch should close now; how long to wait; None when empty.

        A batch closes on count, on bytes, on the oldest event having waited
        ``flush_interval``, or because a flush or close asked for it.
        """
        if not self.items:
            return None
        first = self.items[0]
        if (
            closing
            or first.seq <= flush_upto
            or len(self.items) >= batch.max_events
            or self.bytes + len(self.items) + ENVELOPE_BYTES >= batch.max_bytes
        ):
            return 0.0
        return max(0.0, first.enqueued_at + batch.interval - now)

    def take(self, batch: BatchLimits) -> list[QueuedEvent]:
        """The next batch: up to ``max_events`` and ``max_bytes`` (at least one event)."""
        taken: list[QueuedEvent] = []
        size = ENVELOPE_BYTES
        while self.items and len(taken) < batch.max_events:
            event = self.items[0]
            if taken and size + len(event.data) + 1 > batch.max_bytes:
                break
            self.items.popleft()
            self.bytes -= len(event.data)
            size += len(event.data) + 1
            taken.append(event)
        return taken

    def clear(self) -> list[QueuedEvent]:
        events = list(self.items)
        self.items.clear()
        self.bytes = 0
        return events


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_events: int
    max_bytes: int
    interval: float

    def __post_init__(self) -> None:
        if not 1 <= self.max_events <= MAX_EVENTS_PER_REQUEST:
            raise ValueError(f"batch_size must be 1 to {MAX_EVENTS_PER_REQUEST}")
        if not 4096 <= self.max_bytes <= MAX_BODY_BYTES:
            raise ValueError(f"max_batch_bytes must be 4096 to {MAX_BODY_BYTES}")
        if self.interval < 0:
            raise ValueError("flush_interval must be >= 0")


def encode_body(events: Sequence[QueuedEvent], *, sent_at: str, gzip: bool) -> bytes:
    """``{"sent_at": …, "events": [...]}``, gzip-compressed unless told otherwise."""
    body = b"".join(
        (
            b'{"sent_at":"',
            sent_at.encode(),
            b'","events":[',
            b",".join(event.data for event in events),
            b"]}",
        )
    )
    if gzip:
        return gzip_module.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
    return body


def halves(events: Sequence[QueuedEvent]) -> tuple[list[QueuedEvent], list[QueuedEvent]]:
    middle = len(events) // 2
    return list(events[:middle]), list(events[middle:])
