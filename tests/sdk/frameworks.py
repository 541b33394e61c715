"""What the framework integration tests share: apps under gunicorn, and what was stored.

The apps live in ``tests/sdk/apps``; a child process imports them from the
repository (and the SDK from ``src/``), as a product deployed beside it would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from labs_analytics.embedded import free_port
from tests.sdk.support import REPO, SDK


def app_env(key: str, base_url: str, **extra: str) -> dict[str, str]:
    """The environment of a child running a test app: the SDK's key and URL, our imports."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SDK / "src"), str(REPO)]),
        "LABS_ANALYTICS_API_KEY": key,
        "LABS_ANALYTICS_URL": base_url,
        **extra,
    }


@dataclass
class Child:
    """A server or worker in a child process, its output in a log file."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (the graceful stop of gunicorn and of a Celery worker); its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"no exit {timeout} s after SIGTERM:\n{self.logs()}") from None


@contextlib.contextmanager
def child(args: list[str], env: dict[str, str], log_path: Path) -> Iterator[Child]:
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    running = Child(process, log_path)
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@contextlib.contextmanager
def gunicorn(
    app: str, env: dict[str, str], log_dir: Path, *, health_path: str
) -> Iterator[tuple[Child, str]]:
    """``gunicorn app`` with 2 sync workers on a free port, ready (``health_path`` answered).

    The app must leave ``health_path`` untracked, or the polling would add events.
    """
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers=2",
        "--worker-class=sync",
        f"--bind=127.0.0.1:{port}",
        "--graceful-timeout=20",
        "--no-control-socket",  # a socket in ~/.gunicorn, shared by every gunicorn
        app,
    ]
    with child(args, env, log_dir / f"gunicorn-{port}.log") as running:
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if running.process.poll() is not None:
                raise AssertionError(f"gunicorn exited:\n{running.logs()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base_url}{health_path}", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not start:\n{running.logs()}")
            time.sleep(0.05)
        yield running, base_url


def request_events(stored: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Each stored ``http.request`` as (method, route, status, error_type, user), sorted."""
    assert {row["name"] for row in stored} == {"http.request"}
    for row in stored:
        assert isinstance(row["properties"]["duration_ms"], float | int)
        assert row["properties"]["duration_ms"] >= 0
    return sorted(
        (
            (
                row["properties"]["method"],
                row["properties"]["route"],
                row["properties"]["status_code"],
                row["properties"].get("error_type"),
                row["user_id"],
            )
            for row in stored
        ),
        key=repr,  # None beside str: compare their reprs
    )
