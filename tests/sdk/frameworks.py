"""What the framework integration tests share: apps under their servers, and what was stored.

The apps live in ``tests/sdk/apps``; a child process imports them from the
repository (and the SDK from ``src/``), as a product deployed beside it would.
Each app answers ``/api/clubs/<id>`` and a health check it leaves untracked
(both with the ``served_by`` headers), and takes the user from ``X-User``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from labs_analytics.embedded import free_port
from labs_analytics.settings import Settings
from tests.helpers import (
    REPO,
    SDK,
    ServeProcess,
    count_events,
    create_key,
    duplicated_ids,
    event_rows,
    in_a_thread,
    new_product,
    wait_for_drained_stream,
    wait_for_events,
)


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
def server(
    name: str,
    args: list[str],
    env: dict[str, str],
    log_dir: Path,
    *,
    port: int,
    health_path: str,
    workers: int,
) -> Iterator[tuple[Child, str]]:
    """A server started with ``args`` on ``port``, ready: each of its ``workers`` answered.

    ``health_path`` is polled, a connection each time, until that many
    workers (its ``X-Worker`` header) have answered: the first one up would
    otherwise take every request while the others still import the app. The
    app must leave ``health_path`` untracked, or the polling would add events.
    """
    with child(args, env, log_dir / f"{name}-{port}.log") as running:
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        answered: set[str | None] = set()
        while len(answered) < workers:
            if running.process.poll() is not None:
                raise AssertionError(f"{name} exited:\n{running.logs()}")
            with contextlib.suppress(httpx.TransportError):
                response = httpx.get(f"{base_url}{health_path}", timeout=1)
                if response.status_code == 200:
                    answered.add(response.headers.get("X-Worker"))
                    continue
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{name}: {len(answered)} of {workers} workers up:\n{running.logs()}"
                )
            time.sleep(0.05)
        yield running, base_url


@contextlib.contextmanager
def gunicorn(
    app: str,
    env: dict[str, str],
    log_dir: Path,
    *,
    health_path: str,
    worker_class: str = "sync",
    args: Sequence[str] = (),
) -> Iterator[tuple[Child, str]]:
    """``gunicorn app`` with 2 workers (sync unless told) on a free port, ready.

    ``args`` go to gunicorn too: ``--preload``, ``--max-requests=…``, ``--threads=…``.
    """
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers=2",
        f"--worker-class={worker_class}",
        f"--bind=127.0.0.1:{port}",
        "--graceful-timeout=20",
        "--no-control-socket",  # a socket in ~/.gunicorn, shared by every gunicorn
        *args,
        app,
    ]
    with server(
        "gunicorn", command, env, log_dir, port=port, health_path=health_path, workers=2
    ) as running:
        yield running


@contextlib.contextmanager
def uvicorn(
    app: str,
    env: dict[str, str],
    log_dir: Path,
    *,
    health_path: str,
    workers: int = 1,
    args: Sequence[str] = (),
) -> Iterator[tuple[Child, str]]:
    """``uvicorn app`` on a free port (``--workers`` if more than 1), ready; ``args`` too."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--host=127.0.0.1",
        f"--port={port}",
        "--no-access-log",
        *([f"--workers={workers}"] if workers > 1 else []),
        *args,
        app,
    ]
    with server(
        "uvicorn", command, env, log_dir, port=port, health_path=health_path, workers=workers
    ) as running:
        yield running


@dataclass(frozen=True)
class WebApp:
    """A test app: what its server is given, and the route the SDK records for a club."""

    target: str
    club_route: str
    slash: str = ""  # what its paths end with: Django's end in "/"

    def path(self, path: str) -> str:
        return f"{path}{self.slash}"

    @property
    def health_path(self) -> str:
        return self.path("/healthz")


DJANGO = WebApp("tests.sdk.apps.django_site.wsgi", "/api/clubs/<int:club_id>/", slash="/")
FLASK = WebApp("tests.sdk.apps.flask_app:app", "/api/clubs/<int:club_id>")
ASGI = WebApp("tests.sdk.apps.asgi_app:app", "/api/clubs/{club_id}")


@dataclass(frozen=True)
class Served:
    """The ``served_by`` headers of one answer."""

    worker: int
    thread: int
    loaded_in: int


def get_clubs(
    base_url: str,
    app: WebApp,
    club_ids: Iterable[int],
    *,
    concurrency: int = 1,
    keep_alive: bool = True,
) -> tuple[list[tuple[Any, ...]], list[Served]]:
    """``GET /api/clubs/<id>`` as user ``u_<id>``, ``concurrency`` at a time.

    Returns the ``http.request`` events expected (as ``request_events`` gives
    them) and who served each request. ``keep_alive=False``: one connection per
    request, so that a server's workers share them out.
    """
    headers = {} if keep_alive else {"Connection": "close"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=base_url, headers=headers, limits=limits, timeout=30) as http:

        def get(club_id: int) -> Served:
            path, user = app.path(f"/api/clubs/{club_id}"), f"u_{club_id}"
            response = http.get(path, headers={"X-User": user})
            assert response.status_code == 200, response.text
            assert response.json() == {"club": club_id}
            return Served(
                int(response.headers["X-Worker"]),
                int(response.headers["X-Thread"]),
                int(response.headers["X-Loaded-In"]),
            )

        ids = list(club_ids)
        with ThreadPoolExecutor(concurrency) as pool:
            served = list(pool.map(get, ids))
    expected = [("GET", app.club_route, 200, None, f"u_{club_id}") for club_id in ids]
    return expected, served


async def stored_once(
    db: asyncpg.Connection,
    settings: Settings,
    product: str,
    expected: list[tuple[Any, ...]],
    *,
    others: int = 0,
) -> list[dict[str, Any]]:
    """Wait for the ``http.request`` events ``expected`` and ``others`` of other names.

    Checks that each was stored exactly once; returns the stored rows. Call it
    once the app's server has stopped: nothing more is sent, so once the stream
    of ``settings`` (the server it sent to) is drained, a duplicate would be in.
    """
    total = len(expected) + others
    await wait_for_events(db, total, product=product)
    await wait_for_drained_stream(settings)
    stored = await event_rows(db, product)
    assert len({row["event_id"] for row in stored}) == len(stored) == total
    requests = [row for row in stored if row["name"] == "http.request"]
    assert request_events(requests) == sorted(expected, key=repr)
    assert await duplicated_ids(db) == []
    return stored


async def every_request_stored_once_when_gunicorn_stops(
    app: WebApp,
    shared_server: ServeProcess,
    settings: Settings,
    db: asyncpg.Connection,
    log_dir: Path,
) -> None:
    """The Django and Flask test: routes, errors, a 404, the user and its scope.

    Under gunicorn (2 sync workers), stopped by SIGTERM: every request is
    stored once, delivered by the drain at the workers' exit alone.
    """
    product = new_product()
    key = await create_key(settings, product=product)
    env = app_env(key, shared_server.base_url)
    async with in_a_thread(gunicorn(app.target, env, log_dir, health_path=app.health_path)) as (
        running,
        base_url,
    ):
        expected, _ = await asyncio.to_thread(get_clubs, base_url, app, range(1, 7))
        async with httpx.AsyncClient(base_url=base_url) as http:
            assert (await http.post(app.path("/api/clubs/7"))).status_code == 200
            expected.append(("POST", app.club_route, 200, None, None))
            # The view tracks an event without user=: the request's user comes from the scope.
            response = await http.post(app.path("/api/clubs/8/join"), headers={"X-User": "u_8"})
            assert response.json() == {"joined": 8}
            join = f"{app.club_route.removesuffix('/')}/join{app.slash}"
            expected.append(("POST", join, 200, None, "u_8"))
            # A user function that raises: the request is served, tracked without a user.
            for _ in range(4):
                response = await http.get(app.path("/api/clubs/9"), headers={"X-User-Broken": "1"})
                assert response.json() == {"club": 9}
                expected.append(("GET", app.club_route, 200, None, None))
            for _ in range(2):
                assert (await http.get(app.path("/boom"))).status_code == 500
                expected.append(("GET", app.path("/boom"), 500, "BoomError", None))
            assert (await http.get("/no/such/page")).status_code == 404
            # No pattern or rule matched: no route, never the raw path.
            expected.append(("GET", None, 404, None, None))
        # An hour's flush interval: nothing was sent yet, the drain at exit must do it.
        assert await count_events(db, product) == 0
        assert await asyncio.to_thread(running.terminate) == 0, running.logs()

    stored = await stored_once(db, settings, product, expected, others=1)
    joined = [(row["name"], row["user_id"], row["properties"]) for row in stored]
    assert ("club.joined", "u_8", {"club": 8}) in joined
    # Logged once per worker at most (2 workers), not once per request (4).
    assert 1 <= running.logs().count("analytics.user_function_failed") <= 2, running.logs()
    assert "UserLookupError: the user store is down" in running.logs()


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
