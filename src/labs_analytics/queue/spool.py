"""The local spool: where accepted events wait, on disk, while Redis is unreachable.

A 202 during a Redis outage means the events are fsync'd here. Layout: a
directory of append-only segment files, ``<ns>-<pid>-<seq>.spool``; each
process writes only its own segment, holding an exclusive ``flock`` on it for
as long as it appends. Several processes may share the directory:

- **A segment is its writer's from birth.** It is created under a name replay
  never reads (``….spool.creating``), locked, and only then renamed to its
  ``.spool`` name (the lock stays with the open file). No replayer can claim
  it in between and delete it while its writer appends, unseen, to a file
  that no longer has a name.
- **A segment is replayed by one process at a time.** A replayer takes the
  segment's lock without waiting; a segment being written (locked by its
  writer) or being replayed (locked by another replayer) is skipped, and one
  already deleted by the replayer before is recognised and skipped too.

Each record is a frame::

    b"LS" | length (u32) | crc32 (u32) | events (u32) | stream entry fields (JSON)

**Group commit.** Appends queue up while one write+fsync runs in a thread;
the next fsync covers all of them, so concurrent requests share the cost.

**Replay.** Once Redis answers, sealed segments (ours, and those of processes
that died) are read in order, appended to the stream, and deleted. A crash
in the middle replays the segment again; the flusher's dedup on
(timestamp, product, event_id) makes that harmless. A torn last frame (a crash during
a write that was never acknowledged) is ignored; a corrupt frame elsewhere
keeps the file aside as ``.corrupt`` and is logged loudly.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from labs_analytics.logs import get_logger

log = get_logger(__name__)

MAGIC = b"LS"
HEADER = struct.Struct(">2sIII")  # magic, body length, crc32 of body, events
SUFFIX = ".spool"
CREATING_SUFFIX = ".creating"  # a segment being born: never replayed
# A ``.creating`` file older than this belongs to a process that died between
# creating and naming it (it is empty: nothing is written before the rename).
STALE_CREATING_SECONDS = 60.0


class SpoolFull(Exception):
    """The spool holds its maximum; the request must be refused."""


class SpoolWriteFailed(Exception):
    """The disk refused the write or the fsync: nothing was made durable."""


@dataclass(frozen=True, slots=True)
class SpooledEntry:
    fields: dict[bytes, bytes]
    events: int


def encode_frame(fields: dict[bytes, bytes], events: int) -> bytes:
    body = orjson.dumps({k.decode(): v.decode() for k, v in fields.items()})
    return HEADER.pack(MAGIC, len(body), zlib.crc32(body), events) + body


def read_frames(data: bytes) -> tuple[list[SpooledEntry], str | None]:
    """Decode frames; return them and, if the data ends badly, why."""
    entries: list[SpooledEntry] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < HEADER.size:
            return entries, "torn header at the end"
        magic, length, crc, events = HEADER.unpack_from(data, offset)
        body = data[offset + HEADER.size : offset + HEADER.size + length]
        if magic != MAGIC:
            return entries, f"bad magic at byte {offset}"
        if len(body) < length:
            return entries, "torn frame at the end"
        if zlib.crc32(body) != crc:
            end = offset + HEADER.size + length
            return entries, f"checksum mismatch at byte {offset}" + (
                " (last frame)" if end == len(data) else ""
            )
        fields = {k.encode(): v.encode() for k, v in orjson.loads(body).items()}
        entries.append(SpooledEntry(fields=fields, events=events))
        offset += HEADER.size + length
    return entries, None


class Spool:
    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        # Serializes file operations between the writer thread and sealing.
        self._file_lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._seq = 0
        self._reserved = 0

    # --- writing ---------------------------------------------------------------

    async def append(self, fields: dict[bytes, bytes], events: int) -> None:
        """Return once the entry is fsync'd; raise SpoolFull or SpoolWriteFailed."""
        frame = encode_frame(fields, events)
        if self.total_bytes() + self._reserved + len(frame) > self.max_bytes:
            raise SpoolFull(f"spool holds {self.total_bytes()} of {self.max_bytes} bytes")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((frame, future))
        self._reserved += len(frame)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())
        await asyncio.shield(future)  # a cancelled request must not cancel others' fsync

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            frames = [frame for frame, _ in batch]
            try:
                await asyncio.to_thread(self._write_and_sync, frames)
            except OSError as exc:
                log.error("spool.write_failed", error=repr(exc), frames=len(frames))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(SpoolWriteFailed(str(exc)))
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
            finally:
                self._reserved -= sum(len(frame) for frame in frames)

    def _write_and_sync(self, frames: list[bytes]) -> None:
        with self._file_lock:
            if self._fd is None or self._size >= self.segment_bytes:
                self._seal_locked()
                self._open_segment_locked()
            assert self._fd is not None
            data = b"".join(frames)
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
            self._size += len(data)

    def _open_segment_locked(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}{SUFFIX}"
        path = self.directory / name
        # Owned from birth: locked under a name replay does not read, then named.
        # Created with its final name, another process's replay could claim the
        # empty file before our lock and unlink it, and every event we then
        # fsync'd into it would be lost.
        creating = path.with_name(name + CREATING_SUFFIX)
        fd = os.open(creating, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # "being written": replayers skip it
            os.rename(creating, path)  # the lock is the open file's: it stays
            _fsync_dir(self.directory)  # the new name itself must survive a crash
        except BaseException:
            os.close(fd)
            creating.unlink(missing_ok=True)
            raise
        self._fd, self._path, self._size = fd, path, 0

    def _seal_locked(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock: the segment may be replayed
        self._fd, self._path, self._size = None, None, 0

    async def seal(self) -> None:
        """Close the active segment so that it can be replayed."""
        await asyncio.to_thread(self._seal_with_lock)

    def _seal_with_lock(self) -> None:
        with self._file_lock:
            self._seal_locked()

    # --- state -----------------------------------------------------------------

    def segments(self) -> list[Path]:
        try:
            return sorted(self.directory.glob(f"*{SUFFIX}"))
        except OSError:
            return []

    def total_bytes(self) -> int:
        total = 0
        for path in self.segments():
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
        return total

    def writable(self) -> bool:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False
        return os.access(self.directory, os.W_OK)

    # --- replay ----------------------------------------------------------------

    async def replay(self, sink: Callable[[list[SpooledEntry]], Awaitable[None]]) -> int:
        """Send every sealed segment to ``sink`` in order, deleting each after; return events.

        ``sink`` raises if the stream did not take the entries; the segment then
        stays for the next attempt.
        """
        if self._fd is not None:
            await self.seal()
        await asyncio.to_thread(self._remove_stale_creating)
        replayed = 0
        for path in self.segments():
            claimed = await asyncio.to_thread(_claim, path)
            if claimed is None:
                continue  # being written, or another process is replaying it
            fd, data = claimed
            try:
                entries, problem = read_frames(data)
                for chunk in _chunks(entries, 100):
                    await sink(chunk)
                    replayed += sum(entry.events for entry in chunk)
                if problem and "end" not in problem and "last frame" not in problem:
                    log.error(
                        "spool.corrupt_segment",
                        path=str(path),
                        problem=problem,
                        replayed_entries=len(entries),
                    )
                    await asyncio.to_thread(path.rename, path.with_suffix(".corrupt"))
                else:
                    if problem:
                        log.warning("spool.torn_tail_ignored", path=str(path), problem=problem)
                    await asyncio.to_thread(_unlink_durably, path)
                log.info("spool.segment_replayed", path=path.name, entries=len(entries))
            finally:
                os.close(fd)
        return replayed

    def _remove_stale_creating(self) -> None:
        try:
            births = list(self.directory.glob(f"*{SUFFIX}{CREATING_SUFFIX}"))
        except OSError:
            return
        for path in births:
            try:
                if time.time() - path.stat().st_mtime > STALE_CREATING_SECONDS:
                    path.unlink()
            except OSError:
                continue


def _claim(path: Path) -> tuple[int, bytes] | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    # Another replayer may have finished and unlinked it between open and lock.
    try:
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise FileNotFoundError(path)
    except FileNotFoundError:
        os.close(fd)
        return None
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return fd, b"".join(chunks)


def _unlink_durably(path: Path) -> None:
    path.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chunks(items: list[SpooledEntry], size: int) -> Iterator[list[SpooledEntry]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
