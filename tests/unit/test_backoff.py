"""Retry delays: full jitter under an exponential ceiling that stops at the maximum."""

from __future__ import annotations

import random

import pytest

from labs_analytics.flusher import backoff
from labs_analytics.flusher.backoff import backoff_seconds
from labs_analytics.flusher.rollup_loop import MAX_BACKOFF_FACTOR, next_wait


@pytest.fixture
def ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the jitter always pick the top of its range, so the ceiling is visible."""
    monkeypatch.setattr(backoff.random, "uniform", lambda low, high: high)


@pytest.mark.parametrize(
    ("attempt", "expected_seconds"),
    [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6), (6, 2.0), (7, 2.0), (50, 2.0)],
)
@pytest.mark.usefixtures("ceiling")
def test_ceiling_doubles_per_attempt_until_the_maximum(
    attempt: int, expected_seconds: float
) -> None:
    assert backoff_seconds(attempt, initial_ms=100, max_ms=2000) == pytest.approx(expected_seconds)


@pytest.mark.usefixtures("ceiling")
def test_delay_is_in_seconds_not_milliseconds() -> None:
    assert backoff_seconds(1, initial_ms=250, max_ms=10_000) == pytest.approx(0.25)


@pytest.mark.usefixtures("ceiling")
@pytest.mark.parametrize("attempt", [31, 64, 1000, 10**9])
def test_huge_attempt_numbers_are_capped_at_the_maximum_without_overflow(attempt: int) -> None:
    delay = backoff_seconds(attempt, initial_ms=100, max_ms=10_000)
    assert isinstance(delay, float)
    assert delay == pytest.approx(10.0)


def test_jitter_lower_bound_is_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backoff.random, "uniform", lambda low, high: low)
    assert backoff_seconds(5, initial_ms=100, max_ms=10_000) == 0


@pytest.mark.parametrize("attempt", [1, 2, 3, 8, 20, 1000])
def test_every_delay_lies_within_zero_and_the_ceiling(attempt: int) -> None:
    random.seed(attempt)
    ceiling_seconds = min(10_000, 100 * 2 ** min(attempt - 1, 200)) / 1000
    delays = [backoff_seconds(attempt, initial_ms=100, max_ms=10_000) for _ in range(500)]
    assert all(0 <= d <= ceiling_seconds for d in delays)


def test_delays_are_jittered_not_all_equal() -> None:
    random.seed(0)
    delays = {backoff_seconds(3, initial_ms=100, max_ms=10_000) for _ in range(50)}
    assert len(delays) > 40


def test_the_rollup_refresh_backs_off_after_giving_way_and_resets_once_done() -> None:
    interval = 5.0
    wait = interval
    waits = []
    for outcome in ["gave way", "gave way", "deferred", "gave way"] + ["gave way"] * 6:
        wait = next_wait(wait, interval, outcome)
        waits.append(wait)
    # Doubled after each give-way, kept while deferring, capped at 64 intervals.
    assert waits == [10, 20, 20, 40, 80, 160, 320, 320, 320, 320]
    assert MAX_BACKOFF_FACTOR * interval == 320
    assert next_wait(320, interval, "refreshed") == interval
    assert next_wait(320, interval, "failed") == interval
    assert next_wait(interval, interval, "deferred") == interval
