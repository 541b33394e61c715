"""Batching and the retry policy, as pure logic on a fake clock.

The delivery steps yield ``Send`` and ``Sleep``; here the test plays the
network (the outcomes it sends back) and the clock (a Sleep advances it).
What the real server and network do is covered in tests/sdk/.
"""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import pytest

from labs_analytics_client import RequestRejected, RetriesExhausted
from labs_analytics_client._batching import (
    ENVELOPE_BYTES,
    BatchLimits,
    EventQueue,
    QueuedEvent,
    encode_body,
)
from labs_analytics_client._delivery import Delivery, Outcome, Reply, Send, Sleep
from labs_analytics_client._exceptions import DeliveryError, UnexpectedError
from labs_analytics_client._retry import RetryPolicy, parse_retry_after


def queued(n: int, size: int = 10) -> list[QueuedEvent]:
    return [
        QueuedEvent(i + 1, f"id-{i}", json.dumps({"i": i, "pad": "x" * size}).encode(), 0.0)
        for i in range(n)
    ]


@dataclass
class FakeClock:
    now: float = 1000.0
    abort: float | None = None
    delivered_batches: list[list[str]] = field(default_factory=list)
    failures: list[tuple[list[str], DeliveryError]] = field(default_factory=list)
    retries: list[float] = field(default_factory=list)
    given_back: list[list[str]] = field(default_factory=list)
    unanswered: list[list[str]] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    def sent_at(self) -> str:
        return f"t={self.now:.3f}"

    def abort_at(self) -> float | None:
        return self.abort

    def delivered(self, events: Sequence[QueuedEvent]) -> None:
        self.delivered_batches.append([e.event_id for e in events])

    def retrying(self, events: Sequence[QueuedEvent], delay: float, reason: str) -> None:
        self.retries.append(delay)

    def failed(self, events: Sequence[QueuedEvent], error: DeliveryError) -> None:
        self.failures.append(([e.event_id for e in events], error))

    def abandoned(
        self, events: Sequence[QueuedEvent], unanswered: Sequence[QueuedEvent] = ()
    ) -> None:
        self.given_back.append([e.event_id for e in events])
        self.unanswered.append([e.event_id for e in unanswered])


def reply(status: int, body: object = None, retry_after: str | None = None) -> Reply:
    return Reply(status, retry_after, json.dumps(body or {}).encode())


def run(
    clock: FakeClock,
    batch: list[QueuedEvent],
    answer: object,
    policy: RetryPolicy | None = None,
) -> list[Send | Sleep]:
    """Drive the steps; ``answer(send) -> Outcome`` plays the network."""
    delivery = Delivery(
        hooks=clock,
        policy=policy or RetryPolicy(),
        timeout=10.0,
        gzip=False,
        rng=random.Random(7),
    )
    steps = delivery.steps(batch)
    actions: list[Send | Sleep] = []
    outcome: Outcome | None = None
    try:
        action = next(steps)
        while True:
            actions.append(action)
            if isinstance(action, Sleep):
                clock.now += action.seconds
                outcome = True
            else:
                clock.now += 0.01
                outcome = answer(action)  # type: ignore[operator]
            action = steps.send(outcome)
    except StopIteration:
        pass
    return actions


def events_in(send: Send) -> list[str]:
    return [f"id-{e['i']}" for e in json.loads(send.body)["events"]]


# --- the queue ----------------------------------------------------------------------------


def test_the_queue_refuses_the_newest_when_full_by_count_or_bytes() -> None:
    queue = EventQueue(max_events=3, max_bytes=10_000)
    assert [queue.put(e) for e in queued(4)] == [1, 2, 3, 0]
    by_bytes = EventQueue(max_events=100, max_bytes=100)
    results = [by_bytes.put(e) for e in queued(5, size=20)]
    assert results == [1, 2, 0, 0, 0]
    assert by_bytes.bytes <= 100


def test_a_batch_closes_on_count_bytes_interval_flush_or_close() -> None:
    limits = BatchLimits(max_events=3, max_bytes=4096, interval=1.0)
    queue = EventQueue(max_events=100, max_bytes=10**6)
    assert queue.seconds_until_ready(now=0, batch=limits, flush_upto=0, closing=False) is None
    for event in queued(2):
        event.enqueued_at = 10.0
        queue.put(event)

    def ready(now: float, flush_upto: int = 0, closing: bool = False) -> float | None:
        return queue.seconds_until_ready(
            now=now, batch=limits, flush_upto=flush_upto, closing=closing
        )

    assert ready(10.25) == pytest.approx(0.75)  # the oldest waits flush_interval
    assert ready(11.0) == 0
    assert ready(10.25, flush_upto=1) == 0
    assert ready(10.25, closing=True) == 0
    queue.put(queued(3)[2])
    assert ready(10.0) == 0  # count
    big = EventQueue(max_events=100, max_bytes=10**6)
    big.put(QueuedEvent(1, "big", b"x" * (4096 - ENVELOPE_BYTES), 10.0))
    assert big.seconds_until_ready(now=10.0, batch=limits, flush_upto=0, closing=False) == 0


def test_take_respects_count_and_bytes_and_always_takes_one() -> None:
    queue = EventQueue(max_events=100, max_bytes=10**6)
    for event in queued(10, size=1000):
        queue.put(event)
    batch = queue.take(BatchLimits(max_events=100, max_bytes=4096, interval=1))
    assert len(batch) == 3
    body = encode_body(batch, sent_at="2026-11-27T16:20:00.000000Z", gzip=False)
    assert len(body) <= 4096
    huge = EventQueue(max_events=10, max_bytes=10**6)
    huge.put(QueuedEvent(1, "huge", b"x" * 5000, 0))
    assert len(huge.take(BatchLimits(max_events=10, max_bytes=4096, interval=1))) == 1
    assert len(queue.take(BatchLimits(max_events=2, max_bytes=10**6, interval=1))) == 2


def test_the_body_is_the_batch_envelope_gzipped() -> None:
    body = encode_body(queued(2), sent_at="2026-11-27T16:20:00.000000Z", gzip=True)
    decoded = json.loads(gzip.decompress(body))
    assert decoded["sent_at"] == "2026-11-27T16:20:00.000000Z"
    assert [e["i"] for e in decoded["events"]] == [0, 1]


# --- the retry policy ---------------------------------------------------------------------


def test_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    policy = RetryPolicy(backoff_initial=0.5, backoff_max=4.0)
    rng = random.Random(1)
    for retry, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 4.0), (500, 4.0)]:
        samples = [policy.backoff(retry, rng) for _ in range(2000)]
        assert 0 <= min(samples) < cap * 0.05
        assert cap * 0.95 < max(samples) <= cap


def test_retry_after_is_a_minimum_but_clamped() -> None:
    policy = RetryPolicy(backoff_initial=0.1, backoff_max=0.2, retry_after_max=60)
    rng = random.Random(2)
    assert all(3 <= policy.delay(1, 3.0, rng) <= 3.0 for _ in range(50))
    assert policy.delay(1, 3600.0, rng) == 60
    assert policy.delay(1, None, rng) <= 0.1


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert parse_retry_after("5") == 5
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("inf") is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(30)


# --- delivering a batch -------------------------------------------------------------------


def test_a_202_delivers_the_batch_in_one_request() -> None:
    clock = FakeClock()
    actions = run(clock, queued(3), lambda send: reply(202))
    assert len(actions) == 1
    assert clock.delivered_batches == [["id-0", "id-1", "id-2"]]


def test_retryable_statuses_and_errors_are_retried_with_new_sent_at_and_the_same_events() -> None:
    answers = iter(
        [
            reply(503, retry_after="3"),
            httpx.ConnectError("refused"),
            httpx.ReadTimeout("slow"),
            httpx.RemoteProtocolError("dropped"),
            reply(429, retry_after="2"),
            reply(408),
            reply(500),
            reply(202),
        ]
    )
    clock = FakeClock()
    actions = run(clock, queued(2), lambda send: next(answers))
    sends = [a for a in actions if isinstance(a, Send)]
    sleeps = [a for a in actions if isinstance(a, Sleep)]
    assert len(sends) == 8
    assert len(sleeps) == 7
    assert sleeps[0].seconds >= 3  # Retry-After
    assert sleeps[4].seconds >= 2
    assert len(clock.retries) == 7
    bodies = [json.loads(s.body) for s in sends]
    assert len({b["sent_at"] for b in bodies}) == 8  # a new sent_at each attempt
    assert all(b["events"] == bodies[0]["events"] for b in bodies)  # the same events
    assert clock.delivered_batches == [["id-0", "id-1"]]
    assert clock.failures == []


@pytest.mark.parametrize("status", [400, 401, 403, 404, 415, 301])
def test_other_client_errors_drop_the_batch_at_once(status: int) -> None:
    clock = FakeClock()
    body = {"error": "unauthenticated", "message": "unknown key", "details": []}
    actions = run(clock, queued(2), lambda send: reply(status, body))
    assert len(actions) == 1
    ((ids, error),) = clock.failures
    assert ids == ["id-0", "id-1"]
    assert isinstance(error, RequestRejected)
    assert error.status_code == status
    assert error.error == "unauthenticated"


def test_a_413_halves_the_batch_recursively_and_a_lone_event_is_dropped() -> None:
    clock = FakeClock()
    # The "server" takes at most 2 events, and never event 5 (too large alone).
    actions = run(
        clock,
        queued(8),
        lambda send: reply(413) if send.events > 2 or "id-5" in events_in(send) else reply(202),
    )
    assert [ids for ids in clock.delivered_batches] == [
        ["id-0", "id-1"],
        ["id-2", "id-3"],
        ["id-4"],
        ["id-6", "id-7"],
    ]
    ((ids, error),) = clock.failures
    assert ids == ["id-5"]
    assert isinstance(error, RequestRejected)
    assert not any(isinstance(a, Sleep) for a in actions)  # splitting is not retrying


def test_a_422_naming_events_drops_them_and_sends_the_rest_at_once() -> None:
    clock = FakeClock()
    details = [
        {"index": 1, "field": "properties", "message": "too large"},
        {"index": 3, "field": "timestamp", "message": "in the future"},
        {"index": 3, "field": "user", "message": "too long"},
    ]
    answers = iter([reply(422, {"error": "invalid_events", "details": details}), reply(202)])
    actions = run(clock, queued(5), lambda send: next(answers))
    sends = [a for a in actions if isinstance(a, Send)]
    assert [events_in(s) for s in sends] == [
        ["id-0", "id-1", "id-2", "id-3", "id-4"],
        ["id-0", "id-2", "id-4"],
    ]
    ((ids, error),) = clock.failures
    assert ids == ["id-1", "id-3"]
    assert isinstance(error, RequestRejected)
    assert clock.delivered_batches == [["id-0", "id-2", "id-4"]]


def test_a_422_with_more_problems_than_listed_drops_every_event_it_names() -> None:
    # The server lists the first problems, then one item with the totals and
    # every invalid index: all of those are dropped in one round trip.
    clock = FakeClock()
    details = [{"index": 0, "field": f"x{i}", "message": "unknown field"} for i in range(20)]
    details.append(
        {
            "index": None,
            "field": None,
            "type": "too_many_problems",
            "message": "60 problems in 3 events; the first 20 are listed",
            "problems": 60,
            "invalid_events": 3,
            "invalid_indexes": [0, 2, 4],
        }
    )
    answers = iter([reply(422, {"error": "invalid_events", "details": details}), reply(202)])
    actions = run(clock, queued(6), lambda send: next(answers))
    sends = [a for a in actions if isinstance(a, Send)]
    assert [events_in(s) for s in sends][1] == ["id-1", "id-3", "id-5"]
    ((ids, error),) = clock.failures
    assert ids == ["id-0", "id-2", "id-4"]
    assert isinstance(error, RequestRejected)
    assert clock.delivered_batches == [["id-1", "id-3", "id-5"]]


def test_a_422_summary_without_indexes_drops_the_batch() -> None:
    clock = FakeClock()
    details = [{"index": None, "field": None, "type": "too_many_problems", "problems": 50}]
    run(clock, queued(3), lambda send: reply(422, {"details": details}))
    ((ids, _),) = clock.failures
    assert ids == ["id-0", "id-1", "id-2"]


def test_a_422_without_usable_indices_drops_the_batch() -> None:
    clock = FakeClock()
    details = [{"index": None, "field": "sent_at", "message": "bad"}]
    run(clock, queued(3), lambda send: reply(422, {"details": details}))
    ((ids, _),) = clock.failures
    assert ids == ["id-0", "id-1", "id-2"]


def test_retries_stop_at_max_retry_time() -> None:
    clock = FakeClock()
    policy = RetryPolicy(max_retry_time=30, backoff_initial=1, backoff_max=8)
    actions = run(clock, queued(1), lambda send: httpx.ConnectError("refused"), policy)
    ((_, error),) = clock.failures
    assert isinstance(error, RetriesExhausted)
    assert isinstance(error.last_exception, httpx.ConnectError)
    slept = sum(a.seconds for a in actions if isinstance(a, Sleep))
    assert slept <= 30
    assert clock.now - 1000 <= 30 + 1


def test_retries_stop_at_max_retries() -> None:
    clock = FakeClock()
    actions = run(clock, queued(1), lambda send: reply(503), RetryPolicy(max_retries=2))
    assert len([a for a in actions if isinstance(a, Send)]) == 3
    ((_, error),) = clock.failures
    assert isinstance(error, RetriesExhausted)
    assert error.last_status == 503
    assert error.attempts == 3


def test_an_exception_the_client_cannot_classify_is_reported_not_retried() -> None:
    for exc in (ValueError("bug"), httpx.UnsupportedProtocol("ftp"), httpx.LocalProtocolError("x")):
        clock = FakeClock()
        actions = run(clock, queued(2), lambda send, exc=exc: exc)  # type: ignore[misc]
        assert len(actions) == 1
        ((_, error),) = clock.failures
        assert isinstance(error, UnexpectedError)
        assert error.__cause__ is exc


def test_the_close_deadline_ends_retries_and_hands_back_what_is_left() -> None:
    clock = FakeClock(abort=1005.0)
    actions = run(clock, queued(4), lambda send: reply(503, retry_after="2"))
    sends = [a for a in actions if isinstance(a, Send)]
    assert all(s.timeout <= 5.0 for s in sends)  # never waits past the deadline
    assert len(sends) in (2, 3)
    assert clock.failures == []  # the client reports a close once, for every batch
    assert clock.given_back == [["id-0", "id-1", "id-2", "id-3"]]
    assert clock.unanswered == [[]]
    assert clock.now <= 1005.0


def test_a_request_unanswered_at_the_close_deadline_is_in_flight_not_given_up() -> None:
    clock = FakeClock(abort=1005.0)

    def black_hole(send: Send) -> Outcome:
        clock.now += send.timeout  # the timeout, cut to the deadline, runs out
        return httpx.ReadTimeout("no answer")

    actions = run(clock, queued(3), black_hole)
    assert [a.timeout for a in actions if isinstance(a, Send)] == [5.0]
    assert clock.failures == []
    assert clock.given_back == [[]]
    assert clock.unanswered == [["id-0", "id-1", "id-2"]]


def test_a_time_limit_bounds_the_whole_delivery_requests_included() -> None:
    """sync_mode's bound: no request outlasts it and no retry starts after it."""
    clock = FakeClock()
    delivery = Delivery(
        hooks=clock, policy=RetryPolicy(), timeout=10.0, gzip=False, rng=random.Random(7)
    )
    steps = delivery.steps(queued(2), give_up_at=1003.0)
    action = next(steps)
    sends = 0
    with contextlib.suppress(StopIteration):
        while True:
            if isinstance(action, Send):
                sends += 1
                assert action.timeout <= 1003.0 - clock.now
                clock.now += action.timeout  # a black hole: every request times out
                action = steps.send(httpx.ReadTimeout("no answer"))
            else:
                clock.now += action.seconds
                action = steps.send(True)
    assert clock.now <= 1003.0
    ((ids, error),) = clock.failures
    assert isinstance(error, RetriesExhausted)
    assert ids == ["id-0", "id-1"]
    assert error.attempts == sends
    assert isinstance(error.last_exception, httpx.ReadTimeout)
