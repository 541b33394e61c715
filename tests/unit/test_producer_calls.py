"""How the producer groups the appends of one turn of the loop into script calls."""

from __future__ import annotations

from typing import Any, cast

from labs_analytics.queue.producer import (
    MAX_APPENDS_PER_CALL,
    MAX_SHARED_BYTES,
    MAX_SHARED_EVENTS,
    _group,
    _Waiting,
)

# Grouping never touches a waiter's future.
NO_FUTURE = cast(Any, None)


def shared(events: int, size: int = 100) -> _Waiting:
    return _Waiting(b"x" * size, 2, events, size, NO_FUTURE)


def own_entry(size: int = 100) -> _Waiting:
    return _Waiting(b"x" * size, 7, 0, 0, NO_FUTURE)


def sizes(calls: list[list[_Waiting]]) -> list[int]:
    return [len(call) for call in calls]


def test_small_appends_share_one_call() -> None:
    assert sizes(list(_group([shared(1) for _ in range(50)]))) == [50]


def test_a_call_holds_at_most_a_shared_entrys_events() -> None:
    batch = [shared(400), shared(400), shared(400), shared(1)]
    # 800 + 400 would pass MAX_SHARED_EVENTS (1000): the third starts a call.
    assert MAX_SHARED_EVENTS == 1000
    assert sizes(list(_group(batch))) == [2, 2]


def test_an_append_larger_than_a_shared_entry_goes_alone() -> None:
    batch = [shared(1), shared(MAX_SHARED_EVENTS + 1), shared(1)]
    assert sizes(list(_group(batch))) == [1, 1, 1]


def test_a_call_holds_at_most_a_shared_entrys_bytes() -> None:
    half = MAX_SHARED_BYTES // 2
    assert sizes(list(_group([shared(1, half), shared(1, half), shared(1, 1)]))) == [2, 1]


def test_entries_of_their_own_count_only_against_the_call_caps() -> None:
    batch = [shared(MAX_SHARED_EVENTS), own_entry(), own_entry(), shared(1)]
    assert sizes(list(_group(batch))) == [3, 1]
    many = [own_entry() for _ in range(MAX_APPENDS_PER_CALL + 1)]
    assert sizes(list(_group(many))) == [MAX_APPENDS_PER_CALL, 1]
