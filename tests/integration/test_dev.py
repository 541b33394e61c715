"""`labs-analytics dev` (what `make run` runs), as a newcomer runs it: in a folder
of its own, nothing exported, the other commands from a second terminal."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from dotenv import dotenv_values

from labs_analytics.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, port_is_free
from labs_analytics.settings import Settings
from tests.helpers import cli

START_TIMEOUT_SECONDS = 90.0


@pytest.fixture(autouse=True)
def no_servers_left_behind(tmp_path: Path) -> Iterator[None]:
    """Whatever a test's `dev` started is stopped, even if the test failed midway."""
    yield
    EmbeddedPostgres(tmp_path / ".data" / "postgres").stop_leftover()
    EmbeddedRedis(tmp_path / ".data" / "redis").stop_leftover()


def newcomer_env() -> dict[str, str]:
    """The developer's environment without any of our settings in it."""
    ours = {name.upper() for name in Settings.model_fields}
    return {k: v for k, v in os.environ.items() if k not in ours}


def run_here(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli(*args), env=newcomer_env(), cwd=folder, capture_output=True, text=True, timeout=60
    )


@dataclass
class DevProcess:
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    port: int

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def banner_line(self, prefix: str) -> str:
        lines = self.stdout().splitlines()
        return next(line for line in lines if line.strip().startswith(prefix)).split()[-1]


@contextlib.contextmanager
def running_dev(folder: Path, *, stop: signal.Signals = signal.SIGINT) -> Iterator[DevProcess]:
    """`labs-analytics dev` in ``folder``, once its banner is out; stopped with ``stop``.

    Its output goes to files, not pipes: a server it leaves running when killed
    would hold a pipe open.
    """
    port = free_port()
    stdout_path, stderr_path = folder / f"dev-{port}.stdout", folder / f"dev-{port}.stderr"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            cli("dev", "--port", str(port)),
            env=newcomer_env(),
            cwd=folder,
            stdout=stdout,
            stderr=stderr,
        )
    dev = DevProcess(process, stdout_path, stderr_path, port)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while "Labs Analytics dev server" not in dev.stdout():
            if process.poll() is not None:
                raise AssertionError(f"dev exited {process.returncode}:\n{dev.stderr()}")
            assert time.monotonic() < deadline, f"no banner:\n{dev.stderr()}"
            time.sleep(0.02)
        # The banner promises a server that answers: it must be listening now.
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        while "Send an event" not in dev.stdout():  # the whole banner, key included
            assert time.monotonic() < deadline, dev.stdout()
            time.sleep(0.02)
        yield dev
    finally:
        if process.poll() is None:
            process.send_signal(stop)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def stopped(dev: DevProcess) -> None:
    assert dev.process.wait(timeout=60) == 0, dev.stderr()


def ports_in(dev_env: Path) -> dict[str, int | None]:
    return {name: urlsplit(url or "").port for name, url in dotenv_values(dev_env).items()}


def test_dev_remembers_its_ports_and_the_other_commands_find_its_servers(
    tmp_path: Path,
) -> None:
    dev_env = tmp_path / ".data" / "dev.env"
    with running_dev(tmp_path) as first:
        ports = ports_in(dev_env)
        assert set(ports) == {"DATABASE_URL", "REDIS_URL"}
        assert first.banner_line("PostgreSQL").endswith(f":{ports['DATABASE_URL']}/labs_analytics")
        listed = run_here(tmp_path, "keys", "list")
        assert listed.returncode == 0, listed.stderr
        assert "labs-analytics dev" in listed.stdout
        counted = run_here(tmp_path, "psql", "-tA", "-c", "SELECT count(*) FROM api_keys")
        assert (counted.returncode, counted.stdout.strip()) == (0, "1"), counted.stderr
    stopped(first)
    # Everything it started is stopped: the ports are free again.
    assert all(port_is_free(port) for port in ports.values() if port)
    down = run_here(tmp_path, "keys", "list")
    assert down.returncode == 1
    assert down.stderr.count("\n") == 1, down.stderr
    assert "is `make run`" in down.stderr

    with running_dev(tmp_path, stop=signal.SIGTERM) as second:
        assert ports_in(dev_env) == ports
        # The same database: the first start's key is still there.
        counted = run_here(tmp_path, "psql", "-tA", "-c", "SELECT count(*) FROM api_keys")
        assert counted.stdout.strip() == "2", counted.stderr
    stopped(second)


def test_dev_takes_a_new_port_when_its_old_one_is_taken_and_says_so(tmp_path: Path) -> None:
    dev_env = tmp_path / ".data" / "dev.env"
    with running_dev(tmp_path) as first:
        old = ports_in(dev_env)
    stopped(first)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", old["DATABASE_URL"] or 0))
        squatter.listen()
        with running_dev(tmp_path) as second:
            new = ports_in(dev_env)
            assert new["DATABASE_URL"] != old["DATABASE_URL"]
            assert new["REDIS_URL"] == old["REDIS_URL"]
            assert f"port {old['DATABASE_URL']}" in second.stderr()
            assert "taken by another program" in second.stderr()
        stopped(second)


def test_dev_stops_the_servers_a_killed_dev_left_running(tmp_path: Path) -> None:
    dev_env = tmp_path / ".data" / "dev.env"
    with running_dev(tmp_path, stop=signal.SIGKILL):
        ports = ports_in(dev_env)
    # SIGKILL: no clean-up; PostgreSQL and Redis run on, in sessions of their own.
    assert not any(port_is_free(port) for port in ports.values() if port)
    with running_dev(tmp_path) as second:
        assert ports_in(dev_env) == ports
        assert "stopped the PostgreSQL" in second.stderr()
        assert "stopped the Redis" in second.stderr()
        listed = run_here(tmp_path, "keys", "list")
        assert listed.returncode == 0, listed.stderr
    stopped(second)


def test_a_second_dev_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    with running_dev(tmp_path) as first:
        again = run_here(tmp_path, "dev", "--port", str(free_port()))
        assert again.returncode == 1
        assert f"another `labs-analytics dev` (pid {first.process.pid})" in again.stderr
        assert "Traceback" not in again.stderr
    stopped(first)


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_dev_refuses_a_busy_port_before_starting_anything(tmp_path: Path, host: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = run_here(tmp_path, "dev", "--host", host, "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: port {port} is in use on {host}: stop what uses it")
    assert "`make run PORT=" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / ".data").exists()  # no server was started, no folder made
