"""The spool on a real filesystem: durable appends, shared fsyncs, replay in order, torn tails."""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

from labs_analytics.queue.spool import (
    HEADER,
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
