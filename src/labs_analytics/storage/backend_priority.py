"""Background work at a lower CPU priority than the flushes, ingest and reads.

The rollup refresh recomputes whole hours and days from ``events``: about
60 µs of PostgreSQL CPU per event rolled up (BENCHMARKS.md), as much as the
rest of the pipeline spends on it. At the same priority, a refresh running
while the machine is busy takes its share of the cores from the flushes and
the API (end to end -13 to -20% in the A/B of 2026-12-02). Its work can wait:
reads are exact whether or not it has caught up. So its backend runs niced,
as a batch job would: it gets every cycle the pipeline leaves idle and few of
those it needs.

A backend is a process on the database's machine. Its niceness can be raised
from here only when that is this machine and we may (same user, or root), and
only once we are sure the pid is ours: ``pg_backend_pid()`` names a pid on the
server's machine, which may be another host or a container whose pids mean
nothing here. PostgreSQL titles a backend with its client's address and port
("postgres: user db 127.0.0.1(53120) idle"), so the process here must carry
that title, with the port this connection came from, or it is left alone.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg

from labs_analytics.logs import get_logger

log = get_logger(__name__)


async def lower_backend_priority(conn: asyncpg.Connection, niceness: int) -> bool:
    """Renice ``conn``'s backend to ``niceness`` (1 to 19) when it is a process
    of this machine that we may renice; whether it was done. Never raises for a
    backend we cannot reach: the work then runs at the usual priority."""
    pid, client_port = await conn.fetchrow("SELECT pg_backend_pid(), inet_client_port()")
    if client_port is None:  # a Unix socket: no port in the title to match
        return _refused(pid, "connected over a Unix socket")
    try:
        title = await asyncio.to_thread(Path(f"/proc/{pid}/cmdline").read_bytes)
    except OSError:
        return _refused(pid, "no such process on this machine")
    if not title.startswith(b"postgres:") or f"({client_port})".encode() not in title:
        return _refused(pid, "the process here is not this connection's backend")
    try:
        os.setpriority(os.PRIO_PROCESS, pid, niceness)
    except OSError as exc:  # another user's process, and we are not root
        return _refused(pid, f"{type(exc).__name__}: {exc}")
    return True


def _refused(pid: int, reason: str) -> bool:
    log.info("backend_priority.unchanged", backend_pid=pid, reason=reason)
    return False
