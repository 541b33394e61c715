"""The spool on a real filesystem: durable appends, shared fsyncs, replay in order, torn
tails, and several processes sharing one directory."""

from __future__ import annotations

import asyncio
import fcntl
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from labs_analytics.queue import spool as spool_module
from labs_analytics.queue.buckets import LocalBuckets
from labs_analytics.queue.producer import InvalidRateLimit, RateLimit
from labs_analytics.queue.spool import (
    CREATING_SUFFIX,
    HEADER,
    SUFFIX,
    Spool,
    SpooledEntry,
    SpoolFull,
    encode_frame,
    read_frames,
)


def fields(i: int) -> dict[bytes, bytes]:
    return {b"v": b"1", b"n": b"1", b"events": f'[{{"i": {i}}}]'.encode()}


def make_spool(tmp_path: Path, **overrides: int) -> Spool:
    options = {"max_bytes": 10_000_000, "segment_bytes": 1_000_000, **overrides}
    return Spool(tmp_path / "spool", **options)


async def collect(spool: Spool) -> list[SpooledEntry]:
    got: list[SpooledEntry] = []

    async def sink(entries: list[SpooledEntry]) -> None:
        got.extend(entries)

    await spool.replay(sink)
    return got


async def test_appended_entries_replay_in_order_and_the_files_are_removed(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, segment_bytes=500)  # several segments
    for i in range(40):
        await spool.append(fields(i), 1)
    assert len(spool.segments()) > 1
    replayed = await collect(spool)
    assert [entry.fields for entry in replayed] == [fields(i) for i in range(40)]
    assert spool.segments() == []


async def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    writes: list[int] = []
    original = spool._write_and_sync

    def counting(frames: list[bytes]) -> None:
        writes.append(len(frames))
        original(frames)

    spool._write_and_sync = counting  # type: ignore[method-assign]
    await asyncio.gather(*(spool.append(fields(i), 1) for i in range(200)))
    assert sum(writes) == 200
    assert len(writes) < 200  # group commit: one fsync covered many appends
    assert len(await collect(spool)) == 200


async def test_a_full_spool_refuses_and_keeps_what_it_has(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, max_bytes=2_000)
    accepted = 0
    refused = None
    for i in range(1000):
        try:
            await spool.append(fields(i), 1)
        except SpoolFull as exc:
            refused = exc
            break
        accepted += 1
    assert refused is not None
    assert 0 < accepted < 1000
    assert len(await collect(spool)) == accepted


async def test_a_segment_being_written_by_another_process_is_not_replayed(
    tmp_path: Path,
) -> None:
    spool = make_spool(tmp_path)
    await spool.append(fields(1), 1)
    await spool.seal()
    [segment] = spool.segments()
    fd = os.open(segment, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the writing process holds it
        # flock is per open file description: a second open in this process
        # contends like another process would.
        assert await collect(spool) == []
        assert spool.segments() == [segment]
    finally:
        os.close(fd)
    assert len(await collect(spool)) == 1


def test_a_torn_last_frame_is_ignored() -> None:
    data = encode_frame(fields(1), 1) + encode_frame(fields(2), 1)
    entries, problem = read_frames(data[:-5])
    assert [entry.fields for entry in entries] == [fields(1)]
    assert problem == "torn frame at the end"


def test_a_corrupt_frame_in_the_middle_is_reported() -> None:
    first = bytearray(encode_frame(fields(1), 1))
    first[HEADER.size + 2] ^= 0xFF  # flip a byte of the body
    entries, problem = read_frames(bytes(first) + encode_frame(fields(2), 1))
    assert entries == []
    assert problem is not None
    assert "checksum mismatch at byte 0" in problem


async def test_a_corrupt_segment_is_kept_aside_not_deleted(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    await spool.append(fields(1), 1)
    await spool.append(fields(2), 1)
    await spool.seal()
    [segment] = spool.segments()
    data = bytearray(segment.read_bytes())
    data[HEADER.size + 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert await collect(spool) == []
    assert segment.with_suffix(".corrupt").exists()


# --- several processes on one directory -------------------------------------------


async def test_a_segment_is_its_writers_from_birth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's replay, run in the instant between a segment's creation
    and its writer's lock, must not take (and delete) the segment."""
    writer = make_spool(tmp_path)
    other = make_spool(tmp_path)  # a second process on the same directory
    raced: list[list[Path]] = []
    real_flock = fcntl.flock

    def flock_after_a_rival_replay(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX and not raced:  # the writer locking its new segment
            seen = other.segments()
            raced.append(seen)
            for path in seen:  # what the rival's replay does with an empty segment
                claimed = spool_module._claim(path)
                if claimed is not None:
                    spool_module._unlink_durably(path)
                    os.close(claimed[0])
        real_flock(fd, operation)

    monkeypatch.setattr(spool_module.fcntl, "flock", flock_after_a_rival_replay)
    await writer.append(fields(1), 1)
    monkeypatch.setattr(spool_module.fcntl, "flock", real_flock)

    assert raced == [[]]  # the rival saw nothing it could replay
    await writer.seal()
    assert [entry.fields for entry in await collect(other)] == [fields(1)]


async def test_a_segment_being_written_is_not_replayed_by_another_spool(tmp_path: Path) -> None:
    writer = make_spool(tmp_path)
    other = make_spool(tmp_path)
    await writer.append(fields(1), 1)
    assert await collect(other) == []
    assert len(writer.segments()) == 1
    await writer.append(fields(2), 1)  # still its segment, still writable
    await writer.seal()
    assert [entry.fields for entry in await collect(other)] == [fields(1), fields(2)]


async def test_two_spools_replaying_at_once_send_each_entry_once(tmp_path: Path) -> None:
    writer = make_spool(tmp_path, segment_bytes=300)
    for i in range(60):
        await writer.append(fields(i), 1)
    await writer.seal()
    first, second = make_spool(tmp_path), make_spool(tmp_path)
    got: list[SpooledEntry] = []

    async def slow_sink(entries: list[SpooledEntry]) -> None:
        got.extend(entries)
        await asyncio.sleep(0.001)  # let the other replayer run meanwhile

    await asyncio.gather(first.replay(slow_sink), second.replay(slow_sink))
    assert sorted(entry.fields[b"events"] for entry in got) == sorted(
        fields(i)[b"events"] for i in range(60)
    )
    assert writer.segments() == []


def test_a_process_that_died_while_creating_a_segment_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    spool = make_spool(tmp_path)
    spool.directory.mkdir(parents=True)
    stale = spool.directory / f"00000000000000000001-1-000001{SUFFIX}{CREATING_SUFFIX}"
    fresh = spool.directory / f"00000000000000000002-1-000001{SUFFIX}{CREATING_SUFFIX}"
    stale.touch()
    fresh.touch()
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert spool.segments() == []  # never replayed, never counted
    asyncio.run(collect(spool))
    assert not stale.exists()
    assert fresh.exists()  # may be a live process's segment being born


def _write_and_replay(directory: str, writer: int, entries: int, out: str) -> None:
    """A child process: appends, and replays the shared directory as it goes."""

    async def main() -> list[str]:
        spool = Spool(Path(directory), max_bytes=100_000_000, segment_bytes=400)
        replayed: list[str] = []

        async def sink(batch: list[SpooledEntry]) -> None:
            replayed.extend(entry.fields[b"events"].decode() for entry in batch)

        for i in range(entries):
            await spool.append({b"v": b"1", b"n": b"1", b"events": f"{writer}:{i}".encode()}, 1)
            if i % 7 == 0:
                await spool.replay(sink)  # seals ours; takes whatever is free
        await spool.replay(sink)
        return replayed

    Path(out).write_text("\n".join(asyncio.run(main())))


def test_two_processes_writing_and_replaying_one_directory_lose_and_repeat_nothing(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "spool"
    context = multiprocessing.get_context("spawn")
    outputs = [tmp_path / f"replayed-{n}.txt" for n in range(2)]
    processes = [
        context.Process(target=_write_and_replay, args=(str(directory), n, 300, str(out)))
        for n, out in enumerate(outputs)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    replayed = [line for out in outputs for line in out.read_text().splitlines() if line]
    replayed += [
        e.fields[b"events"].decode()
        for e in asyncio.run(collect(Spool(directory, max_bytes=10**8, segment_bytes=400)))
    ]
    expected = [f"{writer}:{i}" for writer in range(2) for i in range(300)]
    assert sorted(replayed) == sorted(expected)  # every entry, each exactly once


# --- the spool path's own rate limits ------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_local_bucket_gives_the_burst_then_the_rate() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock=clock)
    limit = RateLimit(100, 1000)
    assert buckets.take("k", 1000, limit) is None
    wait = buckets.take("k", 50, limit)
    assert wait == pytest.approx(0.5)
    clock.now += 0.5
    assert buckets.take("k", 50, limit) is None
    assert buckets.take("other", 1000, limit) is None  # each key its own bucket


def test_a_local_debit_may_go_below_zero_but_not_below_minus_the_burst() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock=clock)
    limit = RateLimit(10, 100)
    assert buckets.debit("k", 150, limit) == -50
    assert buckets.debit("k", 1000, limit) == -100
    assert buckets.take("k", 1, limit) == pytest.approx(10.1)


def test_unlimited_keys_have_no_local_bucket_and_bad_rates_are_refused() -> None:
    buckets = LocalBuckets()
    assert buckets.take("k", 10**6, RateLimit.unlimited()) is None
    assert len(buckets) == 0
    with pytest.raises(InvalidRateLimit):
        buckets.take("k", 1, RateLimit(float("inf"), float("inf")))


def test_the_local_buckets_are_bounded() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(max_keys=10, clock=clock)
    limit = RateLimit(1, 10)
    for i in range(100):
        buckets.take(f"k{i}", 1, limit)
    assert len(buckets) == 10
