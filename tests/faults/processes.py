"""Child processes the fault tests start, freeze and kill for real, and always reap.

``Children`` starts standalone `labs-analytics flusher` processes and `serve`
processes (through ``tests.helpers.serve_process``), each logging JSON lines to
its own file, and on teardown thaws, kills and waits for whatever is left, so
no test leaves a stopped or orphaned process behind.

``pg_backends_of`` finds the PostgreSQL backends a given child is talking to
(its TCP client ports, read from /proc), so a test can watch one flusher's
transaction in ``pg_stat_activity`` while another flusher runs beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from labs_analytics.settings import Settings
from tests.helpers import ServeProcess, cli, cli_env, serve_process

# A crash prints one of these; a clean run never does.
CRASH_MARKERS = ("Traceback", '"event":"task.crashed"', '"exception":')


def parse_log(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a child (anything else it printed is skipped)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(orjson.JSONDecodeError):
                lines.append(orjson.loads(line))
    return lines


def first_stream_id(line: dict[str, Any]) -> str | None:
    """The first stream entry of the batch a flush.* log line is about."""
    if line.get("first_stream_id"):
        return str(line["first_stream_id"])
    ids = line.get("stream_ids")
    return str(ids[0]) if ids else None


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self, event: str | None = None) -> list[dict[str, Any]]:
        lines = parse_log(self.logs())
        return lines if event is None else [line for line in lines if line.get("event") == event]

    def crash_lines(self) -> list[str]:
        return [line for line in self.logs().splitlines() if any(m in line for m in CRASH_MARKERS)]

    def consumer_name(self) -> str | None:
        for line in self.log_events("flusher.started"):
            return str(line["consumer"])
        return None

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> int:
        """SIGKILL (after SIGCONT, in case it is frozen) and reap."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        return self.process.wait(timeout=10)

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM: a flusher finishes the batch in hand (its ack included) and stops."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    async def wait_for_log(
        self,
        event: str,
        *,
        timeout: float = 30.0,  # noqa: ASYNC109 - the poll's own deadline, this helper's API
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            alive = self.alive()  # before the read: a child that had exited wrote it all
            found = self.log_events(event)
            if found:
                return found[0]
            if not alive or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name} never logged {event}:\n{self.logs()[-4000:]}")


@dataclass
class Children:
    log_dir: Path
    started: list[Child] = field(default_factory=list)
    _serves: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def flusher(self, settings: Settings, *, name: str = "flusher", **env: str) -> Child:
        """A standalone `labs-analytics flusher`, its stdout and stderr in ``<name>.log``."""
        log_path = self.log_dir / f"{name}-{len(self.started)}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                cli("flusher"),
                env=cli_env(settings, **env),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        child = Child(name, process, log_path)
        self.started.append(child)
        return child

    async def serve(self, settings: Settings, *args: str, **env: str) -> ServeProcess:
        """A real `labs-analytics serve` (ready: /healthz answered), with its own spool.

        Started in a thread: ``serve_process`` polls the port with blocking
        calls, and the test's event loop may be driving load meanwhile.
        """
        spool = self.log_dir / f"spool-{len(self.started)}"
        env = {"SPOOL_DIR": str(spool), **env}
        server = await asyncio.to_thread(
            self._serves.enter_context, serve_process(settings, self.log_dir, *args, **env)
        )
        self.started.append(Child("serve", server.process, server.log_path))
        return server

    def close(self) -> None:
        # Captured output, shown only when the test failed: what each child was
        # doing last is the first thing to read when a fault test goes wrong.
        for child in self.started:
            with contextlib.suppress(OSError):
                print(f"--- {child.name} (pid {child.pid}) log, last lines ---")
                print("\n".join(child.logs().splitlines()[-40:]))
        for child in self.started:
            child.thaw()
        # serve processes first get their SIGTERM (serve_process's own clean-up)...
        with contextlib.suppress(Exception):
            self._serves.close()
        # ...then whatever is still alive, flushers included, is killed and reaped.
        for child in self.started:
            with contextlib.suppress(Exception):
                child.kill()


def tcp_client_ports(pid: int, remote_port: int) -> set[int]:
    """Local ports of the TCP connections process ``pid`` holds to ``remote_port``."""
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return set()
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(fd_dir / fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


async def pg_backends_of(db: asyncpg.Connection, pid: int, pg_port: int) -> list[asyncpg.Record]:
    """Rows of ``pg_stat_activity`` for the connections process ``pid`` holds."""
    ports = tcp_client_ports(pid, pg_port)
    if not ports:
        return []
    return await db.fetch(
        "SELECT pid, state, query, xact_start FROM pg_stat_activity "
        "WHERE client_port = ANY($1::int[])",
        sorted(ports),
    )


# A flush transaction, as pg_stat_activity shows it: asyncpg's COPY into the
# staging table, or the INSERT from it, inside an open transaction.
FLUSH_TRANSACTION_SQL = """
SELECT pid, state, query, xact_start FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL
  AND (query LIKE 'COPY%events_staging%' OR query LIKE '%FROM events_staging%')
"""


async def wait_for_flush_transaction(
    db: asyncpg.Connection,
    *,
    timeout: float,  # noqa: ASYNC109 - the poll's own deadline, this helper's API
    copy_only: bool = False,
) -> asyncpg.Record:
    """Poll ``pg_stat_activity`` until some backend is inside a flush transaction
    (``copy_only``: in the middle of the COPY itself)."""
    sql = FLUSH_TRANSACTION_SQL
    if copy_only:
        sql += " AND state = 'active' AND query LIKE 'COPY%'"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await db.fetch(sql)
        if rows:
            return rows[0]
        await asyncio.sleep(0.002)
    raise AssertionError(f"no flush transaction seen in pg_stat_activity within {timeout} s")
